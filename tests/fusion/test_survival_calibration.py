"""Calibration of predicted S(t): Kaplan-Meier observed vs mean predicted per predicted-risk group."""

from __future__ import annotations

import numpy as np
import pytest
from clinfuse.fusion.survival_calibration import calibration_error, calibration_table, default_n_groups


def _exponential_cohort(n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    rate = 0.1 * np.exp(0.8 * x)
    t, c = rng.exponential(1 / rate), rng.exponential(15.0, n)
    return np.minimum(t, c), (t <= c).astype(int), rate


def test_the_true_survival_is_calibrated_and_a_shifted_one_is_not():
    time, event, rate = _exponential_cohort()
    times = np.array([3.0, 8.0, 15.0])
    true = np.exp(-np.outer(rate, times))
    good = calibration_error(time, event, true, times)
    bad = calibration_error(time, event, true**2, times)  # twice the hazard everywhere
    assert (good < 0.03).all(), good
    assert (bad > 0.1).all(), bad


def test_calibration_table_by_hand():
    # No censoring, one group: observed S(t) is the share still event-free after t.
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4, dtype=int)
    surv = np.array([[0.5], [0.6], [0.7], [0.8]])
    table = calibration_table(time, event, surv, [2.5], n_groups=1)
    assert table.to_dict("records") == [{"time": 2.5, "group": 0, "n": 4, "predicted": pytest.approx(0.65),
                                         "observed": 0.5}]
    assert calibration_error(time, event, surv, [2.5], n_groups=1) == pytest.approx([0.15])
    # two groups by predicted S: the low one (samples 1, 2) had both events by 2.5, the high one none
    two = calibration_table(time, event, surv, [2.5], n_groups=2)
    assert two["observed"].tolist() == [0.0, 1.0] and two["predicted"].tolist() == pytest.approx([0.55, 0.75])
    assert calibration_error(time, event, surv, [2.5], n_groups=2) == pytest.approx([(0.55 + 0.25) / 2])


def test_a_group_past_its_follow_up_has_no_observed_value():
    # The high group's samples were censored at 1 and 2: its S(3) is unknown, never the flat last value.
    time = np.array([1.0, 2.0, 1.5, 4.0])
    event = np.array([0, 0, 1, 1])
    surv = np.array([[0.9], [0.8], [0.2], [0.3]])
    table = calibration_table(time, event, surv, [3.0], n_groups=2)
    assert np.isnan(table["observed"].iloc[1]) and table["observed"].iloc[0] == pytest.approx(0.5)
    assert calibration_error(time, event, surv, [3.0], n_groups=2) == pytest.approx([0.25])


def test_default_groups_and_bad_input():
    assert [default_n_groups(n) for n in (5, 25, 60, 500)] == [1, 2, 5, 5]
    with pytest.raises(ValueError, match=r"n_samples=2, n_times=1"):
        calibration_table([1.0, 2.0], [1, 1], np.ones((2, 2)), [1.0])
    with pytest.raises(ValueError, match="n_groups"):
        calibration_table([1.0, 2.0], [1, 1], np.ones((2, 1)), [1.0], n_groups=0)
