"""Patch attention maps: one panel per slide (and per kind and class), on the patches' true coordinates.

Axes are in level-0 pixels, or micrometres given ``mpp`` (micrometres per pixel); a scale bar is drawn when
the patch size or the resolution is given. Every panel of a patient shares one colour scale from 0 to
max(max attention, 3 x 1/N), with the uniform level 1/N marked on the colour bar, so that attention close to
uniform looks flat instead of being stretched over the colour map; a panel whose attention is flagged
uniform (:mod:`.spread`) says so above its title, ``≈ uniform (N_eff = 24.7 of 25)``. Positions without a
patch are grey (or show the slide thumbnail under the map, given ``background``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from .exporters import grid_spacing
from .plotting import (
    CMAP,
    EMPTY_COLOUR,
    SCALE_BAR_GID,
    attention_colourbar,
    colour_limits,
    describe_target,
    display_image,
    nice_length,
    pyplot,
    save_figure,
)
from .spread import figure_notes
from .token_bars import draw_token_bars

if TYPE_CHECKING:  # pragma: no cover
    from .report import AttentionReport


class Panel(NamedTuple):
    """One map: the rows of one kind, class (None: class-independent) and slide (None: no slide ids)."""

    kind: str
    target_class: str | None
    slide_id: str | None
    rows: pd.DataFrame


def sample_rows(report: AttentionReport, sample_id: str, kind: str) -> pd.DataFrame:
    frame = report.to_frame(kinds=[kind])
    rows = frame[frame["sample_id"] == str(sample_id)]
    if rows.empty:
        raise ValueError(f"no {kind!r} attention for sample {sample_id!r} in this report")
    return rows


def classes_of(rows: pd.DataFrame, target_class: str | None) -> list[str | None]:
    """The classes to draw: all of a per-class kind, or ``target_class``; [None] for a class-free kind."""
    if not rows["target_class"].notna().any():
        return [None]
    classes = sorted(rows["target_class"].dropna().unique())
    if target_class is None:
        return classes
    if str(target_class) not in classes:
        raise ValueError(f"target_class {target_class!r} is not one of {classes}")
    return [str(target_class)]


def patch_rows(report: AttentionReport, sample_id: str, kind: str, target_class: str | None) -> pd.DataFrame:
    """The rows of one sample, kind and class (default the last class of a per-class kind)."""
    rows = sample_rows(report, sample_id, kind)
    classes = classes_of(rows, target_class)
    return rows if classes == [None] else rows[rows["target_class"] == classes[-1]]


def panels_of(rows: pd.DataFrame, kind: str, target_class: str | None) -> list[Panel]:
    """One panel per slide of the rows of ``kind`` and ``target_class`` (rows without slide id: one)."""
    if target_class is not None:
        rows = rows[rows["target_class"] == target_class]
    slides = rows["slide_id"].fillna("")
    return [Panel(kind, target_class, slide or None, part)
            for slide, part in rows.groupby(slides, sort=False)]


def uniform_level(panels: list[Panel]) -> float:
    """1/N, N = the sample's patches (of one kind and class, over all its slides)."""
    first = panels[0]
    n = sum(len(p.rows) for p in panels if p.kind == first.kind and p.target_class == first.target_class)
    return 1.0 / max(n, 1)


def _has_coords(rows: pd.DataFrame) -> bool:
    return bool(len(rows)) and bool(rows[["x", "y"]].notna().all().all())


def to_rgba(colour: str, alpha: float):
    from matplotlib.colors import to_rgba as rgba

    return rgba(colour, alpha)


def draw_map(ax, panel: Panel, *, vmax: float, patch_size: float | None = None, mpp: float | None = None,
             background: np.ndarray | None = None, downsample: float = 1.0):
    """Draw one panel's patches at their coordinates; returns the mappable (for the colour bar)."""
    plt = pyplot()
    rows = panel.rows
    values = rows["value"].to_numpy(float)
    unit, scale = ("µm", float(mpp)) if mpp else ("px", 1.0)
    xy = rows[["x", "y"]].to_numpy(float)
    size = float(patch_size) if patch_size else grid_spacing(xy)
    cmap = plt.get_cmap(CMAP).with_extremes(
        bad=to_rgba(EMPTY_COLOUR, 0.0 if background is not None else 1.0))
    if background is not None:
        img = display_image(background)
        h, w = img.shape[:2]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="antialiased",
                  extent=(0, w * downsample * scale, h * downsample * scale, 0))
    cells = np.rint((xy - xy.min(axis=0)) / size).astype(int)
    width, height = cells.max(axis=0) + 1
    x0, y0 = xy.min(axis=0)
    alpha = 0.6 if background is not None else 1.0
    if width * height <= 4_000_000:
        # one raster cell per patch (tiling a slide gives a grid); NaN where there is no patch
        grid = np.full((height, width), np.nan)
        grid[cells[:, 1], cells[:, 0]] = values
        image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest", alpha=alpha,
                          extent=(x0 * scale, (x0 + width * size) * scale, (y0 + height * size) * scale,
                                  y0 * scale))
    else:  # too sparse for a raster: squares at the patches, the strongest drawn last
        order = np.argsort(values)
        image = ax.scatter((xy[order, 0] + size / 2) * scale, (xy[order, 1] + size / 2) * scale,
                           c=values[order], cmap=cmap, vmin=0.0, vmax=vmax, marker="s", alpha=alpha,
                           s=float(np.clip(6000.0 / len(rows), 2.0, 200.0)))
        if not ax.yaxis_inverted():
            ax.invert_yaxis()
    if background is None:
        ax.set_facecolor(EMPTY_COLOUR)
    ax.set_aspect("equal")
    ax.set_xlabel(f"x ({unit})", fontsize=8)
    ax.set_ylabel(f"y ({unit})", fontsize=8)
    ax.tick_params(labelsize=7)
    if patch_size or mpp:
        add_scale_bar(ax, span=width * size * scale, unit=unit)
    return image


def add_scale_bar(ax, *, span: float, unit: str) -> None:
    """A round-length bar in the lower right (gid ``scale_bar``), in the axes' data units."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = nice_length(span)
    bar = AnchoredSizeBar(ax.transData, length, f"{length:g} {unit}", "lower right", pad=0.3, color="white",
                          frameon=True, size_vertical=0, fontproperties={"size": 7})
    bar.patch.set_facecolor("black")
    bar.patch.set_alpha(0.6)
    bar.set_gid(SCALE_BAR_GID)
    ax.add_artist(bar)


def panel_title(panel: Panel, n_slides: int, notes: dict | None = None) -> str:
    parts = [panel.kind, describe_target(panel.target_class)]
    if panel.slide_id is not None and n_slides > 1:
        parts.append(f"slide {panel.slide_id}")
    note = (notes or {}).get((panel.kind, panel.target_class))
    return (f"{note}\n" if note else "") + ", ".join(p for p in parts if p)


def draw_panels(grid: list[list[Panel | None]], *, title: str, patch_size: float | None = None,
                mpp: float | None = None, background: Any = None, downsample: float = 1.0,
                spread: pd.DataFrame | None = None, path: str | Path | None = None,
                format: str | None = None):
    """A figure of ``grid`` (rows of panels; None leaves a cell empty) on one shared colour scale.

    Panels whose attention is flagged uniform (by ``spread``, an :func:`~.spread.attention_spread` table,
    where it has the sample, else by the fallback rule) say so in their title; ``fig.uniform_notes``
    maps ``(kind, target_class)`` to that note.
    """
    plt = pyplot()
    panels = [p for row in grid for p in row if p is not None]
    notes = figure_notes(pd.concat([p.rows for p in panels], ignore_index=True), spread)
    uniform = uniform_level(panels)
    _, vmax = colour_limits(np.concatenate([p.rows["value"].to_numpy(float) for p in panels]), uniform)
    n_rows, n_cols = len(grid), max(len(row) for row in grid)
    n_slides = len({p.slide_id for p in panels})
    if not all(_has_coords(p.rows) for p in panels):  # no coordinates (genes, events as instances): bars
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.4 * n_cols, 4.6 * n_rows), squeeze=False)
        for ax, panel in zip(axes.ravel(), [p for row in grid for p in row + [None] * (n_cols - len(row))]):
            if panel is None:
                ax.set_axis_off()
                continue
            draw_token_bars(ax, panel.rows, title=panel_title(panel, n_slides, notes), uniform=uniform)
        top = max(float(p.rows["value"].max()) for p in panels)
        for ax in axes.ravel():  # one value scale for the patient, as the maps share one colour scale
            if ax.axison:
                ax.set_xlim(0.0, 1.08 * max(top, uniform))
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.uniform_notes = notes
        return save_figure(fig, path, format)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols + 1.4, 3.4 * n_rows + 0.5),
                             squeeze=False, layout="constrained")
    mappable, used = None, []
    for r, row in enumerate(grid):
        for c in range(n_cols):
            ax = axes[r, c]
            panel = row[c] if c < len(row) else None
            if panel is None:
                ax.set_axis_off()
                continue
            bg = background.get(panel.slide_id) if isinstance(background, dict) else background
            mappable = draw_map(ax, panel, vmax=vmax, patch_size=patch_size, mpp=mpp, background=bg,
                                downsample=downsample)
            ax.set_title(panel_title(panel, n_slides, notes), fontsize=9)
            used.append(ax)
    attention_colourbar(fig, mappable, used, uniform=uniform, vmax=vmax)
    fig.suptitle(title + ("" if background is not None else "  (grey: no patch)"), fontsize=10)
    fig.uniform_level, fig.colour_limits, fig.uniform_notes = uniform, (0.0, vmax), notes
    return save_figure(fig, path, format)


def plot_patch_attention(report: AttentionReport, sample_id: str, *, kind: str = "patch",
                         target_class: str | None = None, patch_size: float | None = None,
                         mpp: float | None = None, background: Any = None, downsample: float = 1.0,
                         spread: pd.DataFrame | None = None, path: str | Path | None = None,
                         format: str | None = None):
    """One sample's patch attention: one panel per slide (columns) and class (rows), on one colour scale.

    Args:
        target_class: the class to draw for a per-class kind (default: every class, one row each).
        patch_size: the patch side in level-0 pixels (default: the one the slides' geometry states, else
            the smallest step between coordinates); giving it (or ``mpp``) draws a scale bar.
        mpp: micrometres per level-0 pixel (default: the geometry's, when stated): axes and scale bar in µm.
        background: a thumbnail of the slide (``[h, w]`` / ``[h, w, 3]``; uint8 or float), or a dict
            slide id -> thumbnail, drawn under the map; ``downsample``: level-0 pixels per thumbnail pixel.
        spread: an :func:`~.spread.attention_spread` table (e.g. judged against an untrained null) whose
            uniform flags the panel titles state; default: the fallback rule on the drawn rows.
        path, format: write the figure (PNG, PDF or SVG by ``format`` or the file's suffix).
    """
    rows = sample_rows(report, sample_id, kind)
    grid = [panels_of(rows, kind, cls) for cls in classes_of(rows, target_class)]
    stated_size, stated_mpp = stated_scale(getattr(report, "geometry", {}), rows)
    patch_size = stated_size if patch_size is None else patch_size
    mpp = stated_mpp if mpp is None else mpp
    return draw_panels(grid, title=f"sample {sample_id}: {kind} attention", patch_size=patch_size, mpp=mpp,
                       background=background, downsample=downsample, spread=spread, path=path,
                       format=format)


def stated_scale(geometry: Any, rows: pd.DataFrame) -> tuple[float | None, float | None]:
    """(patch side, mpp) that every drawn slide's geometry states in pixels (``ImageBags.geometry``, kept
    by the report), each None unless all the slides agree on it."""
    slides = rows["slide_id"].dropna().astype(str).unique()
    geoms = [geometry.get(sl) for sl in slides]
    if not len(geoms) or any(g is None or g.unit != "px" for g in geoms):
        return None, None
    sizes, mpps = {g.patch_size for g in geoms}, {g.mpp for g in geoms}
    return (sizes.pop() if len(sizes) == 1 else None), (mpps.pop() if len(mpps) == 1 else None)


def draw_instances(ax, rows: pd.DataFrame, title: str, patch_size: float | None) -> None:
    """One map (or, without coordinates, bars) of ``rows`` on its own axes, with its own colour bar."""
    panel = Panel(str(rows["kind"].iloc[0]), None, None, rows)
    uniform = 1.0 / max(len(rows), 1)
    _, vmax = colour_limits(rows["value"].to_numpy(float), uniform)
    if _has_coords(rows):
        image = draw_map(ax, panel, vmax=vmax, patch_size=patch_size)
        attention_colourbar(ax.figure, image, ax, uniform=uniform, vmax=vmax)
    else:
        draw_token_bars(ax, rows, title=title, uniform=uniform)
    ax.set_title(title, fontsize=9)


def plot_image_attention(report: AttentionReport, sample_id: str, image: np.ndarray, *, kind: str = "patch",
                         target_class: str | None = None, patch_size: float | None = None,
                         spread: pd.DataFrame | None = None, path: str | Path | None = None,
                         format: str | None = None):
    """For pixel inputs: the image (uint8 or float) and its sub-patch attention overlaid on it (tokens carry
    pixel x, y); sub-patches without a token stay transparent. Attention flagged uniform (by ``spread``,
    else the fallback rule) says so in the overlay's title."""
    plt = pyplot()
    rows = patch_rows(report, sample_id, kind, target_class)
    img = display_image(image)
    if rows[["x", "y"]].isna().any().any():
        raise ValueError(f"sample {sample_id!r}: tokens have no pixel coordinates to overlay on the image")
    xy = rows[["x", "y"]].to_numpy(float)
    size = int(patch_size or grid_spacing(xy))
    heat = np.full(img.shape[:2], np.nan)
    for (x, y), v in zip(xy.astype(int), rows["value"].to_numpy(float)):
        heat[y:y + size, x:x + size] = v
    uniform = 1.0 / len(rows)
    _, vmax = colour_limits(rows["value"].to_numpy(float), uniform)
    fig, axes = plt.subplots(1, 2, figsize=(7.4, 3.6), layout="constrained")
    grey = "gray" if img.ndim == 2 else None
    axes[0].imshow(img, cmap=grey, vmin=0, vmax=1)
    axes[0].set_title(f"sample {sample_id}", fontsize=9)
    axes[1].imshow(img, cmap=grey, vmin=0, vmax=1)
    cmap = plt.get_cmap(CMAP).with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    overlay = axes[1].imshow(heat, cmap=cmap, alpha=0.55, vmin=0.0, vmax=vmax)
    cls = rows["target_class"].dropna().unique()
    notes = figure_notes(rows, spread)
    note = notes.get((kind, str(cls[0]) if len(cls) else None))
    axes[1].set_title((f"{note}\n" if note else "") + ", ".join(
        p for p in (f"{kind} attention", describe_target(cls[0] if len(cls) else None)) if p), fontsize=9)
    for ax in axes:
        ax.set_xlabel("x (px)", fontsize=8)
        ax.set_ylabel("y (px)", fontsize=8)
        ax.tick_params(labelsize=7)
    attention_colourbar(fig, overlay, axes[1], uniform=uniform, vmax=vmax)
    fig.uniform_level, fig.colour_limits, fig.uniform_notes = uniform, (0.0, vmax), notes
    return save_figure(fig, path, format)
