"""Figures of an :class:`~.report.AttentionReport` and of a fit (matplotlib, Agg backend).

Every function returns the matplotlib ``Figure`` and, given ``path``, also writes it atomically: PNG by
default, PDF or SVG by the file's suffix or ``format=``. Patch maps live in :mod:`.patch_maps`, token bars in
:mod:`.token_bars`, Kaplan-Meier curves in :mod:`.survival_plots` (all re-exported here);
:data:`SAMPLE_FIGURES` names the per-sample figure each aggregator asks for (its ``sample_figure``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .patch_maps import (  # noqa: F401  (the public names of the first figures module)
    Panel,
    draw_instances,
    draw_panels,
    panels_of,
    patch_rows,
    plot_image_attention,
    plot_patch_attention,
    sample_rows,
)
from .plotting import display_image, figure_format, pyplot, save_figure, save_png  # noqa: F401
from .survival_plots import plot_risk_groups  # noqa: F401
from .token_bars import draw_token_bars, plot_top_tokens  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from .report import AttentionReport


def plot_modality_weights(report: AttentionReport, *, samples: list[str] | None = None, max_samples: int = 40,
                          path: str | Path | None = None, format: str | None = None):
    """Stacked bars: the modality weights of each sample (absent modalities weigh 0).

    At most ``max_samples`` bars (the first ones, or ``samples``); the title says how many of the report's
    samples are shown, and that the weights are attention shares, not importance.
    """
    plt = pyplot()
    weights = report.modality_weights()
    total = len(weights)
    if samples is not None:
        missing = [str(s) for s in samples if str(s) not in weights.index]
        if missing:
            raise ValueError(f"samples {missing[:5]} have no modality weights in this report")
        weights = weights.loc[[str(s) for s in samples]]
    weights = weights.iloc[:max_samples]
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(weights) + 2), 3.8))
    bottom = np.zeros(len(weights))
    for modality in weights.columns:
        ax.bar(np.arange(len(weights)), weights[modality], bottom=bottom, label=modality)
        bottom += weights[modality].to_numpy()
    ax.set_xticks(np.arange(len(weights)), weights.index, rotation=90, fontsize=7)
    ax.set_xlabel("sample")
    ax.set_ylabel("modality weight (attention share)")
    ax.set_ylim(0, 1)
    shown = f"{len(weights)} of {total} samples" if len(weights) < total else f"all {total} samples"
    ax.set_title(f"modality weights: attention shares, not importance ({shown})", fontsize=9)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return save_figure(fig, path, format)


def plot_training_curve(history: list[dict[str, float]], *, best_epoch: int | None = None,
                        path: str | Path | None = None, format: str | None = None):
    """Training and validation loss per epoch, with the epoch whose weights were kept."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="training loss")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation loss")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", label="kept weights (best epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("training curve (validation = inner split)")
    return save_figure(fig, path, format)


class SampleFigure(NamedTuple):
    """A per-sample figure: ``draw(report, sample_id, path=...)``, for the samples with rows of ``kind``."""

    draw: Callable[..., Any]
    kind: str


SAMPLE_FIGURES: dict[str, SampleFigure] = {
    "patches": SampleFigure(partial(plot_patch_attention, kind="patch"), "patch"),
}
"""Per-sample figures by name; an aggregator that brings a figure of its own registers it here."""


def register_sample_figure(name: str, figure: SampleFigure) -> None:
    """Add ``figure`` to :data:`SAMPLE_FIGURES` under ``name`` (the name an aggregator's ``sample_figure``
    gives)."""
    if name in SAMPLE_FIGURES and SAMPLE_FIGURES[name] != figure:
        raise ValueError(f"a sample figure {name!r} is registered already")
    SAMPLE_FIGURES[name] = figure


def sample_figure(name: str) -> SampleFigure:
    """The entry of :data:`SAMPLE_FIGURES` called ``name`` (an aggregator's ``sample_figure``)."""
    from .. import aggregators  # noqa: F401  (the aggregators register their figures on import)

    if name not in SAMPLE_FIGURES:
        raise ValueError(f"unknown sample figure {name!r}; registered figures are {sorted(SAMPLE_FIGURES)}")
    return SAMPLE_FIGURES[name]
