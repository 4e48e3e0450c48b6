"""Calibration of predicted survival: observed Kaplan-Meier S(t) against the mean predicted S(t), per group
of samples ranked by their prediction.

At each time t the samples are cut into ``n_groups`` groups of (nearly) equal size by their predicted S(t);
each group's observed S(t) is scikit-survival's Kaplan-Meier estimate of its samples. The calibration error
at t is the size-weighted mean of ``|observed - mean predicted|`` over the groups (0: calibrated). A group
whose samples all left follow-up before t, the last of them censored, has no observed S(t) (``nan``) and
is left out of the mean; no group with one: ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["calibration_error", "calibration_table", "default_n_groups"]


def default_n_groups(n: int) -> int:
    """Groups of at least 10 samples, at most 5 groups (1 below 20 samples: calibration in the large)."""
    return int(min(5, max(1, n // 10)))


def _km_at(time: np.ndarray, event: np.ndarray, t: float) -> float:
    from sksurv.nonparametric import kaplan_meier_estimator

    if len(time) == 0:
        return float("nan")
    uniq, prob = kaplan_meier_estimator(event.astype(bool), time)
    if t > uniq[-1] and prob[-1] > 0:  # past the group's follow-up: no estimate, never the last value
        return float("nan")
    k = np.searchsorted(uniq, t, side="right") - 1
    return 1.0 if k < 0 else float(prob[k])


def calibration_table(time: Sequence[float], event: Sequence[int], survival: np.ndarray,
                      times: Sequence[float], *, n_groups: int | None = None) -> pd.DataFrame:
    """Observed and mean predicted S(t) per group, one row per (time, group).

    Args:
        time, event: ``[n]`` observed times and event indicators.
        survival: ``[n, m]`` predicted S(t) of each sample at each of the m ``times``.
        times: ``[m]`` evaluation times.
        n_groups: groups per time (default :func:`default_n_groups`).

    Returns:
        Columns ``time``, ``group`` (0 = lowest predicted S(t)), ``n``, ``predicted``, ``observed``.
    """
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    surv = np.asarray(survival, dtype=float)
    times = np.asarray(times, dtype=float).reshape(-1)
    if surv.shape != (len(time), len(times)):
        raise ValueError(f"survival must be [n_samples={len(time)}, n_times={len(times)}], got {surv.shape}")
    g = default_n_groups(len(time)) if n_groups is None else int(n_groups)
    if g < 1:
        raise ValueError(f"n_groups must be at least 1, got {n_groups}")
    rows = []
    for j, t in enumerate(times):
        order = np.argsort(surv[:, j], kind="stable")
        for k, idx in enumerate(np.array_split(order, min(g, len(time)))):
            rows.append({"time": float(t), "group": k, "n": len(idx), "predicted": float(surv[idx, j].mean()),
                         "observed": _km_at(time[idx], event[idx], float(t))})
    return pd.DataFrame(rows, columns=["time", "group", "n", "predicted", "observed"])


def calibration_error(time: Sequence[float], event: Sequence[int], survival: np.ndarray,
                      times: Sequence[float], *, n_groups: int | None = None) -> np.ndarray:
    """``[m]`` calibration errors (module docstring) at ``times``; arguments as :func:`calibration_table`."""
    table = calibration_table(time, event, survival, times, n_groups=n_groups)
    out = []
    for t in np.asarray(times, dtype=float).reshape(-1):
        part = table[(table["time"] == t) & table["observed"].notna()]
        gap = (part["observed"] - part["predicted"]).abs()
        out.append(float(np.average(gap, weights=part["n"])) if len(part) else float("nan"))
    return np.asarray(out)
