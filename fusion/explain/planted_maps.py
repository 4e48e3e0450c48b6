"""Patch maps against a synthetic cohort's planted truth: attention with the evidence patches outlined.

``clinfuse demo`` draws one for each sample it draws attention for, so that the map can be checked by eye
against the truth the generator planted (``SyntheticTruth.relevant_patches``): the outlined cells are the
evidence patches, and attention that found them is bright inside the (green) outlines and dark outside. The
title gives the sample's planted-patch AUROC (:func:`~.faithfulness.planted_patch_auroc`, class-averaged).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .exporters import grid_spacing
from .faithfulness import PATCHES, planted_patch_auroc
from .patch_maps import classes_of, panels_of, sample_rows
from .plotting import save_figure

if TYPE_CHECKING:  # pragma: no cover
    from .report import AttentionReport

OUTLINE_COLOUR = "lime"  # not cyan, which marks the uniform level on the colour bar
OUTLINE_GID = "planted_patch"  # the gid of every outline rectangle (tests count them)


def outline_patches(ax, rows: Any, relevant: np.ndarray, *, size: float | None = None) -> int:
    """Outline, on a map drawn by :func:`~.patch_maps.draw_map` (axes in level-0 pixels), the patches of
    ``rows`` (one panel's rows, with ``x``, ``y``, ``position``) that ``relevant`` (bool ``[N]`` by
    position) marks; returns how many were outlined."""
    from matplotlib.patches import Rectangle

    xy = rows[["x", "y"]].to_numpy(float)
    size = float(size) if size else grid_spacing(xy)
    marked = relevant[rows["position"].to_numpy(int)]
    for x, y in xy[marked]:
        ax.add_patch(Rectangle((x, y), size, size, fill=False, edgecolor=OUTLINE_COLOUR, linewidth=1.6,
                               gid=OUTLINE_GID))
    return int(marked.sum())


def plot_planted_evidence(report: AttentionReport, truth: Any, sample_id: str, *, kind: str = "explanatory",
                          target_class: str | None = None, path: str | Path | None = None,
                          format: str | None = None):
    """One sample's ``kind`` attention on its image bag with the planted evidence patches outlined.

    Args:
        report: an attention report with ``kind`` rows on the ``images`` modality for ``sample_id``.
        truth: the ``SyntheticTruth`` of the cohort the report explains (its ``relevant_patches``).
        target_class: the class whose attention is drawn for a per-class kind (default: every class, one row
            each).
        path, format: write the figure (PNG, PDF or SVG).

    Returns the Figure; ``fig.planted_auroc`` is the sample's AUROC (NaN when its bag is all or none
    evidence) and ``fig.n_outlined`` the outlined patches per panel.
    """
    from .patch_maps import draw_panels

    sample_id = str(sample_id)
    if sample_id not in truth.relevant_patches:
        raise ValueError(f"sample {sample_id!r} has no planted patches in this truth (no image bag)")
    rows = sample_rows(report, sample_id, kind)
    rows = rows[rows["modality"] == PATCHES]
    if rows.empty:
        raise ValueError(f"no {kind!r} attention on the {PATCHES!r} modality for sample {sample_id!r}")
    relevant = np.asarray(truth.relevant_patches[sample_id], dtype=bool)
    auroc = planted_patch_auroc(rows, truth, kind=kind).get(sample_id, float("nan"))
    grid = [panels_of(rows, kind, cls) for cls in classes_of(rows, target_class)]
    n_evidence = int(relevant.sum())
    title = (f"sample {sample_id}: {kind} attention\ngreen outline: the {n_evidence} planted evidence "
             f"patches of {relevant.size} (AUROC {auroc:.2f})")
    fig = draw_panels(grid, title=title, path=None)
    counts = []
    for ax, panel in zip([a for a in fig.axes if a.get_label() != "<colorbar>" and a.axison],
                         [p for row in grid for p in row], strict=False):
        counts.append(outline_patches(ax, panel.rows, relevant))
    fig.planted_auroc, fig.n_outlined = auroc, counts
    return save_figure(fig, path, format)


def write_planted_figures(report: AttentionReport, truth: Any, sample_ids: list[str], out: str | Path, *,
                          kind: str = "explanatory", ext: str = "png") -> dict[str, str]:
    """:func:`plot_planted_evidence` of each of ``sample_ids`` (those with an image bag) into
    ``out/evidence_<file_stem(sample id)>.<ext>``; returns file name -> sample id."""
    from ...datasets.safe_names import file_stem
    from .plotting import pyplot

    plt = pyplot()
    written = {}
    for sid in sample_ids:
        if str(sid) not in truth.relevant_patches:
            continue
        name = f"evidence_{file_stem(str(sid))}.{ext}"
        plt.close(plot_planted_evidence(report, truth, str(sid), kind=kind, path=Path(out) / name))
        written[name] = str(sid)
    return written
