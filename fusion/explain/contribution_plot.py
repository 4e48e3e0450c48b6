"""The modality-contribution figure: mean |Shapley share| per modality, beside the attention share.

The shares come from :meth:`~.report.AttentionReport.modality_contributions` (``share=True``): per sample,
``|phi_m| / sum_k |phi_k|``, averaged over the outputs (the classes of a classifier), then over the samples
that have the modality (a modality a sample lacks is no evidence of anything, so it does not pull the mean
down). The attention share is the ``modality`` kind over the same samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .plotting import pyplot, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from .report import AttentionReport


def mean_shares(contributions: AttentionReport, attention: AttentionReport | None = None) -> pd.DataFrame:
    """Per modality (rows, model order): ``shapley_share`` (mean |share|), ``attention_share`` (mean
    ``modality`` weight, NaN without ``attention`` or its ``modality`` kind) and ``n_samples``, over the
    samples that have the modality."""
    rows = contributions.frame[contributions.frame["kind"] == "modality_contribution"]
    share = contributions.modality_contributions(share=True)
    if isinstance(share.columns, pd.MultiIndex):  # one share per class: their mean
        share = share.T.groupby(level="modality", sort=False).mean().T
    has = rows.groupby(["sample_id", "token"]).size().unstack().reindex(index=share.index,
                                                                        columns=share.columns).notna()
    weights = None
    if attention is not None and "modality" in attention.kinds:
        weights = attention.modality_weights().reindex(index=share.index)
    out = {}
    for m in share.columns:
        ids = has.index[has[m].to_numpy()]
        att = np.nan
        if weights is not None and m in weights.columns:
            att = float(weights.loc[ids, m].mean())
        out[m] = {"shapley_share": float(share.loc[ids, m].mean()), "attention_share": att,
                  "n_samples": int(len(ids))}
    return pd.DataFrame.from_dict(out, orient="index")


def plot_modality_contributions(contributions: AttentionReport, *, attention: AttentionReport | None = None,
                                path: str | Path | None = None, format: str | None = None):
    """Bars of the mean |Shapley share| per modality; with ``attention`` (a report with the ``modality``
    kind) a second panel puts the mean attention share and the mean |Shapley share| side by side.

    Returns the figure; ``path`` also writes it (PNG, or PDF / SVG by suffix or ``format``).
    """
    plt = pyplot()
    table = mean_shares(contributions, attention)
    names = [f"{m}\n(n={n})" for m, n in zip(table.index, table["n_samples"])]
    x = np.arange(len(table))
    paired = bool(table["attention_share"].notna().any())
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(9 if paired else 4.8, 3.6), squeeze=False)
    ax = axes[0, 0]
    bars = ax.bar(x, table["shapley_share"], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("mean |Shapley share|")
    ax.set_title("share of the prediction each modality explains", fontsize=9)
    if paired:
        ax = axes[0, 1]
        width = 0.38
        att = ax.bar(x - width / 2, table["attention_share"], width, color="tab:grey",
                     label="attention (modality weight)")
        shap = ax.bar(x + width / 2, table["shapley_share"], width, color="tab:blue",
                      label="|Shapley share| (exact)")
        ax.bar_label(att, fmt="%.2f", fontsize=7)
        ax.bar_label(shap, fmt="%.2f", fontsize=7)
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylim(0, 1.3)  # room for the legend above the bars (shares are at most 1)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("mean share over samples")
        ax.set_title("attention is not importance", fontsize=9)
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    n = len(contributions.sample_ids_with("modality_contribution"))
    fig.suptitle(f"modality contributions (all {n} samples; means over those with the modality)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, format)
