"""Figures: each plot renders a non-empty PNG atomically and rejects what it cannot draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.datasets.batch import Batch
from clinfuse.datasets.testing import random_modality_batch, random_schema
from clinfuse.fusion.explain import AttentionReport, records_to_frame
from clinfuse.fusion.explain.figures import plot_risk_groups, sample_figure
from clinfuse.fusion.records import AttentionRecord, masked_normalise
from PIL import Image


@pytest.fixture(scope="module")
def report():
    images = random_modality_batch("images", random_schema("images"), lengths=[30, 12], seed=1)
    clinical = random_modality_batch("clinical", random_schema("clinical"), present=[True, False], seed=1)
    batch = Batch(["a", "b"], ["a", "b"], {"clinical": clinical, "images": images})
    g = torch.Generator().manual_seed(0)

    def rec(kind, mb, classes):
        raw = torch.rand(2, len(classes or [0]), mb.n_tokens, generator=g)
        return AttentionRecord(kind, mb.modality, masked_normalise(raw, mb.mask[:, None]), raw,
                               mb.mask, mb.names,
                               classes)

    present = torch.tensor([[True, True], [False, True]])
    mraw = torch.rand(2, 1, 2, generator=g)
    records = [rec("patch", images, None), rec("class_wise", images, ["0", "1"]),
               rec("exploratory", images, None),
               rec("explanatory", images, ["0", "1"]), rec("feature", clinical, None),
               AttentionRecord("modality", "all", masked_normalise(mraw, present[:, None]), mraw, present,
                               [["clinical", "images"]] * 2)]
    return AttentionReport(records_to_frame(batch, records))


def _is_png(path):
    with Image.open(path) as img:
        return img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_each_plot_writes_a_png(report, tmp_path):
    report.plot_patches("a", path=tmp_path / "patches.png")
    report.plot_persam("a", target_class="1", path=tmp_path / "persam.png")
    report.plot_modality_weights(path=tmp_path / "modality.png")
    report.plot_top_tokens("a", path=tmp_path / "top.png")
    for name in ("patches", "persam", "modality", "top"):
        assert _is_png(tmp_path / f"{name}.png"), name


def test_sample_figures_are_looked_up_by_name(report, tmp_path):
    """The CLI draws the figure an aggregator names (``sample_figure``); an unknown name lists the known
    ones."""
    for name in ("patches", "persam"):
        figure = sample_figure(name)
        assert report.sample_ids_with(figure.kind) == ["a", "b"]
        figure.draw(report, "a", path=tmp_path / f"{name}.png")
        assert _is_png(tmp_path / f"{name}.png"), name
    with pytest.raises(ValueError, match=r"unknown sample figure 'zzz'.*\['patches', 'persam'\]"):
        sample_figure("zzz")


def test_top_tokens_plot_skips_the_kinds_a_sample_lacks(report, tmp_path):
    """Sample "b" has no clinical record: no feature panel, the others are drawn; none at all is an error."""
    report.plot_top_tokens("b", kinds=("feature", "patch"), path=tmp_path / "b.png")
    assert _is_png(tmp_path / "b.png")
    with pytest.raises(ValueError, match="'b' has no"):
        report.plot_top_tokens("b", kinds=("feature",))


def test_image_overlay(tmp_path):
    # A single 28 x 28 image whose 4 x 4 sub-patches (7 px) are the tokens, as the ViT encoder names them.
    xs, ys = np.meshgrid(np.arange(4) * 7.0, np.arange(4) * 7.0)
    values = np.arange(16, dtype=float) / np.arange(16).sum()
    frame = pd.DataFrame({"sample_id": "img", "patient_id": "img", "modality": "images",
                          "token": [f"img:{i}" for i in range(16)], "kind": "patch", "target_class": None,
                          "value": values, "raw_value": values, "position": np.arange(16.0),
                          "x": xs.ravel(), "y": ys.ravel()})
    report = AttentionReport(frame)
    fig = report.plot_image("img", np.random.default_rng(0).random((28, 28)), path=tmp_path / "img.png")
    overlay = fig.axes[1].images[-1].get_array()
    assert overlay.shape == (28, 28) and overlay[-1, -1] == values[-1] and overlay[0, 0] == 0.0
    assert _is_png(tmp_path / "img.png")


def test_bad_requests_are_clear(report):
    with pytest.raises(ValueError, match="target_class"):
        report.plot_persam("a", target_class="7")
    with pytest.raises(ValueError, match="no 'patch' attention for sample 'zzz'"):
        report.plot_patches("zzz")


def test_risk_groups_log_rank(tmp_path):
    rng = np.random.default_rng(0)
    risk = pd.Series(rng.normal(size=200))
    time = rng.exponential(np.exp(-1.5 * risk.to_numpy()))  # higher risk, shorter time
    event = rng.random(200) < 0.8
    fig = plot_risk_groups(risk, time, event, path=tmp_path / "km.png")
    assert fig.p_value < 1e-3 and _is_png(tmp_path / "km.png")
    flat = plot_risk_groups(pd.Series(rng.normal(size=200)), time, event)
    assert flat.p_value > fig.p_value
    with pytest.raises(ValueError, match="one value per sample"):
        plot_risk_groups(risk, time[:10], event)
