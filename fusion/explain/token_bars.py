"""Bars of named tokens (clinical variables, genes, events; instances without coordinates): the top k, each
labelled, titled with the kind and the class or time bin the values are for, and with
``≈ uniform (N_eff = 24.7 of 25)`` above when the attention is flagged uniform (:mod:`.spread`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .plotting import UNIFORM_GID, describe_target, pyplot, save_figure, tick_formatter
from .spread import figure_notes

if TYPE_CHECKING:  # pragma: no cover
    from .report import AttentionReport

TOP_K = 20


def value_label(kind: str) -> str:
    return "SHAP value (output units)" if kind == "shap" else f"{kind} attention weight"


def draw_token_bars(ax, rows: pd.DataFrame, *, title: str, k: int = TOP_K, uniform: float | None = None):
    """The ``k`` largest |value| of ``rows`` (one sample, kind and class) as labelled horizontal bars.

    The title says how many of how many tokens are shown; ``uniform`` (1/N) is drawn as a dashed line.
    """
    order = rows.assign(_mag=rows["value"].abs()).sort_values("_mag", ascending=False, kind="stable")
    top = order.head(k)
    y = np.arange(len(top))[::-1]
    values = top["value"].to_numpy(float)
    colours = np.where(values < 0, "tab:blue", "tab:red") if (values < 0).any() else "tab:red"
    ax.barh(y, values, color=colours)
    labels = [str(t) if len(str(t)) <= 28 else str(t)[:27] + "…" for t in top["token"]]
    ax.set_yticks(y, labels, fontsize=7)
    kind = str(rows["kind"].iloc[0])
    ax.set_xlabel(value_label(kind), fontsize=8)
    lo, hi = min(0.0, float(values.min(initial=0.0))), max(float(values.max(initial=0.0)), 1e-12)
    ax.xaxis.set_major_formatter(tick_formatter(lo, hi))
    ax.tick_params(axis="x", labelsize=7)
    if uniform is not None:
        ax.axvline(uniform, color="tab:cyan", linestyle="--", linewidth=1.2, gid=UNIFORM_GID,
                   label=f"uniform 1/N = {uniform:.3g}")
        ax.legend(fontsize=7, loc="lower right")
    shown = f"top {len(top)} of {len(rows)}" if len(rows) > len(top) else f"all {len(rows)}"
    ax.set_title(f"{title}\n({shown} tokens)", fontsize=9)
    return top


def _class_rows(rows: pd.DataFrame, kind: str, sample_id: str, target_class: str | None) -> pd.DataFrame:
    if not rows["target_class"].notna().any():
        return rows
    classes = sorted(rows["target_class"].dropna().unique())
    chosen = classes[-1] if target_class is None else str(target_class)
    if chosen not in classes:
        raise ValueError(f"sample {sample_id!r}, kind {kind!r}: target_class {target_class!r} is not one of "
                         f"{classes}")
    return rows[rows["target_class"] == chosen]


def plot_top_tokens(report: AttentionReport, sample_id: str, *,
                    kinds: tuple[str, ...] = ("feature", "gene", "event"), k: int = TOP_K,
                    target_class: str | None = None, spread: pd.DataFrame | None = None,
                    path: str | Path | None = None, format: str | None = None):
    """One panel per kind the sample has: its top-``k`` tokens by |value|, named.

    ``target_class``: the class (or time bin) of per-class kinds (default: the last one); the panel title
    names it, and how many of the sample's tokens are shown. Attention flagged uniform (by ``spread``, an
    :func:`~.spread.attention_spread` table, else by the fallback rule) says so above the title;
    ``fig.uniform_notes`` maps ``(kind, target_class)`` to the note.
    """
    plt = pyplot()
    present = [kind for kind in kinds if kind in report.kinds]
    if not present:
        raise ValueError(f"this report has none of the kinds {list(kinds)} (it has {report.kinds})")
    frame = report.frame
    mine = frame[frame["sample_id"] == str(sample_id)]
    if mine.empty:
        raise ValueError(f"sample {sample_id!r} is not in this report ({len(report.sample_ids)} samples)")
    # only the kinds this sample has rows of (a sample without genes has no gene weights)
    tops = {kind: mine[mine["kind"] == kind] for kind in present}
    tops = {kind: rows for kind, rows in tops.items() if not rows.empty}
    if not tops:
        raise ValueError(f"sample {sample_id!r} has no {present} rows in this report "
                         "(its modalities are absent)")
    height = max(3.0, 0.2 * min(k, max(len(r) for r in tops.values())) + 1.4)
    fig, axes = plt.subplots(1, len(tops), figsize=(4.4 * len(tops), height), squeeze=False)
    fig.uniform_notes = {}
    for ax, (kind, rows) in zip(axes[0], tops.items()):
        rows = _class_rows(rows, kind, sample_id, target_class)
        cls = rows["target_class"].dropna().unique()
        what = ", ".join(p for p in (f"{kind} ({rows['modality'].iloc[0]})",
                                     describe_target(cls[0] if len(cls) else None)) if p)
        notes = figure_notes(rows, spread) if kind != "shap" else {}
        fig.uniform_notes.update(notes)
        note = notes.get((kind, str(cls[0]) if len(cls) else None))
        draw_token_bars(ax, rows, title=(f"{note}\n" if note else "") + what, k=k)
    fig.suptitle(f"sample {sample_id}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, format)
