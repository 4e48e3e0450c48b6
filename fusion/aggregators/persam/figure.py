"""PersAM's per-sample figure: class-wise, exploratory and explanatory attention side by side.

Registered as the sample figure ``"persam"`` (what :attr:`PersAM.sample_figure` names), so the CLI and
``AttentionReport.plot_persam`` draw it without the report code knowing PersAM's kinds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...explain.figures import (
    SampleFigure,
    draw_instances,
    patch_rows,
    pyplot,
    register_sample_figure,
    save_png,
)

KINDS = ("class_wise", "exploratory", "explanatory")


def plot_persam_trio(report: Any, sample_id: str, *, target_class: str | None = None,
                     patch_size: float | None = None, path: str | Path | None = None):
    """The three patch attentions of one sample (class-wise and explanatory for ``target_class``, default
    the first class; exploratory is class-independent), one panel each; returns the Figure."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, kind in zip(axes, KINDS, strict=True):
        rows = patch_rows(report, sample_id, kind, None if kind == "exploratory" else target_class)
        cls = rows["target_class"].dropna().unique()
        draw_instances(ax, rows, kind + (f" (class {cls[0]})" if len(cls) else ""), patch_size)
    fig.suptitle(f"PersAM attention, sample {sample_id}", fontsize=10)
    return save_png(fig, path)


register_sample_figure("persam", SampleFigure(plot_persam_trio, "explanatory"))
