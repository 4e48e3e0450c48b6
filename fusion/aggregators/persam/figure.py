"""PersAM's per-sample figure: class-wise, exploratory and explanatory attention side by side.

Registered as the sample figure ``"persam"`` (what :attr:`PersAM.sample_figure` names), so the CLI and
``AttentionReport.plot_persam`` draw it without the report code knowing PersAM's kinds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...explain.figures import SampleFigure, draw_panels, register_sample_figure
from ...explain.patch_maps import classes_of, panels_of, sample_rows

KINDS = ("class_wise", "exploratory", "explanatory")


def plot_persam_trio(report: Any, sample_id: str, *, target_class: str | None = None,
                     patch_size: float | None = None, mpp: float | None = None, background: Any = None,
                     downsample: float = 1.0, spread: Any = None, path: str | Path | None = None,
                     format: str | None = None):
    """The three patch attentions of one sample on one colour scale: columns are the kinds (times the
    slides, one panel each), rows the classes (every class, or ``target_class``); exploratory is
    class-independent and drawn once. Keywords as in :func:`~clinfuse.fusion.explain.figures.
    plot_patch_attention` (``spread``: whose uniform flags the panel titles state); returns the Figure."""
    rows = {kind: sample_rows(report, sample_id, kind) for kind in KINDS}
    classes = classes_of(rows["explanatory"], target_class)
    grid = []
    for r, cls in enumerate(classes):
        line: list = []
        for kind in KINDS:
            if kind == "exploratory":
                slides = panels_of(rows[kind], kind, None)
                line += slides if r == 0 else [None] * len(slides)
            else:
                line += panels_of(rows[kind], kind, cls)
        grid.append(line)
    return draw_panels(grid, title=f"PersAM attention, sample {sample_id}", patch_size=patch_size, mpp=mpp,
                       background=background, downsample=downsample, spread=spread, path=path, format=format)


register_sample_figure("persam", SampleFigure(plot_persam_trio, "explanatory"))
