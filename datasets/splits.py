"""Patient-grouped, stratified splits of a cohort: cross-validation folds and a train / validation split.

Every split groups samples by ``cohort.groups`` (one patient is never on both sides, even when samples are
admissions or slides) and stratifies by the class label, or by the event indicator for survival. Splits are
returned as sample ids, so they can be stored, inspected and passed back as explicit folds.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .statistics import category_key
from .validation import format_ids

Split = tuple[list[str], list[str]]


def _strata(cohort: Any, ids: list[str]) -> np.ndarray:
    """Per-sample stratification key: the class label, the survival event, or one stratum without targets."""
    task = getattr(cohort, "task", None)
    if task == "classification":
        return np.array([category_key(v) for v in cohort.labels.reindex(ids).tolist()], dtype=object)
    if task == "survival":
        return np.array([str(int(v)) for v in cohort.survival["event"].reindex(ids).tolist()], dtype=object)
    return np.array(["all"] * len(ids), dtype=object)


def _groups(cohort: Any, ids: list[str]) -> np.ndarray:
    groups = getattr(cohort, "groups", None)
    if groups is None:
        return np.array(ids, dtype=object)
    return np.array([str(groups.get(s, s)) for s in ids], dtype=object)


def validate_splits(cohort: Any, splits: Iterable[Sequence[Iterable[Any]]]) -> list[Split]:
    """Check explicit ``(train_ids, test_ids)`` pairs: known ids, no repeats, no overlap, no patient on both
    sides, no empty side. Raises ``ValueError`` naming the split and the offending ids; returns str ids."""
    ids = [str(s) for s in cohort.sample_ids]
    known = set(ids)
    group = dict(zip(ids, _groups(cohort, ids).tolist(), strict=True))
    out: list[Split] = []
    for k, pair in enumerate(splits):
        if isinstance(pair, str | bytes) or len(pair) != 2:
            raise ValueError(f"split {k}: expected a (train_ids, test_ids) pair, got {type(pair).__name__}")
        train, test = ([str(s) for s in side] for side in pair)
        for name, side in (("train", train), ("test", test)):
            if not side:
                raise ValueError(f"split {k}: the {name} side is empty")
            unknown = sorted({s for s in side if s not in known})
            if unknown:
                raise ValueError(f"split {k}: unknown sample id(s) {format_ids(unknown)} on the {name} side")
            repeated = sorted(s for s, n in Counter(side).items() if n > 1)
            if repeated:
                raise ValueError(f"split {k}: sample id(s) {format_ids(repeated)} repeated on the {name} "
                                 "side")
        both = sorted(set(train) & set(test))
        if both:
            raise ValueError(f"split {k}: sample(s) {format_ids(both)} are on both the train and the test "
                             "side")
        leaked = sorted({str(group[s]) for s in train} & {str(group[s]) for s in test})
        if leaked:
            raise ValueError(f"split {k}: patient(s) (groups) {format_ids(leaked)} have samples on both the "
                             "train and the test side; split by cohort.groups")
        out.append((train, test))
    if not out:
        raise ValueError("no splits given; expected at least one (train_ids, test_ids) pair")
    return out


def make_splits(cohort: Any, folds: Any = 5, *, seed: int = 0, repeats: int = 1) -> list[Split]:
    """Cross-validation splits as ``[(train_ids, test_ids), ...]``, grouped by patient and stratified.

    Args:
        folds: an int (``StratifiedGroupKFold`` with that many folds, shuffled by ``seed``), a scikit-learn
            splitter (its ``split(X, y, groups)`` gets the strata as ``y`` and the patients as ``groups``), or
            explicit ``(train_ids, test_ids)`` pairs. Every result is validated (see :func:`validate_splits`),
            so a splitter that ignores groups and leaks a patient is an error, not a silent optimism.
        seed: shuffling seed; repeat r uses ``seed + r``.
        repeats: repeat the k-fold split with different seeds (int ``folds`` only); ``folds * repeats``
            splits.

    Returns:
        Sample ids per side, in ``cohort.sample_ids`` order (explicit pairs keep their given order).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int | np.integer) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    ids = [str(s) for s in cohort.sample_ids]
    strata, groups = _strata(cohort, ids), _groups(cohort, ids)
    if isinstance(folds, int | np.integer) and not isinstance(folds, bool):
        n_groups = len(set(groups.tolist()))
        if folds < 2 or folds > n_groups:
            raise ValueError(f"folds={folds}: need 2 <= folds <= the number of patients (groups), {n_groups}")
        if max(Counter(strata.tolist()).values()) < folds:
            # StratifiedGroupKFold needs one stratum with >= folds samples; without it, split by patient only
            warnings.warn(f"make_splits: no class has {folds} samples, so the {folds} folds are grouped by "
                          "patient but not stratified", UserWarning, stacklevel=2)
            strata = np.array(["all"] * len(ids), dtype=object)
        splits = []
        for r in range(repeats):
            splitter = StratifiedGroupKFold(n_splits=int(folds), shuffle=True, random_state=int(seed) + r)
            pairs = list(splitter.split(np.zeros((len(ids), 1)), strata, groups))
            if any(len(test) == 0 for _, test in pairs):
                # With few patients per fold the stratified assignment can leave a fold without patients
                warnings.warn(f"make_splits: stratifying {n_groups} patients into {folds} folds left a fold "
                              f"empty (repeat {r}); that repeat is grouped by patient (shuffled) but not "
                              "stratified", UserWarning, stacklevel=2)
                pairs = _shuffled_group_folds(groups, int(folds), int(seed) + r)
            splits.extend(([ids[i] for i in train], [ids[i] for i in test]) for train, test in pairs)
        return validate_splits(cohort, splits)
    if repeats != 1:
        raise ValueError("repeats applies to folds=int only; give a repeated splitter or repeated pairs "
                         "instead")
    if hasattr(folds, "split"):
        pairs = folds.split(np.zeros((len(ids), 1)), strata, groups)
        return validate_splits(cohort, [([ids[i] for i in tr], [ids[i] for i in te]) for tr, te in pairs])
    if isinstance(folds, Iterable) and not isinstance(folds, str | bytes):
        return validate_splits(cohort, list(folds))
    raise TypeError(f"folds must be an int, a scikit-learn splitter or (train_ids, test_ids) pairs, "
                    f"got {type(folds).__name__}")


def _shuffled_group_folds(groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patients shuffled by ``seed`` and dealt to the folds in turn: every fold gets at least one patient."""
    patients = list(dict.fromkeys(groups.tolist()))
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[j]: k % folds for k, j in enumerate(order)}
    assigned = np.array([fold_of[g] for g in groups.tolist()])
    return [(np.flatnonzero(assigned != k), np.flatnonzero(assigned == k)) for k in range(folds)]


def train_validation_split(cohort: Any, fraction: float = 0.2, *, seed: int = 0) -> Split:
    """``(train_ids, val_ids)``: about ``fraction`` of the samples in validation, grouped by patient and
    stratified.

    Patients are shuffled (by ``seed``) within their stratum (a patient's most common label / event) and
    taken into validation while that brings the stratum's validation count closer to ``fraction`` of it;
    each stratum with at least two patients gives at least one, so a small validation set still sees every
    class.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, float | int) or not 0 < fraction < 1:
        raise ValueError(f"fraction must be a number in (0, 1), got {fraction!r}")
    ids = [str(s) for s in cohort.sample_ids]
    strata, groups = _strata(cohort, ids), _groups(cohort, ids)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    if len(members) < 2:
        raise ValueError(f"train_validation_split needs at least 2 patients (groups), the cohort has "
                         f"{len(members)}")
    by_stratum: dict[str, list[str]] = {}
    for g, rows in members.items():
        counts = Counter(strata[rows].tolist())
        key = min(counts, key=lambda s: (-counts[s], s))  # the most common stratum; ties by name
        by_stratum.setdefault(key, []).append(g)
    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    for key in sorted(by_stratum):
        pool = [by_stratum[key][i] for i in rng.permutation(len(by_stratum[key]))]
        target = fraction * sum(len(members[g]) for g in pool)
        taken = 0
        for g in pool:
            size = len(members[g])
            if abs(taken + size - target) < abs(taken - target) or (taken == 0 and len(pool) >= 2):
                val_groups.add(g)
                taken += size
    if not val_groups:  # every stratum has a single patient: validate on one of them
        val_groups.add(sorted(members)[int(rng.integers(len(members)))])
    if len(val_groups) == len(members):  # only possible with tiny strata: keep one patient to train on
        val_groups.discard(sorted(val_groups)[int(rng.integers(len(val_groups)))])
    val = [s for s, g in zip(ids, groups.tolist(), strict=True) if g in val_groups]
    train = [s for s, g in zip(ids, groups.tolist(), strict=True) if g not in val_groups]
    return train, val


__all__ = ["make_splits", "train_validation_split", "validate_splits"]
