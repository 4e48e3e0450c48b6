"""``cross_validate``: grouped, stratified k-fold evaluation with preprocessing fitted inside each fold."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from . import ipcw_metrics
from . import metrics as M
from .predictions import prediction_frame


@dataclass
class CVResult:
    """What :func:`cross_validate` returns.

    Attributes:
        metrics: one row per fold (columns ``fold``, ``repeat``, ``n_train``, ``n_test`` and every metric of
            ``FusionModel.evaluate`` except the per-pattern ones).
        oof: out-of-fold predictions, one row per (repeat, test sample): ``sample_id``, ``repeat``, ``fold``
            and ``proba_<class>`` columns (classification) or ``risk`` (survival), plus the targets.
        splits: the ``(train_ids, test_ids)`` pairs used, in fold order.
        by_pattern: one row per (fold, missingness pattern) with that pattern's metrics.
        tuned: with ``tune=``, each fold's :class:`~clinfuse.fusion.tuning.TuneResult` (tuned on that fold's
            training samples only), in fold order; empty otherwise.
    """

    metrics: pd.DataFrame
    oof: pd.DataFrame
    splits: list[tuple[list[str], list[str]]]
    by_pattern: pd.DataFrame = field(default_factory=pd.DataFrame)
    tuned: list[Any] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """Mean, standard deviation and count of every numeric metric over the folds."""
        cols = [c for c in self.metrics.columns if c not in ("fold", "repeat", "n_train", "n_test")
                and pd.api.types.is_numeric_dtype(self.metrics[c])]
        return self.metrics[cols].agg(["mean", "std", "count"]).T

    def __repr__(self) -> str:
        return f"CVResult({len(self.splits)} folds)\n{self.summary().to_string(float_format='{:.3f}'.format)}"


def _fold_predictions(model: Any, test: Any, repeat: int, fold: int) -> pd.DataFrame:
    frame = prediction_frame(model, test, survival_curves=False, pattern=False)
    frame.insert(0, "fold", fold)
    frame.insert(0, "repeat", repeat)
    return frame.reset_index()


_TUNE_KEYS = ("n_trials", "folds", "space", "seed")


def _check_tune(tune: Any) -> dict[str, Any]:
    if not isinstance(tune, dict):
        raise TypeError(f"tune must be a dict of tune() keywords {_TUNE_KEYS}, got {type(tune).__name__}")
    unknown = sorted(set(tune) - set(_TUNE_KEYS))
    if unknown:
        raise ValueError(f"tune: unknown keys {unknown}; expected some of {_TUNE_KEYS}")
    return dict(tune)


def fold_times(cohort: Any, splits: list[tuple[Any, Any]], times: Any = None) -> np.ndarray:
    """Survival evaluation times shared by every fold, checked before any fit.

    ``times`` given: each must lie inside every fold's evaluable follow-up (from the fold's first test time
    to its last test or training time, excluded), else a ValueError naming the fold and the times. None:
    the quartiles of the whole cohort's event times inside the range every fold can evaluate (evaluation
    points only; nothing is fitted on them).
    """
    surv = cohort.survival
    ranges = []
    for i, (train_ids, test_ids) in enumerate(splits):
        train, test = surv.loc[list(train_ids)], surv.loc[list(test_ids)]["time"]
        if times is not None:
            try:
                ipcw_metrics.check_times(times, test, train)
            except ValueError as exc:
                raise ValueError(f"cross_validate fold {i}: {exc}") from None
        ranges.append(ipcw_metrics.evaluable_range(test, train))
    if times is not None:
        return np.sort(np.asarray(times, dtype=float).reshape(-1))
    within = (max(r[0] for r in ranges), min(r[1] for r in ranges))
    return ipcw_metrics.default_times(surv["time"], surv["event"], within=within)


def cross_validate(model: Any, cohort: Any, folds: Any = 5, *, seed: int = 0, repeats: int = 1,
                   tune: dict[str, Any] | None = None, times: Any = None) -> CVResult:
    """Fit a clone of ``model`` on each training fold and evaluate it on the matching test fold.

    Args:
        model: an unfitted (or fitted: it is cloned, never modified) ``FusionModel``.
        cohort: the whole cohort; each fold is a ``cohort.subset``, so the preprocessor and the early-stopping
            split only ever see that fold's training samples.
        folds: an int (stratified, grouped k-fold), a scikit-learn splitter, or explicit
            ``(train_ids, test_ids)`` pairs (validated: no patient on both sides), see ``make_splits``.
        seed: seed of the fold assignment (repeat r uses ``seed + r``).
        repeats: repeated k-fold (int ``folds`` only).
        tune: keywords of :func:`clinfuse.fusion.tune` (``n_trials``, ``folds``, ``space``, ``seed``; the
            seed defaults to ``seed``): each fold's model is tuned by inner cross-validation on that fold's
            training samples, then refitted on them, so the test fold never informs the parameters.
        times: survival only: the times of the per-time metrics (``auc@t``, ``brier@t``,
            ``calibration_error@t``), the same in every fold (default and checks: :func:`fold_times`).

    Returns:
        A :class:`CVResult`.
    """
    from ..datasets.splits import make_splits

    if not hasattr(model, "get_params") or not hasattr(model, "fit"):
        raise TypeError(f"model must be an estimator such as FusionModel, got {type(model).__name__}")
    cohort.check_fittable()
    tune_kw = None if tune is None else {"seed": seed, **_check_tune(tune)}
    splits = make_splits(cohort, folds, seed=seed, repeats=repeats)
    if getattr(model, "task", None) == "survival":
        evaluate_kw = {"times": fold_times(cohort, splits, times)}
    elif times is not None:
        raise ValueError("cross_validate: times is for survival models; this one classifies")
    else:
        evaluate_kw = {}
    n_per_repeat = max(len(splits) // max(int(repeats), 1), 1)
    rows, oof, by_pattern, tuned = [], [], [], []
    for i, (train_ids, test_ids) in enumerate(splits):
        repeat, fold = divmod(i, n_per_repeat)
        if tune_kw is None:
            fitted = clone(model).fit(cohort.subset(train_ids))
        else:
            from . import tuning  # looked up per call: optuna is optional

            tuned.append(tuning.tune(model, cohort.subset(train_ids), **tune_kw))
            fitted = tuned[-1].best_model_
        test = cohort.subset(test_ids)
        result = fitted.evaluate(test, **evaluate_kw)
        patterns = result.pop("by_pattern", {})
        rows.append({"repeat": repeat, "fold": fold, "n_train": len(train_ids), "n_test": len(test_ids),
                     **{k: v for k, v in result.items() if np.isscalar(v)}})
        for name, values in patterns.items():
            by_pattern.append({"repeat": repeat, "fold": fold, "pattern": name, **values})
        oof.append(_fold_predictions(fitted, test, repeat, fold))
    return CVResult(metrics=pd.DataFrame(rows), oof=pd.concat(oof, ignore_index=True),
                    splits=[(list(tr), list(te)) for tr, te in splits], by_pattern=pd.DataFrame(by_pattern),
                    tuned=tuned)


def pooled_metrics(cv: CVResult) -> dict[str, float]:
    """Metrics of the pooled out-of-fold predictions of each repeat, averaged over repeats (the c-index of
    pooled risks mixes folds' scales; prefer the per-fold mean for survival)."""
    out: list[dict[str, float]] = []
    for _, part in cv.oof.groupby("repeat"):
        if "risk" in part:
            out.append({"c_index": M.concordance_index(part["time"], part["event"], part["risk"])})
        else:
            proba = part[[c for c in part.columns if c.startswith("proba_")]]
            proba.columns = [c[len("proba_"):] for c in proba.columns]
            out.append({"auc": M.roc_auc(part["label"].astype(str).tolist(), proba)})
    return pd.DataFrame(out).mean().to_dict()
