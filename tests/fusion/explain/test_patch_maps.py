"""Patch maps: what they draw (panels per slide and class, true coordinates, one colour scale with 1/N
marked, grey empty positions, scale bar, thumbnail overlay), not only that a file appears."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from clinfuse.fusion.explain import AttentionReport
from clinfuse.fusion.explain.plotting import EMPTY_COLOUR, SCALE_BAR_GID, UNIFORM_GID
from matplotlib.colors import to_rgba

PATCH = 224.0
SLIDES = {"s1": (12, 8), "s2": (6, 10)}  # patches across, down


def _patches(rng) -> pd.DataFrame:
    rows = []
    for slide, (nx, ny) in SLIDES.items():
        xs, ys = np.meshgrid(np.arange(nx) * PATCH, np.arange(ny) * PATCH)
        keep = rng.random(xs.size) < 0.8
        keep[0] = keep[-1] = True  # the slide's extent is its full grid
        for i, (x, y) in enumerate(zip(xs.ravel()[keep], ys.ravel()[keep])):
            rows.append({"slide_id": slide, "x": x + 1000.0, "y": y, "token": f"{slide}:{i}",
                         "position": float(i)})
    return pd.DataFrame(rows)


def _rows(base, sample, kind, cls, values, modality="images"):
    return base.assign(sample_id=sample, patient_id=sample, modality=modality, kind=kind, target_class=cls,
                       value=values / values.sum(), raw_value=values)


@pytest.fixture(scope="module")
def report():
    rng = np.random.default_rng(0)
    base = _patches(rng)
    n = len(base)
    frames = [_rows(base, "P1", "patch", None, 1 + 0.03 * rng.random(n))]  # near uniform
    for kind in ("class_wise", "explanatory"):
        frames += [_rows(base, "P1", kind, c, rng.random(n) ** 6) for c in ("0", "1")]
    frames.append(_rows(base, "P1", "exploratory", None, rng.random(n)))
    genes = pd.DataFrame({"token": [f"GENE{i}" for i in range(1554)]})
    frames.append(_rows(genes, "G1", "patch", "10-20", rng.random(1554) ** 8, modality="genomics"))
    return AttentionReport(pd.concat(frames, ignore_index=True))


def _maps(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def _colourbar(fig):
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1, "one shared colour bar"
    return bars[0]


def test_one_panel_per_slide_and_class_on_pixel_axes(report):
    fig = report.plot_patches("P1", kind="explanatory")
    maps = _maps(fig)
    assert len(maps) == 4  # 2 classes x 2 slides, never two slides on one grid
    titles = sorted(ax.get_title() for ax in maps)
    assert titles == ["explanatory, class 0, slide s1", "explanatory, class 0, slide s2",
                      "explanatory, class 1, slide s1", "explanatory, class 1, slide s2"]
    assert {ax.get_xlabel() for ax in maps} == {"x (px)"} and {ax.get_ylabel() for ax in maps} == {"y (px)"}
    s1 = next(ax for ax in maps if ax.get_title().endswith("s1"))
    left, right, bottom, top = map(float, s1.images[0].get_extent())  # true coordinates: x from 1000, y down
    assert (left, right) == (1000.0, 1000.0 + 12 * PATCH) and (top, bottom) == (0.0, 8 * PATCH)
    assert len(_maps(report.plot_patches("P1", kind="explanatory", target_class="1"))) == 2
    with pytest.raises(ValueError, match="target_class '7' is not one of"):
        report.plot_patches("P1", kind="explanatory", target_class="7")


def test_one_colour_scale_per_patient_from_zero_with_the_uniform_level_marked(report):
    rows = report.to_frame(kinds=["explanatory"])
    n = len(rows[rows["target_class"] == "0"])
    fig = report.plot_patches("P1", kind="explanatory")
    top = max(rows["value"].max(), 3 / n)
    clims = {ax.images[0].get_clim() for ax in _maps(fig)}
    assert len(clims) == 1 and clims.pop() == pytest.approx((0.0, top))
    bar = _colourbar(fig)
    marks = [line for line in bar.lines if line.get_gid() == UNIFORM_GID]
    assert len(marks) == 1 and marks[0].get_ydata()[0] == pytest.approx(1 / n)
    assert "1/N" in bar.get_ylabel() and f"N = {n}" in bar.get_ylabel()
    # near-uniform attention is not stretched over the map: the top of the scale is 3 x 1/N
    flat = report.plot_patches("P1", kind="patch")
    lo, hi = _maps(flat)[0].images[0].get_clim()
    assert lo == 0.0 and hi == pytest.approx(3 / n)


def test_colourbar_ticks_are_readable_for_a_large_near_uniform_bag():
    """1,000 patches within 2% of uniform: ticks from 0, each label the value of its tick, none repeated."""
    xs, ys = np.meshgrid(np.arange(40) * 256.0, np.arange(25) * 256.0)
    base = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "slide_id": "s", "position": np.arange(1000.0),
                         "token": [f"t{i}" for i in range(1000)]})
    values = 1 + 0.02 * np.random.default_rng(0).random(1000)
    fig = AttentionReport(_rows(base, "a", "patch", None, values)).plot_patches("a")
    fig.canvas.draw()
    bar = _colourbar(fig)
    ticks = [(loc, t.get_text()) for loc, t in zip(bar.get_yticks(), bar.get_yticklabels())
             if 0 <= loc <= 3e-3 + 1e-12]
    labels = [text for _, text in ticks]
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    assert float(labels[0]) == 0.0 and all(float(text) == pytest.approx(loc, abs=1e-9) for loc, text in ticks)
    assert _maps(fig)[0].images[0].get_clim() == pytest.approx((0.0, 3e-3))  # not stretched


def test_empty_positions_are_grey_not_a_colour_of_the_map(report):
    fig = report.plot_patches("P1", kind="patch")
    image = _maps(fig)[0].images[0]
    grid = image.get_array()
    assert np.ma.getmaskarray(grid).any() or np.isnan(np.asarray(grid)).any()  # the holes stay empty
    cmap = image.get_cmap()
    assert cmap.get_bad() == pytest.approx(to_rgba(EMPTY_COLOUR))
    assert cmap.get_bad() != pytest.approx(cmap(1.0)) and cmap.get_bad() != pytest.approx(to_rgba("white"))


def test_micrometres_and_a_scale_bar_when_the_resolution_is_known(report):
    fig = report.plot_patches("P1", kind="patch", patch_size=PATCH, mpp=0.5)
    for ax in _maps(fig):
        assert ax.get_xlabel() == "x (µm)"
        bars = [a for a in ax.artists if a.get_gid() == SCALE_BAR_GID]
        assert len(bars) == 1
    s1 = next(ax for ax in _maps(fig) if ax.get_title().endswith("s1"))
    assert tuple(s1.images[0].get_extent()[:2]) == (500.0, 500.0 + 12 * PATCH * 0.5)
    plain = report.plot_patches("P1", kind="patch")  # spacing guessed from the grid: no scale bar
    assert not [a for ax in _maps(plain) for a in ax.artists if a.get_gid() == SCALE_BAR_GID]


def test_overlay_on_a_thumbnail(report):
    thumb = np.zeros((40, 60, 3), dtype=np.uint8)
    thumb[..., 0] = 255
    fig = report.plot_patches("P1", kind="patch", background={"s1": thumb, "s2": thumb}, downsample=64.0)
    for ax in _maps(fig):
        under, over = ax.images[0], ax.images[1]
        assert tuple(under.get_extent()) == (0.0, 60 * 64.0, 40 * 64.0, 0.0)
        assert np.asarray(under.get_array()).max() == 1.0  # uint8 shown as 0..1, not clipped white
        assert over.get_alpha() == pytest.approx(0.6) and over.get_cmap().get_bad()[3] == 0.0


def test_instances_without_coordinates_are_the_top_named_tokens(report):
    """Genes as instances: 20 named bars, titled with the time bin, not 1,554 unlabelled ones."""
    fig = report.plot_patches("G1")
    ax = fig.axes[0]
    assert len(ax.patches) == 20
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert all(label.startswith("GENE") for label in labels) and len(labels) == 20
    assert "time bin 10-20" in ax.get_title() and "top 20 of 1554" in ax.get_title()


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_persam_trio_panels(report):
    fig = report.plot_persam("P1")
    maps = _maps(fig)
    # class-wise and explanatory for 2 classes x 2 slides, exploratory (class-independent) once per slide
    assert len(maps) == 2 * 2 * 2 + 2
    assert sum("exploratory" in ax.get_title() for ax in maps) == 2
    assert len({ax.images[0].get_clim() for ax in maps}) == 1  # one scale for the patient
    one = report.plot_persam("P1", target_class="0")
    assert len(_maps(one)) == 6 and not any("class 1" in ax.get_title() for ax in _maps(one))


@pytest.mark.parametrize("suffix, head", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".png", b"\x89PNG")])
def test_pdf_and_svg_by_suffix(report, tmp_path, suffix, head):
    path = tmp_path / f"map{suffix}"
    report.plot_patches("P1", path=path)
    assert path.read_bytes().startswith(head)


def test_format_keyword_and_unknown_formats(report, tmp_path):
    report.plot_patches("P1", path=tmp_path / "map", format="pdf")
    assert (tmp_path / "map").read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match=r"format 'jpg' is not one of \['png', 'pdf', 'svg'\]"):
        report.plot_patches("P1", path=tmp_path / "map.jpg")
    assert not (tmp_path / "map.jpg").exists()
