"""Kaplan-Meier curves of predicted risk groups, with the log-rank p-value and an at-risk table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .plotting import pyplot, save_figure


def risk_group_labels(risk: pd.Series, n_groups: int) -> np.ndarray:
    """Group index per sample (0 = lowest predicted risk) by quantiles of ``risk``; ValueError when the
    risks do not split into ``n_groups`` non-empty groups."""
    if n_groups < 2:
        raise ValueError(f"n_groups must be at least 2, got {n_groups}")
    ranks = risk.rank(method="average").to_numpy()
    labels = np.minimum((ranks - 0.5) / len(risk) * n_groups, n_groups - 1).astype(int)
    if len(np.unique(labels)) < n_groups or risk.nunique() < n_groups:
        raise ValueError(f"the predicted risks ({risk.nunique()} distinct values) cannot be split into "
                         f"{n_groups} risk groups: all predicted risks are equal or too few distinct")
    return labels


def plot_risk_groups(risk: pd.Series, time: Any, event: Any, *, n_groups: int = 2, time_unit: str = "",
                     path: str | Path | None = None, format: str | None = None):
    """Kaplan-Meier curves of predicted risk groups (median split by default; ``n_groups`` quantile groups)
    with the log-rank p-value in the title and the numbers at risk under the axes.

    The returned Figure has ``p_value`` (log-rank across the groups) and ``groups`` (group per sample).
    """
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from lifelines.statistics import multivariate_logrank_test

    plt = pyplot()
    risk = pd.Series(risk).astype(float).reset_index(drop=True)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=int)
    if not (len(risk) == len(time) == len(event)):
        raise ValueError("risk, time and event must have one value per sample "
                         f"({len(risk)}, {len(time)}, {len(event)})")
    groups = risk_group_labels(risk, n_groups)
    test = multivariate_logrank_test(time, groups, event)
    names = (["low risk", "high risk"] if n_groups == 2
             else [f"risk group {g + 1} of {n_groups}" + (" (lowest)" if g == 0 else "") for g in
                   range(n_groups)])
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    fitters = []
    for g, name in enumerate(names):
        mask = groups == g
        fitter = KaplanMeierFitter().fit(time[mask], event[mask], label=f"{name} (n={mask.sum()})")
        fitter.plot_survival_function(ax=ax, ci_show=True, show_censors=True,
                                      censor_styles={"ms": 4, "marker": "|"})
        fitters.append(fitter)
    p = float(test.p_value)
    split = "median" if n_groups == 2 else f"{n_groups} quantile groups"
    ax.set_title(f"predicted risk groups ({split} of the predicted risk)\nlog-rank p = {p:.3g}", fontsize=9)
    ax.set_xlabel(f"time ({time_unit})" if time_unit else "time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.legend(fontsize=8, loc="best")
    add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"])
    fig.tight_layout()
    fig.p_value = p
    fig.groups = groups
    return save_figure(fig, path, format)
