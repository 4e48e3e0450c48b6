"""cross_validate: folds from an int, a splitter or explicit pairs; preprocessing inside each fold; OOF
output."""

from __future__ import annotations

import numpy as np
import pytest
from clinfuse.fusion import CVResult, FusionModel, cross_validate
from clinfuse.fusion import crossval as CV
from sklearn.model_selection import GroupKFold

FAST = {"aggregator": "concat", "d_model": 16, "n_heads": 2, "max_epochs": 1, "batch_size": 8,
        "verbose": False}


def test_int_folds_cover_every_sample_once_and_leave_the_model_unfitted(small_cohort, monkeypatch):
    fitted_on: list[set[str]] = []
    original = FusionModel.fit

    def spy(self, cohort, validation=None):
        fitted_on.append(set(cohort.sample_ids))
        return original(self, cohort, validation)

    monkeypatch.setattr(FusionModel, "fit", spy)
    model = FusionModel(**FAST)
    cv = cross_validate(model, small_cohort, folds=3, seed=0)
    assert isinstance(cv, CVResult) and not hasattr(model, "network_")
    assert len(cv.metrics) == 3 and {"auc", "balanced_accuracy", "fold", "n_test"} <= set(cv.metrics.columns)
    assert sorted(cv.oof["sample_id"]) == sorted(small_cohort.sample_ids)
    assert {"proba_0", "proba_1", "label", "prediction"} <= set(cv.oof.columns)
    for (train, test), seen in zip(cv.splits, fitted_on):
        assert not set(train) & set(test)
        assert seen == set(train)  # each fold's model (and its preprocessor) saw its training samples only
    # The OOF probabilities are those of the fold's own model.
    fold0 = cv.oof[cv.oof["fold"] == 0]
    assert set(fold0["sample_id"]) == set(cv.splits[0][1])
    assert not cv.by_pattern.empty and "pattern" in cv.by_pattern
    summary = cv.summary()
    assert summary.loc["auc", "count"] == 3


def test_explicit_pairs_and_splitters_are_used_as_given(small_cohort):
    ids = list(small_cohort.sample_ids)
    pairs = [(ids[:20], ids[20:]), (ids[10:], ids[:10])]
    cv = cross_validate(FusionModel(**FAST), small_cohort, folds=pairs)
    assert cv.splits == [(list(a), list(b)) for a, b in pairs]
    cv2 = cross_validate(FusionModel(**FAST), small_cohort, folds=GroupKFold(n_splits=2))
    assert len(cv2.splits) == 2 and sorted(cv2.oof["sample_id"]) == sorted(ids)
    with pytest.raises(ValueError):
        cross_validate(FusionModel(**FAST), small_cohort, folds=[(ids[:20], ids[15:])])  # overlap


def test_repeats_give_every_sample_once_per_repeat(small_cohort):
    cv = cross_validate(FusionModel(**FAST), small_cohort, folds=2, seed=1, repeats=2)
    assert len(cv.splits) == 4 and sorted(cv.metrics["repeat"].unique()) == [0, 1]
    counts = cv.oof.groupby("sample_id").size()
    assert (counts == 2).all() and len(counts) == len(small_cohort)
    assert cv.splits[0] != cv.splits[2]  # the second repeat reshuffles


def test_survival_cross_validation_and_pooled_metrics():
    from clinfuse.datasets import make_synthetic_cohort

    cohort, _ = make_synthetic_cohort(30, task="survival", modalities=("clinical", "genomics"),
                                      n_genes=12, seed=5)
    cv = cross_validate(FusionModel(task="survival", n_time_bins=2, **FAST), cohort, folds=2)
    assert {"c_index", "integrated_brier_score", "n_events", "mean_auc"} <= set(cv.metrics.columns)
    # the same default times (event quartiles inside every fold's follow-up) in every fold
    per_time = [c for c in cv.metrics.columns if c.startswith(("auc@", "brier@", "calibration_error@"))]
    assert len(per_time) >= 6 and cv.metrics[per_time].notna().all().all()
    assert {"auc@", "brier@"} <= {c.split("@")[0] + "@" for c in cv.summary().index}
    assert {"risk", "time", "event"} <= set(cv.oof.columns)
    pooled = CV.pooled_metrics(cv)
    assert 0 <= pooled["c_index"] <= 1 and np.isfinite(cv.metrics["c_index"]).all()


def test_cross_validation_is_reproducible(small_cohort):
    a = cross_validate(FusionModel(**FAST), small_cohort, folds=2, seed=3)
    b = cross_validate(FusionModel(**FAST), small_cohort, folds=2, seed=3)
    assert a.splits == b.splits
    assert a.metrics.equals(b.metrics) and a.oof.equals(b.oof)


def test_survival_cross_validation_at_given_times_checks_every_fold_first(monkeypatch):
    from clinfuse.datasets import make_synthetic_cohort

    cohort, _ = make_synthetic_cohort(30, task="survival", modalities=("clinical", "genomics"),
                                      n_genes=12, seed=5)
    t = float(cohort.survival["time"].median())
    model = FusionModel(task="survival", n_time_bins=2, **FAST)
    cv = cross_validate(model, cohort, folds=2, times=[t])
    assert f"brier@{t:g}" in cv.metrics and f"calibration_error@{t:g}" in cv.metrics
    monkeypatch.setattr(FusionModel, "fit",
                        lambda *a, **k: pytest.fail("fitted before the times were checked"))
    late = float(cohort.survival["time"].max())
    with pytest.raises(ValueError, match=rf"fold \d: survival metrics: times \[{late:g}"):
        cross_validate(model, cohort, folds=2, times=[t, late])
