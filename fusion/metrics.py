"""Metrics of the estimator: AUC, balanced accuracy, c-index, IPCW integrated Brier score, per missingness
pattern.

Every function takes plain arrays / pandas objects and returns floats, so the same code scores a fitted
model (``FusionModel.evaluate``), the out-of-fold predictions of ``cross_validate`` and the baselines of the
benchmarks. A metric that is undefined on the given samples (one class only, no comparable pair, no event)
is ``nan``, never a made-up number.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

__all__ = [
    "balanced_accuracy",
    "breslow_baseline",
    "brier_scores",
    "classification_metrics",
    "concordance_index",
    "default_brier_times",
    "evaluate_classification",
    "evaluate_survival",
    "integrated_brier_score",
    "km_censoring",
    "metrics_by_pattern",
    "pattern_names",
    "roc_auc",
    "survival_metrics",
]


def roc_auc(y_true: Sequence, proba: pd.DataFrame | np.ndarray, classes: Sequence | None = None) -> float:
    """Area under the ROC curve: binary, or macro one-vs-rest for more than two classes.

    Args:
        y_true: ``[n]`` labels (values of ``classes``).
        proba: ``[n, C]`` class probabilities; a DataFrame's columns are the classes.
        classes: the C class labels in column order (taken from ``proba.columns`` for a DataFrame).

    Returns:
        The AUC, or ``nan`` when fewer than two classes occur in ``y_true``.
    """
    if isinstance(proba, pd.DataFrame):
        classes = list(proba.columns) if classes is None else list(classes)
        proba = proba.to_numpy(dtype=float)
    proba = np.asarray(proba, dtype=float)
    if classes is None:
        raise ValueError("roc_auc needs `classes` when `proba` is not a DataFrame")
    classes = [str(c) for c in classes]
    y = np.asarray([str(v) for v in y_true], dtype=object)
    if proba.ndim != 2 or proba.shape != (len(y), len(classes)):
        raise ValueError(f"proba must be [n_samples={len(y)}, n_classes={len(classes)}], got {proba.shape}")
    if len(set(y.tolist())) < 2:
        return float("nan")
    if len(classes) == 2:
        return float(roc_auc_score(y == classes[1], proba[:, 1]))
    # Macro one-vs-rest over the classes that occur, each against the rest (sklearn's 'ovr' needs every
    # class present and rows summing to 1; doing it by hand keeps folds with a missing class defined).
    aucs = [roc_auc_score(y == c, proba[:, k]) for k, c in enumerate(classes) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def balanced_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Mean per-class recall (sklearn's ``balanced_accuracy_score``); ``nan`` for no samples."""
    y_true, y_pred = list(y_true), list(y_pred)
    if not y_true:
        return float("nan")
    # Compare labels as strings: object arrays of ints confuse sklearn's target-type detection, and a
    # label read back from JSON or CSV must still match its class.
    with warnings.catch_warnings():  # one class in a small subgroup is expected (per-pattern metrics)
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score([str(v) for v in y_true], [str(v) for v in y_pred]))


def concordance_index(time: Sequence[float], event: Sequence[int], risk: Sequence[float]) -> float:
    """Harrell's c-index (lifelines) of a risk score (higher = worse); ``nan`` without a comparable pair."""
    from lifelines.utils import concordance_index as _cindex

    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    if len(time) < 2 or event.sum() == 0:
        return float("nan")
    if not np.isfinite(risk).all():
        raise ValueError("risk scores contain NaN or infinite values")
    try:
        # lifelines scores "higher = longer survival", so the risk is negated.
        return float(_cindex(time, -risk, event))
    except ZeroDivisionError:  # no admissible pairs (e.g. every event tied with every other time)
        return float("nan")


def km_censoring(time: Sequence[float], event: Sequence[int]) -> dict[str, list[float]]:
    """Kaplan-Meier estimate of the censoring survival G(t) = P(C > t) (lifelines), as a step function
    ``{"times": [...], "survival": [...]}`` (right-continuous; G = 1 before the first time)."""
    from lifelines import KaplanMeierFitter

    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    km = KaplanMeierFitter().fit(time, event_observed=1 - event)
    sf = km.survival_function_
    return {"times": sf.index.to_numpy(float).tolist(), "survival": sf.iloc[:, 0].to_numpy(float).tolist()}


def _step(curve: dict[str, list[float]], t: np.ndarray) -> np.ndarray:
    times, values = np.asarray(curve["times"], dtype=float), np.asarray(curve["survival"], dtype=float)
    idx = np.searchsorted(times, np.asarray(t, dtype=float), side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], 1.0)


def brier_scores(
    time: Sequence[float], event: Sequence[int], survival: np.ndarray, times: Sequence[float], *,
    censoring: dict[str, list[float]] | None = None,
) -> np.ndarray:
    """IPCW Brier score at each of ``times`` (Graf et al. 1999).

    ``BS(t) = mean_i [ S_i(t)^2 1{T_i <= t, d_i = 1} / G(T_i-) + (1 - S_i(t))^2 1{T_i > t} / G(t) ]``, with G
    the Kaplan-Meier estimate of the censoring survival: ``censoring`` (from :func:`km_censoring` of the
    training targets, as scikit-survival does) when given, else fitted on the evaluated samples.

    Args:
        time, event: ``[n]`` observed times and event indicators of the evaluated samples.
        survival: ``[n, m]`` predicted S(t) of each sample at each of the m ``times``.
        times: ``[m]`` increasing evaluation times.

    Returns:
        ``[m]`` Brier scores.
    """
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=float)
    times = np.asarray(times, dtype=float)
    surv = np.asarray(survival, dtype=float)
    if surv.shape != (len(time), len(times)):
        raise ValueError(f"survival must be [n_samples={len(time)}, n_times={len(times)}], got {surv.shape}")
    curve = km_censoring(time, event) if censoring is None else censoring
    floor = 1e-8  # G can reach 0 after the last censoring; those terms then carry no finite weight
    g_before = np.maximum(_step(curve, np.nextafter(time, -np.inf)), floor)  # G(T_i-)
    g_at = np.maximum(_step(curve, times), floor)
    died = (time[:, None] <= times[None, :]) & (event[:, None] == 1)
    alive = time[:, None] > times[None, :]
    terms = surv**2 * died / g_before[:, None] + (1.0 - surv) ** 2 * alive / g_at[None, :]
    return terms.mean(axis=0)


def integrated_brier_score(
    time: Sequence[float], event: Sequence[int], survival: np.ndarray, times: Sequence[float], *,
    censoring: dict[str, list[float]] | None = None,
) -> float:
    """Integrated IPCW Brier score over ``times`` (trapezoid rule divided by the time span).

    Lower is better; 0.25 is what S(t) = 0.5 everywhere scores without censoring. Needs at least two
    evaluation times; ``nan`` for no samples.
    """
    times = np.asarray(times, dtype=float)
    if len(time) == 0:
        return float("nan")
    if len(times) < 2 or np.any(np.diff(times) <= 0):
        raise ValueError(f"times must be at least two strictly increasing values, got {times.tolist()}")
    bs = brier_scores(time, event, survival, times, censoring=censoring)
    return float(np.trapezoid(bs, times) / (times[-1] - times[0]))


def default_brier_times(time: Sequence[float], event: Sequence[int], n: int = 20) -> np.ndarray:
    """Evaluation grid for the integrated Brier score: ``n`` points between the 10th and 90th percentile
    of the observed event times (outside that range too few samples remain at risk to weigh)."""
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    ev = time[event == 1] if event.sum() >= 2 else time
    lo, hi = np.quantile(ev, [0.1, 0.9])
    if not hi > lo:
        return np.array([])
    return np.linspace(lo, hi, n)


def classification_metrics(y_true: Sequence, proba: pd.DataFrame) -> dict[str, float]:
    """``auc`` (binary, or macro one-vs-rest), ``balanced_accuracy`` (arg-max label) and ``n``."""
    y_true = list(y_true)
    pred = proba.columns.to_numpy()[np.argmax(proba.to_numpy(dtype=float), axis=1)] if len(proba) else []
    return {"auc": roc_auc(y_true, proba), "balanced_accuracy": balanced_accuracy(y_true, pred),
            "n": len(y_true)}


def survival_metrics(
    time: Sequence[float], event: Sequence[int], risk: Sequence[float],
    survival: pd.DataFrame | None = None, *, censoring: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """``c_index``, ``integrated_brier_score`` (when ``survival``, samples x times, is given), ``n``,
    ``n_events``."""
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    out = {"c_index": concordance_index(time, event, risk)}
    if survival is not None:
        times = np.asarray(survival.columns, dtype=float)
        ok = len(times) >= 2 and len(time) > 0 and event.sum() > 0
        out["integrated_brier_score"] = (
            integrated_brier_score(time, event, survival.to_numpy(dtype=float), times,
                                   censoring=censoring) if ok else float("nan"))
    out["n"] = len(time)
    out["n_events"] = int(event.sum())
    return out


def pattern_names(presence: pd.DataFrame) -> pd.Series:
    """Missingness pattern of each sample: the modalities it has joined by ``+`` (``"none"`` if none)."""
    cols = list(presence.columns)
    values = presence.to_numpy(dtype=bool)
    names = ["+".join(c for c, p in zip(cols, row) if p) or "none" for row in values]
    return pd.Series(names, index=presence.index, name="pattern")


def metrics_by_pattern(
    presence: pd.DataFrame, compute: Callable[[pd.Index], dict[str, float]],
) -> dict[str, dict[str, float]]:
    """Apply ``compute(sample_ids)`` to the samples of each missingness pattern (sorted by pattern name)."""
    patterns = pattern_names(presence)
    return {name: compute(patterns.index[patterns == name]) for name in sorted(patterns.unique())}


def breslow_baseline(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> dict[str, list[float]]:
    """Breslow cumulative baseline hazard H0 at each distinct event time (risk = log relative hazard)."""
    e = np.exp(risk - risk.max())  # shift for stability; undone below
    times = np.unique(time[event == 1])
    cum, out = 0.0, []
    for t in times:
        d = float(((time == t) & (event == 1)).sum())
        cum += d / float(e[time >= t].sum())
        out.append(cum)
    return {"times": times.tolist(), "cumhaz": (np.asarray(out) * np.exp(-risk.max())).tolist()}


def evaluate_classification(labels: pd.Series, proba: pd.DataFrame, presence: pd.DataFrame) -> dict[str, Any]:
    """:func:`classification_metrics` of every sample, and per missingness pattern (``by_pattern``).

    Args:
        labels: ``[n]`` true labels, indexed by sample id.
        proba: ``[n, C]`` predicted class probabilities (columns: the classes), same index.
        presence: ``[n, M]`` bool, which modalities each sample has (``Cohort.presence()``), same index.
    """

    def compute(ids: pd.Index) -> dict[str, float]:
        return classification_metrics(labels.loc[ids].tolist(), proba.loc[ids])

    return {**compute(labels.index), "by_pattern": metrics_by_pattern(presence, compute)}


def evaluate_survival(targets: pd.DataFrame, risk: pd.Series, survival: pd.DataFrame | None,
                      presence: pd.DataFrame, *,
                      censoring: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """:func:`survival_metrics` of every sample, and per missingness pattern (``by_pattern``).

    Args:
        targets: ``time`` and ``event`` columns, indexed by sample id.
        risk: ``[n]`` predicted risk (higher = worse), same index.
        survival: predicted S(t), samples x evaluation times (None: no integrated Brier score).
        presence: ``[n, M]`` bool, which modalities each sample has, same index.
        censoring: the training samples' censoring curve (:func:`km_censoring`) for the IPCW weights.
    """

    def compute(ids: pd.Index) -> dict[str, float]:
        part = targets.loc[ids]
        return survival_metrics(part["time"], part["event"], risk.loc[ids],
                                None if survival is None else survival.loc[ids], censoring=censoring)

    return {**compute(targets.index), "by_pattern": metrics_by_pattern(presence, compute)}
