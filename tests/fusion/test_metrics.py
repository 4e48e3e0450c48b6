"""Metrics: AUC (binary, macro OvR), balanced accuracy, c-index, IPCW Brier score, per-pattern grouping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from clinfuse.fusion import metrics as M
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score


def test_binary_auc_matches_sklearn_and_uses_the_second_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p1 = np.clip(y * 0.3 + rng.random(40) * 0.7, 0, 1)
    proba = pd.DataFrame({0: 1 - p1, 1: p1})
    assert M.roc_auc(y, proba) == pytest.approx(roc_auc_score(y, p1))
    # String labels and int class columns still match (labels come back from CSV as text).
    assert M.roc_auc([str(v) for v in y], proba) == pytest.approx(roc_auc_score(y, p1))


def test_multiclass_auc_is_macro_one_vs_rest():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frame = pd.DataFrame(proba, columns=["a", "b", "c"])
    labels = np.array(["a", "b", "c"])[y]
    expected = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert M.roc_auc(labels, frame) == pytest.approx(expected)


def test_auc_with_one_class_is_nan_and_shape_errors_are_clear():
    assert np.isnan(M.roc_auc([1, 1, 1], pd.DataFrame({0: [0.2, 0.3, 0.1], 1: [0.8, 0.7, 0.9]})))
    with pytest.raises(ValueError, match="n_samples=2"):
        M.roc_auc([0, 1], np.ones((3, 2)), classes=[0, 1])


def test_balanced_accuracy_is_mean_recall():
    assert M.balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx((2 / 3 + 1) / 2)


def test_c_index_orders_and_handles_degenerate_cases():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    event = np.array([1, 1, 1, 0, 1])
    assert M.concordance_index(time, event, -time) == pytest.approx(1.0)  # short time = high risk
    assert M.concordance_index(time, event, time) == pytest.approx(0.0)
    assert np.isnan(M.concordance_index(time, np.zeros(5), -time))
    with pytest.raises(ValueError, match="NaN"):
        M.concordance_index(time, event, [np.nan, 1, 2, 3, 4])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.1, 100), min_size=4, max_size=20), st.integers(0, 10_000))
def test_c_index_is_in_unit_range_and_invariant_to_monotone_transforms(times, seed):
    rng = np.random.default_rng(seed)
    event = rng.integers(0, 2, len(times))
    event[0] = 1
    risk = rng.normal(size=len(times))
    c = M.concordance_index(times, event, risk)
    if not np.isnan(c):
        assert 0.0 <= c <= 1.0
        assert M.concordance_index(times, event, np.exp(risk) * 3 + 1) == pytest.approx(c)


def test_brier_without_censoring_matches_known_values():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4, dtype=int)
    times = np.array([1.5, 2.5, 3.5])
    half = np.full((4, 3), 0.5)
    assert M.brier_scores(time, event, half, times) == pytest.approx([0.25, 0.25, 0.25])
    perfect = (time[:, None] > times[None, :]).astype(float)  # S_i(t) = 1 until the event, then 0
    assert M.integrated_brier_score(time, event, perfect, times) == pytest.approx(0.0)
    assert M.integrated_brier_score(time, event, half, times) == pytest.approx(0.25)


def test_brier_weights_by_inverse_probability_of_censoring():
    # Sample 2 is censored at t=2: G(t) = 1 before 2, 2/3 from 2 on (3 of 4 samples at risk at t=2, one
    # censored). At t=3: sample 1 died before (weight 1/G(1-) = 1), sample 2 is dropped, samples 3 and 4
    # are alive (weight 1/G(3) = 3/2).
    time = np.array([1.0, 2.0, 4.0, 5.0])
    event = np.array([1, 0, 1, 1])
    s = np.array([[0.2], [0.6], [0.7], [0.9]])
    expected = (0.2**2 * 1.0 + 0 + (1 - 0.7) ** 2 * 1.5 + (1 - 0.9) ** 2 * 1.5) / 4
    assert M.brier_scores(time, event, s, [3.0])[0] == pytest.approx(expected)
    # the same weights given as the training targets (what a fitted model passes: its follow-up)
    assert M.brier_scores(time, event, s, [3.0], train=(time, event))[0] == pytest.approx(expected)


def test_integrated_brier_needs_increasing_times():
    with pytest.raises(ValueError, match="increasing"):
        M.integrated_brier_score([1, 2], [1, 1], np.ones((2, 2)), [2.0, 1.0])


def test_survival_metrics_and_patterns():
    presence = pd.DataFrame({"clinical": [True, True, False, True], "images": [True, False, True, True]},
                            index=["a", "b", "c", "d"])
    assert M.pattern_names(presence).tolist() == ["clinical+images", "clinical", "images", "clinical+images"]
    got = M.metrics_by_pattern(presence, lambda ids: {"n": len(ids)})
    assert got == {"clinical": {"n": 1}, "clinical+images": {"n": 2}, "images": {"n": 1}}
    out = M.survival_metrics([1, 2, 3], [1, 1, 0], [3, 2, 1])
    assert out["c_index"] == pytest.approx(1.0) and out["n"] == 3 and out["n_events"] == 2


def _exponential(n: int, seed: int):
    rng = np.random.default_rng(seed)
    rate = 0.1 * np.exp(rng.normal(size=n))
    t, c = rng.exponential(1 / rate), rng.exponential(20.0, n)
    return np.minimum(t, c), (t <= c).astype(int), rate


def test_survival_metrics_at_chosen_times_match_scikit_survival():
    from sksurv.metrics import cumulative_dynamic_auc, integrated_brier_score
    from sksurv.util import Surv

    time, event, rate = _exponential(120, seed=0)
    train_t, train_e, _ = _exponential(200, seed=1)
    grid = np.linspace(2.0, 12.0, 6)
    frame = pd.DataFrame(np.exp(-np.outer(rate, grid)), columns=list(grid))
    out = M.survival_metrics(time, event, rate, frame, times=grid[[1, 3]], train=(train_t, train_e))
    keys = [f"auc@{grid[1]:g}", f"auc@{grid[3]:g}"]
    y_train = Surv.from_arrays(train_e == 1, train_t)
    y_test = Surv.from_arrays(event == 1, np.minimum(time, train_t.max()))
    at = grid[[1, 3]]
    auc, mean = cumulative_dynamic_auc(y_train, y_test, 1 - frame[list(at)].to_numpy(), at)
    assert [out[k] for k in keys] == pytest.approx(auc.tolist()) and out["mean_auc"] == pytest.approx(mean)
    assert out["integrated_brier_score"] == pytest.approx(
        integrated_brier_score(y_train, y_test, frame.to_numpy(), grid))
    assert 0 <= out[f"calibration_error@{grid[1]:g}"] < 0.1  # the true S(t)
    assert out["n"] == 120 and out["n_events"] == int(event.sum())
    with pytest.raises(ValueError, match="lie outside"):
        M.survival_metrics(time, event, rate, frame.assign(**{"1000.0": 0.5}).rename(columns=float),
                           train=(train_t, train_e))


def test_evaluate_survival_is_strict_overall_and_nan_for_a_pattern_too_short():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    event = np.array([1, 1, 0, 1, 1, 1, 0, 1])
    ids = [f"s{i}" for i in range(8)]
    targets = pd.DataFrame({"time": time, "event": event}, index=ids)
    presence = pd.DataFrame({"clinical": [True] * 8, "images": [False, False] + [True] * 6}, index=ids)
    surv = pd.DataFrame({2.5: np.linspace(0.5, 0.9, 8), 5.5: np.linspace(0.2, 0.7, 8)}, index=ids)
    risk = pd.Series(-time, index=ids)
    out = M.evaluate_survival(targets, risk, surv, presence)
    assert out["auc@2.5"] == pytest.approx(1.0)
    # the clinical-only pattern (observed at 1 and 2) has no follow-up at 2.5 or 5.5: nan, not an error
    short = out["by_pattern"]["clinical"]
    assert np.isnan(short["brier@2.5"]) and np.isnan(short["auc@5.5"]) and short["n"] == 2
    with pytest.raises(ValueError, match=r"times \[8\.0\]"):
        M.evaluate_survival(targets, risk, surv.assign(**{"8": 0.1}).rename(columns=float), presence)
