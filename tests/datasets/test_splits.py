"""make_splits / train_validation_split: a patient is never on both sides; classes (or events) stratified."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from clinfuse.datasets import Cohort, make_splits, train_validation_split
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import GroupKFold, KFold


def make_cohort(n_patients: int = 30, *, task: str = "classification", seed: int = 0) -> Cohort:
    """1-3 samples per patient (admissions, ids ``p<patient>_a<k>``); every third patient positive."""
    rng = np.random.default_rng(seed)
    ids, groups, labels = [], [], []
    for p in range(n_patients):
        label = "pos" if p % 3 == 0 else "neg"
        for k in range(2 if p == 0 else int(rng.integers(1, 4))):  # patient p0 always has two samples
            ids.append(f"p{p}_a{k}")
            groups.append(f"p{p}")
            labels.append(label)
    clinical = pd.DataFrame({"age": rng.normal(60, 10, len(ids))}, index=ids)
    kw = {"clinical": clinical, "groups": pd.Series(groups, index=ids)}
    if task == "classification":
        kw["labels"] = pd.Series(labels, index=ids)
    elif task == "survival":
        kw["survival"] = pd.DataFrame({"time": rng.uniform(1, 50, len(ids)),
                                       "event": [int(label == "pos") for label in labels]}, index=ids)
    return Cohort(**kw)


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return make_cohort()


def assert_grouped(cohort, train, test):
    g = cohort.groups
    assert not set(g[train]) & set(g[test])
    assert not set(train) & set(test)


@pytest.mark.parametrize("task", ["classification", "survival", None])
def test_kfold_is_grouped_partitions_and_stratifies(task):
    cohort = make_cohort(task=task)
    splits = make_splits(cohort, folds=5, seed=0)
    assert len(splits) == 5
    tests = [s for _, test in splits for s in test]
    assert sorted(tests) == sorted(cohort.sample_ids)  # each sample tested exactly once
    strata = (cohort.labels if task == "classification" else
              cohort.survival["event"] if task == "survival" else pd.Series(0, index=cohort.sample_ids))
    overall = (strata == strata.iloc[0]).mean()
    for train, test in splits:
        assert_grouped(cohort, train, test)
        assert sorted(train + test) == sorted(cohort.sample_ids)
        assert train == [s for s in cohort.sample_ids if s in set(train)]  # cohort order
        assert abs((strata[test] == strata.iloc[0]).mean() - overall) < 0.2


def test_repeats_and_seeds(cohort):
    once = make_splits(cohort, 4, seed=1)
    assert once == make_splits(cohort, 4, seed=1)
    twice = make_splits(cohort, 4, seed=1, repeats=2)
    assert len(twice) == 8 and twice[:4] == once and twice[4:] != once
    assert make_splits(cohort, 4, seed=2) != once


@pytest.mark.filterwarnings("ignore:The groups parameter is ignored by KFold")
def test_sklearn_splitter_is_used_and_validated(cohort):
    splits = make_splits(cohort, GroupKFold(n_splits=3))
    assert len(splits) == 3
    for train, test in splits:
        assert_grouped(cohort, train, test)
    with pytest.raises(ValueError, match="patient"):  # KFold ignores groups: a patient lands on both sides
        make_splits(cohort, KFold(n_splits=3, shuffle=True, random_state=0))
    with pytest.raises(ValueError, match="repeats"):
        make_splits(cohort, GroupKFold(n_splits=3), repeats=2)


def test_explicit_pairs_are_validated(cohort):
    ids = cohort.sample_ids
    patients = cohort.groups
    first = [s for s in ids if patients[s] in {"p0", "p1", "p2"}]
    rest = [s for s in ids if s not in first]
    assert make_splits(cohort, [(rest, first)]) == [(rest, first)]
    with pytest.raises(ValueError, match="ghost"):
        make_splits(cohort, [(rest + ["ghost"], first)])
    with pytest.raises(ValueError, match=f"both.*{first[0]}|{first[0]}.*both"):
        make_splits(cohort, [(rest + [first[0]], first)])
    with pytest.raises(ValueError, match="p0"):  # patient p0's two samples on both sides
        make_splits(cohort, [(rest + ["p0_a0"], ["p0_a1"])])
    with pytest.raises(ValueError, match="empty"):
        make_splits(cohort, [(ids, [])])
    with pytest.raises(TypeError, match="folds"):
        make_splits(cohort, 2.5)
    with pytest.raises(ValueError, match="folds=1"):
        make_splits(cohort, 1)
    with pytest.raises(ValueError, match="number of patients"):
        make_splits(cohort, 31)


def test_too_small_classes_fall_back_to_grouped_folds_with_a_warning():
    ids = ["a", "b", "c", "d"]
    cohort = Cohort(clinical=pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]}, index=ids),
                    labels=pd.Series(["n", "n", "n", "y"], index=ids))
    with pytest.warns(UserWarning, match="not stratified"):
        splits = make_splits(cohort, 4)
    assert sorted(s for _, test in splits for s in test) == ids


def test_train_validation_split_is_grouped_stratified_and_reproducible(cohort):
    train, val = train_validation_split(cohort, 0.25, seed=0)
    assert_grouped(cohort, train, val)
    assert sorted(train + val) == sorted(cohort.sample_ids)
    assert 0.15 < len(val) / len(cohort) < 0.35
    assert set(cohort.labels[val]) == {"pos", "neg"}
    pos_share = (cohort.labels[val] == "pos").mean()
    assert abs(pos_share - (cohort.labels == "pos").mean()) < 0.2
    assert (train, val) == train_validation_split(cohort, 0.25, seed=0)
    assert val != train_validation_split(cohort, 0.25, seed=1)[1]
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="fraction"):
            train_validation_split(cohort, bad)
    tiny = Cohort(clinical=pd.DataFrame({"x": [1.0, 2.0]}, index=["a", "b"]),
                  groups=pd.Series(["p", "p"], index=["a", "b"]))
    with pytest.raises(ValueError, match="at least 2 patients"):
        train_validation_split(tiny)


def test_a_fold_left_empty_by_stratification_falls_back_to_shuffled_patients():
    """4 patients into 4 folds: the stratified assignment can put two patients in one fold (a case hypothesis
    found); the repeat is then dealt by patient, with a warning, and every fold has a test side."""
    groups = [0, 0, 3, 0, 0, 1, 2, 2, 0]
    labels = [False, False, False, True, True, True, False, False, False]
    ids = [f"s{i}" for i in range(len(groups))]
    cohort = Cohort(clinical=pd.DataFrame({"x": np.arange(len(ids), dtype=float)}, index=ids),
                    labels=pd.Series(["y" if v else "n" for v in labels], index=ids),
                    groups=pd.Series([f"g{g}" for g in groups], index=ids))
    for seed in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            splits = make_splits(cohort, 4, seed=seed)
        assert len(splits) == 4 and all(test for _, test in splits)
        assert Counter(s for _, test in splits for s in test) == Counter(ids)
        for train, test in splits:
            assert_grouped(cohort, train, test)


@pytest.mark.filterwarnings("ignore:The least populated class")  # tiny random cohorts, on purpose
@pytest.mark.filterwarnings("ignore:make_splits")
@settings(max_examples=25, deadline=None)
@given(groups=st.lists(st.integers(0, 9), min_size=4, max_size=30),
       labels=st.lists(st.booleans(), min_size=30,
                                                                                    max_size=30),
       folds=st.integers(2, 4), seed=st.integers(0, 5), fraction=st.floats(0.1, 0.5))
def test_random_groups_never_leak(groups, labels, folds, seed, fraction):
    ids = [f"s{i}" for i in range(len(groups))]
    cohort = Cohort(clinical=pd.DataFrame({"x": np.arange(len(ids), dtype=float)}, index=ids),
                    labels=pd.Series(["y" if v else "n" for v in labels[: len(ids)]], index=ids),
                    groups=pd.Series([f"g{g}" for g in groups], index=ids))
    n_groups = len(set(groups))
    if n_groups < folds:
        with pytest.raises(ValueError, match="number of patients"):
            make_splits(cohort, folds, seed=seed)
    else:
        splits = make_splits(cohort, folds, seed=seed)
        assert Counter(s for _, test in splits for s in test) == Counter(ids)
        for train, test in splits:
            assert_grouped(cohort, train, test)
    if n_groups >= 2:
        train, val = train_validation_split(cohort, fraction, seed=seed)
        assert train and val and sorted(train + val) == sorted(ids)
        assert_grouped(cohort, train, val)
