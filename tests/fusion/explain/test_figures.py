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


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_each_plot_writes_a_png(report, tmp_path):
    report.plot_patches("a", path=tmp_path / "patches.png")
    report.plot_persam("a", target_class="1", path=tmp_path / "persam.png")
    report.plot_modality_weights(path=tmp_path / "modality.png")
    report.plot_top_tokens("a", path=tmp_path / "top.png")
    for name in ("patches", "persam", "modality", "top"):
        assert _is_png(tmp_path / f"{name}.png"), name


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
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


# --------------------------------------------------------------------------- what the figures draw
def _gene_report(n_genes=1554, classes=("0", "1")):
    rng = np.random.default_rng(3)
    frames = []
    for cls in classes:
        v = rng.random(n_genes) ** 8
        frames.append(pd.DataFrame({"sample_id": "g", "patient_id": "g", "modality": "genomics",
                                    "token": [f"GENE{i}" for i in range(n_genes)], "kind": "gene",
                                    "target_class": cls, "value": v / v.sum(), "raw_value": v}))
    return AttentionReport(pd.concat(frames, ignore_index=True))


def test_top_tokens_are_the_top_k_named_and_titled_with_kind_and_class():
    report = _gene_report(classes=("0-10", "10-20"))
    fig = report.plot_top_tokens("g", kinds=("gene",))
    ax = fig.axes[0]
    assert len(ax.patches) == 20  # k = 20 by default, not every gene
    frame = report.to_frame()
    last = frame[frame["target_class"] == "10-20"].nlargest(20, "value")
    by_height = sorted(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]), reverse=True)
    assert [name for _, name in by_height] == list(last["token"])  # the largest on top
    assert ax.get_title() == "gene (genomics), time bin 10-20\n(top 20 of 1554 tokens)"
    assert ax.get_xlabel() == "gene attention weight"
    first = report.plot_top_tokens("g", kinds=("gene",), target_class="0-10", k=5).axes[0]
    assert len(first.patches) == 5 and "time bin 0-10" in first.get_title()
    classified = _gene_report(n_genes=8).plot_top_tokens("g", kinds=("gene",)).axes[0]
    assert classified.get_title() == "gene (genomics), class 1\n(all 8 tokens)"


def test_modality_weights_say_when_they_show_a_subset(report):
    weights = pd.DataFrame({"sample_id": np.repeat([f"s{i}" for i in range(60)], 2),
                            "patient_id": np.repeat([f"s{i}" for i in range(60)], 2),
                            "modality": "all", "token": ["clinical", "images"] * 60, "kind": "modality",
                            "target_class": None, "value": 0.5, "raw_value": 0.5})
    many = AttentionReport(weights)
    fig = many.plot_modality_weights()
    ax = fig.axes[0]
    assert "(40 of 60 samples)" in ax.get_title() and "not importance" in ax.get_title()
    assert len(ax.patches) == 40 * 2 and ax.get_ylabel() == "modality weight (attention share)"
    assert "(all 2 samples)" in report.plot_modality_weights().axes[0].get_title()
    assert "(3 of 60 samples)" in many.plot_modality_weights(samples=["s1", "s2", "s3"]).axes[0].get_title()


def test_uint8_and_float_images_display_alike(tmp_path):
    xs, ys = np.meshgrid(np.arange(4) * 7.0, np.arange(4) * 7.0)
    values = np.full(15, 1 / 15)
    frame = pd.DataFrame({"sample_id": "img", "patient_id": "img", "modality": "images",
                          "token": [f"img:{i}" for i in range(15)], "kind": "patch", "target_class": None,
                          "value": values, "raw_value": values, "position": np.arange(15.0),
                          "x": xs.ravel()[:15], "y": ys.ravel()[:15]})
    report = AttentionReport(frame)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)  # [C, H, W]
    as_uint8 = report.plot_image("img", pixels).axes[0].images[0]
    as_float = report.plot_image("img", pixels / 255.0).axes[0].images[0]
    np.testing.assert_allclose(as_uint8.get_array(), as_float.get_array())
    shown = np.asarray(as_uint8.get_array())
    assert shown.shape == (28, 28, 3) and 0.9 < shown.max() <= 1.0 and shown.min() < 0.1
    fig = report.plot_image("img", pixels)
    overlay = fig.axes[1].images[-1]
    assert np.ma.getmaskarray(overlay.get_array())[-7:, -7:].all()  # no token there: left transparent
    assert overlay.get_clim() == pytest.approx((0.0, 3 / 15))  # near uniform: not stretched
    bar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"][0]
    assert any(line.get_gid() == "uniform_level" for line in bar.lines)


def test_risk_groups_draw_an_at_risk_table_and_name_the_split():
    rng = np.random.default_rng(1)
    risk = pd.Series(rng.normal(size=120))
    time = rng.exponential(np.exp(-risk.to_numpy()))
    event = rng.random(120) < 0.7
    fig = plot_risk_groups(risk, time, event, time_unit="days")
    main_ax = fig.axes[0]
    assert main_ax.get_xlabel() == "time (days)" and main_ax.get_ylabel() == "survival probability"
    assert "log-rank p = " in main_ax.get_title() and "median" in main_ax.get_title()
    fig.canvas.draw()
    table = [ax for ax in fig.axes[1:] if any(t.get_text().startswith("At risk\nlow risk (n=60)")
                                              for t in ax.get_xticklabels())]
    assert len(table) == 1, "an at-risk table under the axes"
    assert main_ax.get_xlim()[0] == 0.0
    legend = [t.get_text() for t in main_ax.get_legend().get_texts()]
    assert legend == ["low risk (n=60)", "high risk (n=60)"]
    three = plot_risk_groups(risk, time, event, n_groups=3)
    assert len(three.axes[0].get_legend().get_texts()) == 3 and np.bincount(three.groups).tolist() == [40] * 3
    with pytest.raises(ValueError, match="cannot be split into 2 risk groups"):
        plot_risk_groups(pd.Series(np.ones(120)), time, event)


def test_informative_samples_are_the_most_confident_per_class_or_the_risk_extremes():
    from clinfuse.fusion.explain.selection import informative_samples

    proba = pd.DataFrame({"proba_0": [0.6, 0.9, 0.2, 0.05], "proba_1": [0.4, 0.1, 0.8, 0.95]},
                         index=["a", "b", "c", "d"])
    picks = informative_samples(proba, ["a", "b", "c", "d"], 3)
    assert [p.sample_id for p in picks] == ["b", "d", "a"]
    assert picks[0].reason == "most confident for class 0 no. 1 (p = 0.900)"
    assert picks[1].reason == "most confident for class 1 no. 1 (p = 0.950)"
    assert [p.sample_id for p in informative_samples(proba, ["a", "c"], 3)] == ["a", "c"]
    risk = pd.DataFrame({"risk": [0.1, 2.0, -1.0, 0.5]}, index=["a", "b", "c", "d"])
    picks = informative_samples(risk, ["a", "b", "c", "d"], 3)
    assert [p.sample_id for p in picks] == ["b", "c", "d"]
    assert picks[0].reason.startswith("highest predicted risk") and picks[1].reason.startswith("lowest")
