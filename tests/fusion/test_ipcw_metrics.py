"""IPCW survival metrics (scikit-survival): Brier score, integrated Brier score, cumulative/dynamic AUC, the
follow-up life table and the rule at the end of the training follow-up."""

from __future__ import annotations

import numpy as np
import pytest
from clinfuse.fusion import ipcw_metrics as S
from lifelines import KaplanMeierFitter


def _censored_cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t, c = rng.exponential(10.0, n), rng.exponential(15.0, n)
    return np.minimum(t, c), (t <= c).astype(int)  # continuous times: no ties


def test_brier_of_the_kaplan_meier_prediction_is_s_times_one_minus_s():
    # A constant prediction S(t) = KM(t): with the IPCW weights of the same samples (no ties), the weighted
    # share of events by t is 1 - KM(t) and of samples alive after t is KM(t), so BS(t) = KM(t)(1 - KM(t)).
    time, event = _censored_cohort(300, seed=1)
    times = np.array([3.0, 8.0, 15.0])
    km = KaplanMeierFitter().fit(time, event).survival_function_at_times(times).to_numpy()
    got = S.brier_scores(time, event, np.tile(km, (len(time), 1)), times)
    np.testing.assert_allclose(got, km * (1 - km), rtol=1e-9)


def test_brier_without_censoring_is_the_plain_mean_square_error():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    event = np.ones(5, dtype=int)
    s = np.array([[0.9], [0.8], [0.4], [0.3], [0.2]])
    dead = (time <= 2.5).astype(float)  # at t = 2.5: samples 1 and 2 had their event
    assert S.brier_scores(time, event, s, [2.5])[0] == pytest.approx(np.mean((s[:, 0] - (1 - dead)) ** 2))


def test_censoring_weights_come_from_the_training_targets():
    # Training: one censoring at t=2 among the 3 at risk there -> G = 2/3 from 2 on. Test: nobody
    # censored, so on its own G = 1. A sample alive at t=3 weighs 1/G(3): 3/2 with the training weights.
    train = (np.array([1.0, 2.0, 6.0, 7.0]), np.array([1, 0, 1, 1]))
    time, event = np.array([1.5, 4.0, 5.0]), np.array([1, 1, 1])
    s = np.array([[0.2], [0.7], [0.9]])
    square = np.array([0.2**2, 0.3**2, 0.1**2])
    assert S.brier_scores(time, event, s, [3.0], train=train)[0] == pytest.approx(
        (square[0] + (square[1] + square[2]) * 3 / 2) / 3)
    assert S.brier_scores(time, event, s, [3.0])[0] == pytest.approx(square.mean())
    # every form of the training targets gives the same weights
    from sksurv.util import Surv
    for form in (S.follow_up(*train), Surv.from_arrays(train[1] == 1, train[0])):
        assert S.brier_scores(time, event, s, [3.0], train=form)[0] == pytest.approx(
            S.brier_scores(time, event, s, [3.0], train=train)[0])


def test_integrated_brier_score_integrates_the_brier_curve():
    time, event = _censored_cohort(200, seed=2)
    times = np.linspace(2.0, 12.0, 11)
    surv = np.exp(-times[None, :] / 10.0) * np.ones((len(time), 1))
    bs = S.brier_scores(time, event, surv, times)
    assert S.integrated_brier_score(time, event, surv, times) == pytest.approx(
        np.trapezoid(bs, times) / (times[-1] - times[0]))
    with pytest.raises(ValueError, match="increasing"):
        S.integrated_brier_score(time, event, surv[:, ::-1], times[::-1])


def test_a_perfectly_ranked_risk_has_auc_one_and_the_reverse_zero():
    time, event = _censored_cohort(100, seed=3)
    times = np.quantile(time[event == 1], [0.25, 0.5, 0.75])
    auc, mean = S.cumulative_dynamic_auc(time, event, -time, times)  # earlier event = higher risk
    np.testing.assert_allclose(auc, 1.0)
    assert mean == pytest.approx(1.0)
    auc, _ = S.cumulative_dynamic_auc(time, event, time, times)
    np.testing.assert_allclose(auc, 0.0)
    # before the first event there is no case: undefined, not a number made up
    first = time[event == 1].min()
    auc, _ = S.cumulative_dynamic_auc(time, event, -time, [time.min(), first + 1e-9])
    assert np.isnan(auc[0]) and auc[1] == pytest.approx(1.0)


def test_times_beyond_the_follow_up_are_refused_with_their_values():
    train = (np.array([1.0, 3.0, 5.0, 8.0]), np.array([1, 0, 1, 0]))
    time, event = np.array([0.5, 2.0, 4.0, 12.0]), np.array([1, 1, 0, 1])
    assert S.evaluable_range(time, train) == (0.5, 8.0)  # the training follow-up ends first
    surv = np.full((4, 2), 0.5)
    with pytest.raises(ValueError,
                       match=r"times \[8\.0, 9\.5\] lie outside .*\[0\.5, 8\).*last training time"):
        S.brier_scores(time, event, surv, [8.0, 9.5], train=train)
    with pytest.raises(ValueError, match=r"times \[0\.1\]"):
        S.cumulative_dynamic_auc(time, event, np.zeros(4), [0.1], train=train)


def test_a_test_sample_after_the_training_follow_up_is_censored_at_its_end():
    # sksurv itself refuses a test time past the last training time; here the sample observed at 12
    # counts as event-free and under observation at every evaluable t, wherever after 8 it ended.
    from sksurv.metrics import brier_score
    from sksurv.util import Surv

    train = (np.array([1.0, 3.0, 5.0, 8.0]), np.array([1, 0, 1, 1]))  # G = 2/3 from 3 on, never 0
    event = np.array([1, 1, 0, 1])
    surv = np.array([[0.3], [0.6], [0.8], [0.9]])
    with pytest.raises(ValueError, match="smaller than largest observed time"):
        brier_score(Surv.from_arrays(train[1] == 1, train[0]),
                    Surv.from_arrays(event == 1, np.array([0.5, 2.0, 4.0, 12.0])), surv, [4.5])
    at_12 = S.brier_scores(np.array([0.5, 2.0, 4.0, 12.0]), event, surv, [4.5], train=train)
    at_40 = S.brier_scores(np.array([0.5, 2.0, 4.0, 40.0]), event, surv, [4.5], train=train)
    # at t=4.5: samples 1, 2 had events (G(0.5) = 1, G(2) = 1); sample 4 alive, weight 1/G(4.5) = 3/2
    assert at_12[0] == pytest.approx((0.3**2 + 0.6**2 + 0.1**2 * 1.5) / 4)
    assert at_40[0] == pytest.approx(at_12[0])


def test_follow_up_life_table_and_censoring_curve():
    table = S.follow_up([2.0, 1.0, 2.0, 4.0, 4.0], [1, 1, 0, 0, 1])
    assert table == {"time": [1.0, 2.0, 4.0], "n_events": [1, 1, 1], "n_censored": [0, 1, 1]}
    rebuilt = S.as_structured(table)
    assert sorted(zip(rebuilt["time"], rebuilt["event"])) == sorted(
        zip([2.0, 1.0, 2.0, 4.0, 4.0], [True, True, False, False, True]))
    # G drops at the censoring at 2 among the 3 at risk there less the event at 2 (events first): 1 - 1/2
    curve = S.km_censoring([1.0, 2.0, 2.0, 5.0], [1, 1, 0, 1])
    assert curve["times"] == [1.0, 2.0, 5.0] and curve["survival"] == pytest.approx([1.0, 0.5, 0.5])
    with pytest.raises(TypeError, match="train must be"):
        S.as_structured("times")


def test_default_times_are_event_quartiles_inside_the_follow_up():
    time = np.arange(1.0, 13.0)
    event = np.ones(12, dtype=int)
    assert S.default_times(time, event).tolist() == [3.0, 6.0, 8.0]  # of 1..11: 12 ends it
    train = (np.arange(1.0, 7.0), np.ones(6, dtype=int))  # training follow-up ends at 6
    assert S.default_times(time, event, train).tolist() == [2.0, 3.0, 4.0]
    assert len(S.default_times(time, np.zeros(12, dtype=int))) == 0
