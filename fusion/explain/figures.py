"""Figures of an :class:`~.report.AttentionReport` and of a fit (matplotlib, Agg backend, PNG).

Every function returns the matplotlib ``Figure`` and, given ``path``, also writes it atomically as PNG.
:data:`SAMPLE_FIGURES` names the per-sample figure each aggregator asks for (its ``sample_figure``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from ...datasets.atomic import atomic_path
from .exporters import grid_spacing

if TYPE_CHECKING:  # pragma: no cover
    from .report import AttentionReport


def pyplot():
    """matplotlib's pyplot on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path | None):
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return fig


def patch_rows(report: AttentionReport, sample_id: str, kind: str, target_class: str | None) -> pd.DataFrame:
    frame = report.to_frame(kinds=[kind])
    rows = frame[frame["sample_id"] == str(sample_id)]
    if rows.empty:
        raise ValueError(f"no {kind!r} attention for sample {sample_id!r} in this report")
    if rows["target_class"].notna().any():
        classes = sorted(rows["target_class"].dropna().unique())
        if target_class is None:
            target_class = classes[-1]
        if str(target_class) not in classes:
            raise ValueError(f"target_class {target_class!r} is not one of {classes}")
        rows = rows[rows["target_class"] == str(target_class)]
    return rows


def draw_instances(ax, rows: pd.DataFrame, title: str, patch_size: float | None) -> None:
    """Patch attention on the patch coordinates, or, without coordinates, bars over the instances."""
    values = rows["value"].to_numpy(float)
    if rows[["x", "y"]].notna().all().all() and len(rows):
        xy = rows[["x", "y"]].to_numpy(float)
        size = patch_size or grid_spacing(xy)
        cells = np.rint((xy - xy.min(axis=0)) / size).astype(int)
        width, height = cells.max(axis=0) + 1
        if width * height <= 4_000_000:
            # Patches on a grid (as tiling a slide gives): one raster cell per patch, blank elsewhere.
            grid = np.full((height, width), np.nan)
            grid[cells[:, 1], cells[:, 0]] = values
            image = ax.imshow(grid, cmap="inferno", interpolation="nearest",
                              extent=(xy[:, 0].min(), xy[:, 0].min() + width * size,
                                      xy[:, 1].min() + height * size, xy[:, 1].min()))
        else:  # too sparse for a raster: draw the strongest patches last, on top
            order = np.argsort(values)
            image = ax.scatter(xy[order, 0] + size / 2, xy[order, 1] + size / 2, c=values[order],
                               cmap="inferno", marker="s", s=float(np.clip(6000.0 / len(rows), 2.0, 200.0)))
            ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    else:
        ax.bar(np.arange(len(values)), values, color="tab:red")
        ax.set_xlabel(f"{rows['modality'].iloc[0]} token")
        ax.set_ylabel("weight")
    ax.set_title(title, fontsize=9)


def plot_patch_attention(report: AttentionReport, sample_id: str, *, kind: str = "patch",
                         target_class: str | None = None, patch_size: float | None = None,
                         path: str | Path | None = None):
    """Heatmap of one sample's patch attention drawn at the patch coordinates."""
    plt = pyplot()
    rows = patch_rows(report, sample_id, kind, target_class)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    cls = rows["target_class"].dropna().unique()
    draw_instances(ax, rows, f"{sample_id}: {kind}" + (f" (class {cls[0]})" if len(cls) else ""), patch_size)
    return save_png(fig, path)


def plot_image_attention(report: AttentionReport, sample_id: str, image: np.ndarray, *, kind: str = "patch",
                         target_class: str | None = None, patch_size: float | None = None,
                         path: str | Path | None = None):
    """For pixel inputs: the image with its sub-patch attention overlaid (tokens carry pixel x, y)."""
    plt = pyplot()
    rows = patch_rows(report, sample_id, kind, target_class)
    img = np.asarray(image, dtype=float)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.moveaxis(img, 0, -1)
    img = img.squeeze()
    if rows[["x", "y"]].isna().any().any():
        raise ValueError(f"sample {sample_id!r}: tokens have no pixel coordinates to overlay on the image")
    xy = rows[["x", "y"]].to_numpy(float)
    size = patch_size or grid_spacing(xy)
    heat = np.zeros(img.shape[:2])
    for (x, y), v in zip(xy.astype(int), rows["value"].to_numpy(float)):
        heat[y:y + int(size), x:x + int(size)] = v
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
    axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None)
    axes[0].set_title(f"{sample_id}", fontsize=9)
    axes[1].imshow(img, cmap="gray" if img.ndim == 2 else None)
    overlay = axes[1].imshow(heat, cmap="inferno", alpha=0.55)
    axes[1].set_title(f"{kind} attention", fontsize=9)
    fig.colorbar(overlay, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_png(fig, path)


def plot_modality_weights(report: AttentionReport, *, samples: list[str] | None = None, max_samples: int = 40,
                          path: str | Path | None = None):
    """Stacked bars: the modality weights of each sample (absent modalities weigh 0)."""
    plt = pyplot()
    weights = report.modality_weights()
    if samples is not None:
        weights = weights.loc[[str(s) for s in samples]]
    weights = weights.iloc[:max_samples]
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(weights) + 2), 3.8))
    bottom = np.zeros(len(weights))
    for modality in weights.columns:
        ax.bar(np.arange(len(weights)), weights[modality], bottom=bottom, label=modality)
        bottom += weights[modality].to_numpy()
    ax.set_xticks(np.arange(len(weights)), weights.index, rotation=90, fontsize=7)
    ax.set_ylabel("modality weight")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return save_png(fig, path)


def plot_top_tokens(report: AttentionReport, sample_id: str, *,
                    kinds: tuple[str, ...] = ("feature", "gene", "event"), k: int = 10,
                    path: str | Path | None = None):
    """Horizontal bars of one sample's top clinical variables, genes and events (the kinds it has)."""
    plt = pyplot()
    present = [kind for kind in kinds if kind in report.kinds]
    if not present:
        raise ValueError(f"this report has none of the kinds {list(kinds)} (it has {report.kinds})")
    # only the kinds this sample has rows of (a sample without genes has no gene weights)
    tops = {kind: report.top_tokens(sample_id, k=k, kind=kind) for kind in present}
    tops = {kind: top for kind, top in tops.items() if not top.empty}
    if not tops:
        raise ValueError(f"sample {sample_id!r} has no {present} rows in this report "
                         "(its modalities are absent)")
    fig, axes = plt.subplots(1, len(tops), figsize=(4.2 * len(tops), 3.6), squeeze=False)
    for ax, (kind, top) in zip(axes[0], tops.items()):
        top = top[top["target_class"].isna() | (top["target_class"] == top["target_class"].iloc[0])]
        ax.barh(np.arange(len(top))[::-1], top["value"], color="tab:blue")
        ax.set_yticks(np.arange(len(top))[::-1], top["token"], fontsize=7)
        ax.set_title(f"top {kind} ({sample_id})", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def plot_risk_groups(risk: pd.Series, time: Any, event: Any, *, path: str | Path | None = None):
    """Kaplan-Meier curves of predicted high- vs low-risk groups (median split) with the log-rank p-value."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    plt = pyplot()
    risk = pd.Series(risk).astype(float)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=int)
    if not (len(risk) == len(time) == len(event)):
        raise ValueError("risk, time and event must have one value per sample "
                         f"({len(risk)}, {len(time)}, {len(event)})")
    high = (risk > risk.median()).to_numpy()
    if high.all() or not high.any():
        raise ValueError("all predicted risks are equal: cannot split into high- and low-risk groups")
    test = logrank_test(time[high], time[~high], event[high], event[~high])
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for mask, label in ((~high, "low risk"), (high, "high risk")):
        fitter = KaplanMeierFitter().fit(time[mask], event[mask], label=f"{label} (n={mask.sum()})")
        fitter.plot_survival_function(ax=ax)
    ax.set_title(f"predicted risk groups, log-rank p = {test.p_value:.3g}", fontsize=9)
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    fig.p_value = float(test.p_value)
    return save_png(fig, path)


def plot_training_curve(history: list[dict[str, float]], *, best_epoch: int | None = None,
                        path: str | Path | None = None):
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
    return save_png(fig, path)


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
