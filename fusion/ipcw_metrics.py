"""Survival metrics computed by scikit-survival: IPCW Brier score and its integral, cumulative/dynamic AUC.

The inverse-probability-of-censoring weights are scikit-survival's Kaplan-Meier estimate of the censoring
distribution of the *training* targets (``train``): a fitted model keeps them as its ``follow_up_`` (a life
table, see :func:`follow_up`). ``train=None`` estimates them on the evaluated samples instead.

Rules at the end of the follow-up (scikit-survival estimates nothing past the last training time):

- An evaluation time t is evaluable when ``min(test times) <= t < end``, ``end`` being the smaller of the
  last evaluated time and the last training time (:func:`evaluable_range`). :func:`check_times` raises a
  ValueError naming the times outside; :func:`default_times` only picks times inside.
- An evaluated sample observed after the last training time is counted as censored at that time
  (``n_after_follow_up`` in the results). At any evaluable time it is still event-free and under
  observation either way, so no Brier or AUC term changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "check_times",
    "cumulative_dynamic_auc",
    "default_brier_times",
    "default_times",
    "evaluation_times",
    "evaluable_range",
    "follow_up",
    "km_censoring",
    "brier_scores",
    "integrated_brier_score",
]


def follow_up(time: Sequence[float], event: Sequence[int]) -> dict[str, list[float]]:
    """Life table of survival targets: each distinct observed time with its numbers of events and censorings.

    It holds exactly what the IPCW censoring estimate needs (and no sample ids), so a fitted model can keep
    the follow-up of its training samples and :func:`as_structured` can rebuild them.

    Args:
        time, event: ``[n]`` observed times and event indicators (1 = event, 0 = censored).

    Returns:
        ``{"time": [k], "n_events": [k], "n_censored": [k]}``, times increasing.
    """
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    times, inverse = np.unique(time, return_inverse=True)
    n_events = np.bincount(inverse, weights=event == 1, minlength=len(times))
    n_censored = np.bincount(inverse, weights=event != 1, minlength=len(times))
    return {"time": times.tolist(), "n_events": n_events.astype(int).tolist(),
            "n_censored": n_censored.astype(int).tolist()}


def as_structured(targets: Any) -> np.ndarray:
    """scikit-survival's structured array ``[n]`` (bool ``event``, float ``time``) of survival targets.

    ``targets``: a DataFrame with ``time`` and ``event`` columns, a ``(time, event)`` pair, a structured
    array (returned as it is), or a :func:`follow_up` life table.
    """
    from sksurv.util import Surv

    if isinstance(targets, np.ndarray) and targets.dtype.names is not None:
        return targets
    if isinstance(targets, dict) and {"time", "n_events", "n_censored"} <= set(targets):
        times = np.asarray(targets["time"], dtype=float)
        n_ev, n_cens = (np.asarray(targets[k], dtype=int) for k in ("n_events", "n_censored"))
        time = np.concatenate([np.repeat(times, n_ev), np.repeat(times, n_cens)])
        event = np.concatenate([np.ones(n_ev.sum(), bool), np.zeros(n_cens.sum(), bool)])
        return Surv.from_arrays(event, time)
    if isinstance(targets, pd.DataFrame):
        if not {"time", "event"} <= set(targets.columns):
            raise ValueError(f"train: expected columns 'time' and 'event', found {list(targets.columns)}")
        targets = (targets["time"], targets["event"])
    if not isinstance(targets, tuple | list) or len(targets) != 2:
        raise TypeError("train must be a DataFrame with 'time' and 'event', a (time, event) pair, a "
                        f"structured array or a follow_up() life table, got {type(targets).__name__}")
    time, event = np.asarray(targets[0], dtype=float), np.asarray(targets[1], dtype=int)
    return Surv.from_arrays(event == 1, time)


def evaluable_range(time: Sequence[float], train: Any = None) -> tuple[float, float]:
    """``(lo, hi)``: the times t with ``lo <= t < hi`` at which the IPCW metrics of samples observed at
    ``time`` are defined (``hi``: the last evaluated time, or the last training time if earlier)."""
    time = np.asarray(time, dtype=float)
    if len(time) == 0:
        return float("nan"), float("nan")
    hi = float(time.max())
    if train is not None:
        hi = min(hi, float(as_structured(train)["time"].max()))
    return float(time.min()), hi


def check_times(times: Sequence[float], time: Sequence[float], train: Any = None) -> np.ndarray:
    """``times`` as an increasing float array, or a ValueError naming those outside :func:`evaluable_range`.

    Args:
        times: ``[m]`` evaluation times (distinct, non-negative).
        time: ``[n]`` observed times of the evaluated samples; train: the training targets or None.
    """
    times = np.asarray(times, dtype=float).reshape(-1)
    if len(times) == 0 or not np.isfinite(times).all() or len(np.unique(times)) != len(times):
        raise ValueError(f"times must be distinct finite numbers, got {times.tolist()}")
    lo, hi = evaluable_range(time, train)
    outside = times[~((times >= lo) & (times < hi))]
    if len(outside):
        end = ("the last training time" if train is not None and hi < float(np.max(time))
               else "the last evaluated time")
        raise ValueError(
            f"survival metrics: times {[float(t) for t in outside]} lie outside the evaluable follow-up "
            f"[{lo:g}, {hi:g}) (from the first evaluated time to {end}, excluded): the censoring "
            "distribution, hence the IPCW Brier score and AUC, is not estimated there; choose times inside")
    return np.sort(times)


def default_times(time: Sequence[float], event: Sequence[int], train: Any = None, *,
                  quantiles: Sequence[float] = (0.25, 0.5, 0.75),
                  within: tuple[float, float] | None = None) -> np.ndarray:
    """The quartiles (``quantiles``, observed values) of the event times inside :func:`evaluable_range`
    (or the range ``within``, ``lo <= t < hi``), distinct; empty without an event there."""
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    lo, hi = evaluable_range(time, train) if within is None else within
    ev = time[(event == 1) & (time >= lo) & (time < hi)]
    if len(ev) == 0:
        return np.array([])
    return np.unique(np.quantile(ev, list(quantiles), method="lower"))


def evaluation_times(time: Sequence[float], event: Sequence[int], train: Any = None,
                     times: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(times, grid)`` of an evaluation: ``times`` checked (:func:`check_times`), or
    :func:`default_times` when None, and the integrated Brier score's :func:`default_brier_times`."""
    chosen = default_times(time, event, train) if times is None else check_times(times, time, train)
    return chosen, default_brier_times(time, event, train=train)


def default_brier_times(time: Sequence[float], event: Sequence[int], n: int = 20,
                        train: Any = None) -> np.ndarray:
    """Evaluation grid for the integrated Brier score: ``n`` points between the 10th and 90th percentile
    of the observed event times (outside that range too few samples remain at risk to weigh), those inside
    :func:`evaluable_range`."""
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    if len(time) == 0:
        return np.array([])
    ev = time[event == 1] if event.sum() >= 2 else time
    lo, hi = np.quantile(ev, [0.1, 0.9])
    if not hi > lo:
        return np.array([])
    grid = np.linspace(lo, hi, n)
    first, end = evaluable_range(time, train)
    return grid[(grid >= first) & (grid < end)]


def _targets(time: Sequence[float], event: Sequence[int], train: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` structured arrays for sksurv: the evaluated samples after the last training time
    censored there (module docstring); the evaluated samples serve as ``train`` when it is None."""
    from sksurv.util import Surv

    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int) == 1
    if train is None:
        test = Surv.from_arrays(event, time)
        return test, test
    train = as_structured(train)
    end = float(train["time"].max())
    # an event at the end itself only counts at t >= end, never evaluable, and its weight 1/G(end) can be
    # 1/0 (sksurv raises then): it is censored there too
    return train, Surv.from_arrays(event & (time < end), np.minimum(time, end))


def brier_scores(time: Sequence[float], event: Sequence[int], survival: np.ndarray, times: Sequence[float],
                 *, train: Any = None) -> np.ndarray:
    """IPCW Brier score at each of ``times`` (Graf et al. 1999; ``sksurv.metrics.brier_score``).

    Args:
        time, event: ``[n]`` observed times and event indicators of the evaluated samples.
        survival: ``[n, m]`` predicted S(t) of each sample at each of the m ``times``.
        times: ``[m]`` increasing evaluation times, inside :func:`evaluable_range` (else ValueError).
        train: the training targets for the censoring weights (see :func:`as_structured`); None: the
            evaluated samples.

    Returns:
        ``[m]`` Brier scores.
    """
    from sksurv.metrics import brier_score

    surv = np.asarray(survival, dtype=float)
    times = np.asarray(times, dtype=float)
    if surv.shape != (len(time), len(times)):
        raise ValueError(f"survival must be [n_samples={len(time)}, n_times={len(times)}], got {surv.shape}")
    if np.any(np.diff(times) <= 0):
        raise ValueError(f"times must be strictly increasing, got {times.tolist()}")
    check_times(times, time, train)
    return brier_score(*_targets(time, event, train), surv, times)[1]


def integrated_brier_score(time: Sequence[float], event: Sequence[int], survival: np.ndarray,
                           times: Sequence[float], *, train: Any = None) -> float:
    """Integrated IPCW Brier score over ``times`` (``sksurv.metrics.integrated_brier_score``: trapezoid rule
    divided by the time span).

    Lower is better; 0.25 is what S(t) = 0.5 everywhere scores without censoring. Needs at least two
    evaluation times; ``nan`` for no samples. Arguments as :func:`brier_scores`.
    """
    from sksurv.metrics import integrated_brier_score as ibs

    times = np.asarray(times, dtype=float)
    if len(time) == 0:
        return float("nan")
    if len(times) < 2 or np.any(np.diff(times) <= 0):
        raise ValueError(f"times must be at least two strictly increasing values, got {times.tolist()}")
    check_times(times, time, train)
    return float(ibs(*_targets(time, event, train), np.asarray(survival, dtype=float), times))


def cumulative_dynamic_auc(time: Sequence[float], event: Sequence[int], risk: np.ndarray,
                           times: Sequence[float], *, train: Any = None) -> tuple[np.ndarray, float]:
    """Cumulative/dynamic AUC at each of ``times`` and its mean (``sksurv.metrics.cumulative_dynamic_auc``).

    The AUC at t separates the samples with an event by t (IPCW-weighted) from those still event-free after
    t; the mean weighs each time by the drop of the evaluated samples' Kaplan-Meier curve there.

    Args:
        time, event: ``[n]`` targets of the evaluated samples.
        risk: ``[n]`` risk score, or ``[n, m]`` risk at each time (e.g. ``1 - S(t)``); higher = worse.
        times: ``[m]`` increasing times inside :func:`evaluable_range`; train: as :func:`brier_scores`.

    Returns:
        ``([m] AUCs, mean AUC)``; ``nan`` at a time with no event before it or no sample after it.
    """
    from sksurv.metrics import cumulative_dynamic_auc as cd_auc

    times = check_times(times, time, train)
    train, test = _targets(time, event, train)
    risk = np.asarray(risk, dtype=float)
    # sksurv divides by zero at a time before the first event: those AUCs are undefined (nan)
    has_case = ((test["time"][:, None] <= times[None, :]) & test["event"][:, None]).any(axis=0)
    auc = np.full(len(times), np.nan)
    if not has_case.any():
        return auc, float("nan")
    auc[has_case], mean = cd_auc(train, test, risk[:, has_case] if risk.ndim == 2 else risk, times[has_case])
    return auc, float(mean)


def km_censoring(time: Sequence[float], event: Sequence[int]) -> dict[str, list[float]]:
    """Kaplan-Meier estimate of the censoring survival G(t) = P(C > t) (scikit-survival's, as the IPCW
    metrics use it), as a step function ``{"times": [...], "survival": [...]}`` (right-continuous; G = 1
    before the first time)."""
    from sksurv.nonparametric import CensoringDistributionEstimator

    est = CensoringDistributionEstimator().fit(as_structured((time, event)))
    keep = np.isfinite(est.unique_time_)
    return {"times": est.unique_time_[keep].tolist(), "survival": est.prob_[keep].tolist()}
