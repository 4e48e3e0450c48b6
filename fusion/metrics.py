"""Metrics of the estimator: AUC, balanced accuracy, c-index; for survival also time-dependent AUC, IPCW
Brier scores and calibration (scikit-survival, :mod:`.ipcw_metrics`, :mod:`.survival_calibration`); per
missingness pattern.

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

from . import ipcw_metrics as S
from .ipcw_metrics import brier_scores, default_brier_times, integrated_brier_score, km_censoring
from .survival_calibration import calibration_error, calibration_table

__all__ = [
    "balanced_accuracy",
    "breslow_baseline",
    "brier_scores",
    "calibration_error",
    "calibration_table",
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


def classification_metrics(y_true: Sequence, proba: pd.DataFrame) -> dict[str, float]:
    """``auc`` (binary, or macro one-vs-rest), ``balanced_accuracy`` (arg-max label) and ``n``."""
    y_true = list(y_true)
    pred = proba.columns.to_numpy()[np.argmax(proba.to_numpy(dtype=float), axis=1)] if len(proba) else []
    return {"auc": roc_auc(y_true, proba), "balanced_accuracy": balanced_accuracy(y_true, pred),
            "n": len(y_true)}


def _time_keys(times: np.ndarray) -> list[str]:
    keys = [f"{t:g}" for t in times]
    return keys if len(set(keys)) == len(keys) else [repr(float(t)) for t in times]


def survival_metrics(
    time: Sequence[float], event: Sequence[int], risk: Sequence[float],
    survival: pd.DataFrame | None = None, *, times: Sequence[float] | None = None,
    ibs_times: Sequence[float] | None = None, train: Any = None, n_groups: int | None = None,
) -> dict[str, float]:
    """Survival metrics of predictions: discrimination, IPCW Brier scores and calibration (scikit-survival).

    Keys: ``c_index`` (Harrell's, lifelines); with ``survival``, at each of ``times`` (key suffix
    ``@<t>``, e.g. ``auc@12``): ``auc@t`` (cumulative/dynamic AUC of ``1 - S(t)``), ``brier@t`` and
    ``calibration_error@t`` (:mod:`.survival_calibration`), then ``mean_auc`` (the AUCs weighted by the
    drop of the samples' Kaplan-Meier curve at each time), ``integrated_brier_score`` (over ``ibs_times``);
    and ``n``, ``n_events``, ``n_after_follow_up`` (samples observed after the last training time, counted
    as censored there: see :mod:`.ipcw_metrics`). An undefined metric is ``nan``.

    Args:
        time, event: ``[n]`` observed times and event indicators (1 = event).
        risk: ``[n]`` risk scores (higher = worse).
        survival: predicted S(t), ``[n]`` rows (same order) x evaluation-time columns.
        times: the columns to report per time (default: all of them); each inside the evaluable follow-up
            (:func:`~.ipcw_metrics.check_times`, else ValueError naming it).
        ibs_times: the columns the integrated Brier score integrates over (default: all of them).
        train: the training targets whose censoring distribution gives the IPCW weights (a DataFrame with
            ``time``/``event``, a ``(time, event)`` pair, a structured array or a fitted model's
            ``follow_up_``); None: the evaluated samples themselves.
        n_groups: calibration groups per time (default: groups of at least 10 samples, at most 5).
    """
    return _survival_metrics(time, event, risk, survival, times=times, ibs_times=ibs_times, train=train,
                             n_groups=n_groups, strict=True)


def _survival_metrics(time, event, risk, survival, *, times, ibs_times, train, n_groups,
                      strict: bool) -> dict[str, float]:
    """:func:`survival_metrics`; ``strict=False`` (subgroups) gives ``nan`` at times outside the samples'
    evaluable follow-up instead of raising."""
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    risk = np.asarray(risk, dtype=float)
    out = {"c_index": concordance_index(time, event, risk)}
    n_after = 0
    if survival is not None:
        columns = np.asarray(survival.columns, dtype=float)
        times = columns if times is None else np.asarray(times, dtype=float).reshape(-1)
        grid = columns if ibs_times is None else np.asarray(ibs_times, dtype=float).reshape(-1)
        if strict and len(times):
            S.check_times(times, time, train)
        lo, hi = S.evaluable_range(time, train)
        ok = (times >= lo) & (times < hi) & (event.sum() > 0)
        auc, brier, calib = (np.full(len(times), np.nan) for _ in range(3))
        mean_auc = float("nan")
        frame = survival.set_axis(columns, axis=1)
        if ok.any():
            at = frame[times[ok]].to_numpy(dtype=float)
            auc[ok], mean_auc = S.cumulative_dynamic_auc(time, event, 1.0 - at, times[ok], train=train)
            brier[ok] = S.brier_scores(time, event, at, times[ok], train=train)
            calib[ok] = calibration_error(time, event, at, times[ok], n_groups=n_groups)
        keys = _time_keys(times)
        for name, values in (("auc", auc), ("brier", brier), ("calibration_error", calib)):
            out.update({f"{name}@{k}": float(v) for k, v in zip(keys, values)})
        out["mean_auc"] = mean_auc
        grid = np.sort(grid[(grid >= lo) & (grid < hi)])
        out["integrated_brier_score"] = (
            S.integrated_brier_score(time, event, frame[grid].to_numpy(dtype=float), grid, train=train)
            if len(grid) >= 2 and event.sum() > 0 else float("nan"))
        if train is not None:
            n_after = int((time > S.as_structured(train)["time"].max()).sum())
    out["n"] = len(time)
    out["n_events"] = int(event.sum())
    out["n_after_follow_up"] = n_after
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
                      presence: pd.DataFrame, *, times: Sequence[float] | None = None,
                      ibs_times: Sequence[float] | None = None, train: Any = None,
                      n_groups: int | None = None) -> dict[str, Any]:
    """:func:`survival_metrics` of every sample, and per missingness pattern (``by_pattern``).

    A time outside the evaluable follow-up of all the samples is a ValueError; outside that of a pattern's
    samples only, that pattern's metrics at it are ``nan``.

    Args:
        targets: ``time`` and ``event`` columns, indexed by sample id.
        risk: ``[n]`` predicted risk (higher = worse), same index.
        survival: predicted S(t), samples x evaluation times (None: c-index only).
        presence: ``[n, M]`` bool, which modalities each sample has, same index.
        times, ibs_times, train, n_groups: as :func:`survival_metrics`.
    """

    def compute(ids: pd.Index, strict: bool = False) -> dict[str, float]:
        part = targets.loc[ids]
        return _survival_metrics(part["time"], part["event"], risk.loc[ids],
                                 None if survival is None else survival.loc[ids], times=times,
                                 ibs_times=ibs_times, train=train, n_groups=n_groups, strict=strict)

    return {**compute(targets.index, strict=True), "by_pattern": metrics_by_pattern(presence, compute)}
