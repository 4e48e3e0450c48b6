"""S(t) at any time from a discrete-time head's survival at its bin ends.

Two rules, chosen by the saved bin edges (``time_bins_`` in ``fitted.json``), so a loaded model keeps the
rule it was fitted with:

- finite last edge (models fitted now; the last edge is the largest training time): piecewise-constant
  hazard. Within bin k, log S is linear in t between the bin's ends; beyond the last bin end t_K the last
  bin's hazard rate goes on: ``S(t) = S(t_K) * (S(t_K) / S(t_{K-1})) ** ((t - t_K) / (t_K - t_{K-1}))``,
  which keeps falling (unless that hazard is 0) instead of holding a plateau.
- open last edge ``inf`` (models fitted before the bins had a finite end): the step rule they were
  fitted and checked with: 1 before the first bin end, then the value at the last bin end <= t. The
  open last bin has no length, so it gives no rate to extrapolate with.
"""

from __future__ import annotations

import numpy as np


def survival_rule(edges) -> str:
    """``"piecewise_constant_hazard"`` for a finite last edge, ``"step"`` for the open ``inf`` one."""
    return "piecewise_constant_hazard" if np.isfinite(float(np.asarray(edges, float)[-1])) else "step"


def discrete_survival_at(edges, bin_survival: np.ndarray, times: np.ndarray) -> np.ndarray:
    """S at ``times`` ``[T]`` for each sample, ``[N, T]``.

    Args:
        edges: bin edges ``[K + 1]`` (``edges[0] = 0``); bin_survival: S at each bin end, ``[N, K]``;
        times: non-negative times ``[T]``.
    """
    edges = np.asarray(edges, dtype=float)
    ends = edges[1:]
    s = np.concatenate([np.ones((len(bin_survival), 1)), np.asarray(bin_survival, float)], axis=1)
    times = np.asarray(times, dtype=float)
    if survival_rule(edges) == "step":
        return s[:, np.searchsorted(ends, times, side="right")]  # number of bin ends <= t
    k = np.clip(np.searchsorted(ends, times, side="left"), 0, len(ends) - 1)  # bin holding t (or the last)
    lo, hi = edges[k], edges[k + 1]
    w = (times - lo) / (hi - lo)  # in [0, 1] inside the bins, > 1 beyond the last bin end
    s_lo, s_hi = s[:, k], s[:, k + 1]
    beyond = w > 1
    # log-linear within a bin: S_lo^(1-w) S_hi^w (exact at both ends; 0 ** 0 = 1 keeps S = 0 bins exact)
    inside = s_lo ** (1 - np.minimum(w, 1)) * s_hi ** np.minimum(w, 1)
    ratio = np.divide(s_hi, s_lo, out=np.zeros_like(s_hi), where=s_lo > 0)  # 1 - h_K
    extrapolated = s_hi * ratio ** np.where(beyond, w - 1, 0.0)
    return np.where(beyond, extrapolated, inside)


def cox_survival_at(baseline: dict, risk: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Cox head: ``S(t) = exp(-H0(t) exp(risk))`` ``[samples x times]``, with ``baseline``'s Breslow
    cumulative hazard H0 (``{"times", "cumhaz"}``, a step function of the training event times)."""
    bt, bh = (np.asarray(baseline[k], dtype=float) for k in ("times", "cumhaz"))
    idx = np.searchsorted(bt, times, side="right") - 1
    h0 = np.where(idx >= 0, bh[np.clip(idx, 0, None)], 0.0) if len(bt) else np.zeros_like(times)
    return np.exp(-np.outer(np.exp(risk), h0))
