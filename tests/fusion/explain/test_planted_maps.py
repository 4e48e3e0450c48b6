"""The planted-evidence map (outlines on exactly the planted patches, the sample's AUROC in the title) and
the demo's planted-evidence summary, on a hand-made report whose ranking is known."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from clinfuse.fusion.explain import AttentionReport
from clinfuse.fusion.explain.faithfulness import planted_summary
from clinfuse.fusion.explain.planted_maps import OUTLINE_GID, plot_planted_evidence, write_planted_figures

PATCH = 256.0


def _sample(sid: str, relevant: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    n = len(relevant)
    pos = np.arange(n)
    frames = []
    for cls in ("0", "1"):
        frames.append(pd.DataFrame({"sample_id": sid, "patient_id": sid, "modality": "images",
                                    "kind": "explanatory", "target_class": cls,
                                    "token": [f"p{i}" for i in pos],
                                    "position": pos.astype(float), "x": (pos % 5) * PATCH,
                                    "y": (pos // 5) * PATCH, "slide_id": None, "value": values / values.sum(),
                                    "raw_value": values}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    found = np.zeros(20, dtype=bool)
    found[[2, 3, 11, 17]] = True
    missed = np.zeros(15, dtype=bool)
    missed[[0, 5, 9]] = True
    # A: evidence gets 10x the attention (AUROC 1); B: attention ranks the evidence last (AUROC 0)
    frame = pd.concat([_sample("A", found, np.where(found, 10.0, 1.0) + 0.01 * rng.random(20)),
                       _sample("B", missed, np.where(missed, 0.2, 1.0) + 0.01 * rng.random(15))])
    truth = SimpleNamespace(relevant_patches={"A": found, "B": missed})
    return AttentionReport(frame.reset_index(drop=True)), truth


def _outlines(ax):
    return [p for p in ax.patches if p.get_gid() == OUTLINE_GID]


def test_the_planted_patches_and_only_they_are_outlined(planted):
    report, truth = planted
    fig = plot_planted_evidence(report, truth, "A")
    maps = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(maps) == 2 and fig.n_outlined == [4, 4]  # both classes, the 4 planted patches each
    corners = sorted((r.get_x(), r.get_y()) for r in _outlines(maps[0]))
    expected = sorted(((i % 5) * PATCH, (i // 5) * PATCH) for i in (2, 3, 11, 17))
    assert corners == expected
    assert all(r.get_width() == PATCH and r.get_height() == PATCH for r in _outlines(maps[0]))
    assert fig.planted_auroc == pytest.approx(1.0)
    assert "4 planted evidence patches of 20 (AUROC 1.00)" in fig._suptitle.get_text()
    one = plot_planted_evidence(report, truth, "B", target_class="1")
    assert one.planted_auroc == pytest.approx(0.0) and one.n_outlined == [3]


def test_bad_samples_are_named(planted):
    report, truth = planted
    with pytest.raises(ValueError, match="'Z' has no planted patches"):
        plot_planted_evidence(report, truth, "Z")
    truth_z = SimpleNamespace(relevant_patches={**truth.relevant_patches, "Z": np.ones(3, bool)})
    with pytest.raises(ValueError, match="no 'explanatory' attention for sample 'Z'"):
        plot_planted_evidence(report, truth_z, "Z")


def test_write_planted_figures_skips_samples_without_a_bag(planted, tmp_path):
    report, truth = planted
    written = write_planted_figures(report, truth, ["A", "no_bag"], tmp_path)
    assert written == {"evidence_A.png": "A"} and (tmp_path / "evidence_A.png").stat().st_size > 0


def test_planted_summary_reports_the_median_min_pooled_auroc_and_mass_ratio(planted):
    report, truth = planted
    s = planted_summary(report, truth, pd.Series({"A": "1", "B": "0"}))
    assert s["n_patients"] == 2 and s["per_patient_auroc"] == pytest.approx({"A": 1.0, "B": 0.0})
    assert s["auroc_median"] == pytest.approx(0.5) and s["auroc_min"] == pytest.approx(0.0)
    assert 0.0 < s["auroc_pooled"] < 1.0
    # A: mass 40/56 on a 4/20 share; B: 0.6/12.6 on 3/15
    assert s["mass_ratio"] == pytest.approx(np.mean([(40 / 56) / 0.2, (0.6 / 12.6) / 0.2]), rel=0.01)
