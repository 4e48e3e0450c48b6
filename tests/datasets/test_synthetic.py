"""The synthetic cohort: determinism, planted-truth consistency, both tasks, missingness, learnability."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from clinfuse.datasets import MODALITIES, SyntheticTruth, make_synthetic_cohort
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score


@pytest.fixture(scope="module")
def clf():
    return make_synthetic_cohort(200, seed=0)


@pytest.fixture(scope="module")
def surv():
    return make_synthetic_cohort(200, task="survival", seed=0)


def _bags(cohort):
    return {s: cohort.images.load(s).data for s in cohort.images.sample_ids}


def test_deterministic_per_seed():
    a, ta = make_synthetic_cohort(40, seed=3)
    b, tb = make_synthetic_cohort(40, seed=3)
    c, _ = make_synthetic_cohort(40, seed=4)
    assert a.sample_ids == b.sample_ids
    pd.testing.assert_frame_equal(a.clinical, b.clinical)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_series_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.genomics.X, b.genomics.X)
    ba, bb = _bags(a), _bags(b)
    assert ba.keys() == bb.keys()
    for s in ba:
        np.testing.assert_array_equal(ba[s], bb[s])
        np.testing.assert_array_equal(ta.relevant_patches[s], tb.relevant_patches[s])
    assert ta.signal_genes == tb.signal_genes and ta.signal_codes == tb.signal_codes
    assert not a.clinical["biomarker_level"].equals(c.clinical["biomarker_level"])


def test_outcome_does_not_depend_on_modalities_or_missingness():
    a, ta = make_synthetic_cohort(60, seed=1)
    b, tb = make_synthetic_cohort(60, seed=1, modalities=("clinical", "images"), missing_rate=0.0)
    pd.testing.assert_series_equal(a.labels, b.labels)
    pd.testing.assert_series_equal(ta.linear_predictor, tb.linear_predictor)
    assert b.modalities == ("clinical", "images")
    assert b.presence().all().all()


def test_truth_matches_bags_and_rule(clf):
    cohort, truth = clf
    assert isinstance(truth, SyntheticTruth)
    assert set(truth.relevant_patches) == set(cohort.images.sample_ids) == set(truth.patch_type)
    rule = truth.rule_value
    assert rule.index.tolist() == cohort.sample_ids
    assert truth.rule_variable in cohort.clinical.columns
    # the observed rule variable is the planted one
    observed = cohort.clinical[truth.rule_variable] == "positive"
    pd.testing.assert_series_equal(observed, rule.loc[observed.index], check_names=False)
    for s, rel in truth.relevant_patches.items():
        t = truth.patch_type[s]
        assert rel.dtype == bool and rel.shape == t.shape == (cohort.images.n_patches(s),)
        assert {1, 2} <= set(t.tolist())  # both types in every bag: the other one is a distractor
        assert np.array_equal(rel, t == (1 if rule[s] else 2))
        assert rel.any() and not rel.all()
        assert truth.evidence_fraction[s] == pytest.approx(rel.mean())
    # the rule flips which type counts: both rule values occur among the patients with images
    assert rule.loc[list(truth.relevant_patches)].nunique() == 2


def test_patch_types_are_separable_in_feature_space(clf):
    cohort, truth = clf
    d = truth.directions
    assert d.shape == (2, cohort.images.feature_dim)
    np.testing.assert_allclose(d @ d.T, np.eye(2), atol=1e-5)
    correct = total = 0
    for s in list(truth.patch_type)[:40]:
        proj = cohort.images.load(s).data @ d.T  # [N, 2]
        pred = np.where(proj.max(axis=1) > 2.0, proj.argmax(axis=1) + 1, 0)
        correct += int((pred == truth.patch_type[s]).sum())
        total += pred.size
    assert correct / total > 0.97


def test_planted_signal_is_learnable_and_needs_the_rule(clf):
    """Logistic regression on the severity read from the evidence patches (found with the rule) predicts the
    label on held-out patients; reading the same from the patches of one fixed type (ignoring the rule) or
    from the whole bag (mean pooling) does much worse."""
    cohort, truth = clf
    d, v = truth.directions, truth.severity_direction
    ids = [s for s in cohort.images.sample_ids if cohort.has(s, "clinical")]
    sev_a, sev_b, sev_all = [], [], []
    for s in ids:
        x = cohort.images.load(s).data
        proj = x @ d.T
        sev_a.append(np.mean(x[proj[:, 0] > 2.0] @ v))
        sev_b.append(np.mean(x[proj[:, 1] > 2.0] @ v))
        sev_all.append(np.mean(x @ v))
    pos = (cohort.clinical.loc[ids, truth.rule_variable] == "positive").to_numpy()
    evidence = np.where(pos, sev_a, sev_b)[:, None]
    y = cohort.labels.loc[ids].to_numpy()
    train, test = slice(0, len(ids) // 2), slice(len(ids) // 2, None)
    model = LogisticRegression().fit(evidence[train], y[train])
    auc_rule = roc_auc_score(y[test], model.predict_proba(evidence[test])[:, 1])
    assert auc_rule > 0.85
    assert auc_rule > roc_auc_score(y[test], np.asarray(sev_a)[test]) + 0.1
    assert auc_rule > roc_auc_score(y[test], np.asarray(sev_all)[test]) + 0.1
    assert np.corrcoef(evidence[:, 0], truth.severity[ids])[0, 1] > 0.97  # the evidence shows the severity


def test_other_signals_carry_information(clf):
    """Each planted non-image signal tracks the non-image part of the linear predictor; noise does not."""
    cohort, truth = clf
    lp = truth.linear_predictor - 4.0 * truth.severity  # the image term's weight, see the module docstring

    def rho(x: pd.Series) -> float:
        return float(np.corrcoef(x.rank(), lp[x.index].rank())[0, 1])

    clin = cohort.clinical
    assert rho(clin["biomarker_level"]) > max(0.4, abs(rho(clin["noise_1"])) + 0.2)
    expr = pd.DataFrame(cohort.genomics.X, index=cohort.genomics.obs_names, columns=cohort.genomics.var_names)
    noise_genes = [g for g in expr.columns if g not in truth.signal_genes]
    assert rho(expr[truth.signal_genes].mean(axis=1)) > max(
        0.25, abs(rho(expr[noise_genes[:4]].mean(axis=1))) + 0.1
    )
    counts = cohort.events.groupby(["sample_id", "code"]).size().unstack(fill_value=0)
    noise_codes = [c for c in counts.columns if c not in truth.signal_codes]
    assert rho(counts[truth.signal_codes].sum(axis=1)) > max(
        0.25, abs(rho(counts[noise_codes[:3]].sum(axis=1))) + 0.1
    )
    assert set(truth.signal_genes) <= set(cohort.genomics.var_names)
    assert set(truth.signal_codes) <= set(cohort.events["code"])
    assert any(set(truth.signal_genes) & set(genes) for genes in cohort.gene_sets.values())


def test_contents_of_each_modality(clf):
    cohort, truth = clf
    assert cohort.task == "classification" and cohort.classes == [0, 1]
    assert 0.3 < cohort.labels.mean() < 0.7
    assert cohort.clinical_types[truth.rule_variable] == "categorical"
    assert cohort.clinical_types["site"] == "categorical"
    assert cohort.clinical["lab_value"].isna().any()  # a numeric variable with missing values
    bag = cohort.images.load(cohort.images.sample_ids[0])
    assert bag.data.dtype == np.float32 and np.isfinite(bag.coords).all()
    assert len(np.unique(bag.coords, axis=0)) == len(bag.coords)  # distinct grid positions
    assert set(cohort.events.columns) >= {"sample_id", "time", "code", "value", "segment"}
    assert cohort.events["value"].isna().any() and cohort.events["value"].notna().any()
    assert set(cohort.events["segment"]) == {0, 1}
    assert (cohort.events["time"] <= 0).all()


def test_missing_modalities(clf):
    cohort, _ = clf
    presence = cohort.presence()
    assert list(presence.columns) == list(MODALITIES)
    assert (~presence).any().all()  # every modality is missing for someone
    assert presence.any(axis=1).all()  # nobody lacks everything
    assert (presence["clinical"] & presence["images"]).mean() > 0.7
    full, _ = make_synthetic_cohort(30, missing_rate=0.0, seed=2)
    assert full.presence().all().all()


def test_survival_task(surv):
    cohort, truth = surv
    assert cohort.task == "survival" and cohort.labels is None
    s = cohort.survival
    assert (s["time"] > 0).all() and set(s["event"]) == {0, 1}
    assert 0.2 < 1 - s["event"].mean() < 0.4  # ~30% censored
    # higher linear predictor -> shorter times: concordance well above chance among events
    ev = s[s["event"] == 1]
    lp = truth.linear_predictor[ev.index]
    rho = np.corrcoef(lp.rank(), ev["time"].rank())[0, 1]
    assert rho < -0.3


def test_feature_dir_writes_npy_and_reads_them(tmp_path):
    mem, _ = make_synthetic_cohort(12, seed=5)
    disk, truth = make_synthetic_cohort(12, seed=5, feature_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"{s}.npy" for s in disk.images.sample_ids)
    for s in disk.images.sample_ids:
        a, b = mem.images.load(s), disk.images.load(s)
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.coords, b.coords)
        assert np.load(tmp_path / f"{s}.npy", mmap_mode="r").shape == (truth.relevant_patches[s].size, 32)


def test_fast_enough():
    start = time.perf_counter()
    make_synthetic_cohort(200, seed=9)
    assert time.perf_counter() - start < 5.0  # target < 2 s; slack for a loaded 2-core machine


@pytest.mark.parametrize(
    "kw",
    [
        {"task": "regression"},
        {"modalities": ("clinical", "slides")},
        {"modalities": ()},
        {"n_patches": (10, 5)},
        {"feature_dim": 2},
        {"missing_rate": 1.0},
        {"n_genes": 2},
    ],
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        make_synthetic_cohort(20, **kw)
