"""Preprocessor: statistics come from the training cohort only; JSON round trip; compatibility checks."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from clinfuse.datasets import Cohort, ImageBags, Preprocessor
from clinfuse.datasets.missingness import data_warnings
from clinfuse.datasets.preprocess import NotFittedError

N = 24


def make_cohort(*, seed: int = 0, task: str = "classification", n_genes: int = 40) -> Cohort:
    """Every modality; sample s0 lacks genomics, s1 lacks images; grade '4' exists only in s20..s23."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" for i in range(N)]
    grade = rng.choice(["1", "2", "3"], N).astype(object)
    grade[20:] = "4"
    grade[5] = None
    clinical = pd.DataFrame({"age": rng.normal(60, 10, N), "size": rng.gamma(2.0, 2.0, N), "grade": grade},
                            index=ids)
    clinical.loc["s3", "age"] = np.nan
    # the later samples are older: whole-cohort stats differ from training
    clinical.loc[ids[16:], "age"] += 30
    counts = rng.poisson(rng.gamma(2.0, 20.0, n_genes), size=(N - 1, n_genes)).astype(np.float64)
    counts[:, 0] = 7.0  # a constant gene: zero variance, never selected first
    genomics = ad.AnnData(X=counts, obs=pd.DataFrame(index=ids[1:]),
                          var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))
    bags = ImageBags.from_features({s: rng.normal(size=(int(rng.integers(2, 7)), 6)).astype(np.float32)
                                    for s in ids if s != "s1"})
    n_ev = 200
    events = pd.DataFrame({"sample_id": rng.choice(ids, n_ev), "time": rng.uniform(0, 30, n_ev),
                           "code": rng.choice(["HR", "BP", "LAB", "RX"], n_ev, p=[0.4, 0.3, 0.2, 0.1]),
                           "value": rng.normal(80, 15, n_ev)})
    events.loc[events["code"] == "RX", "value"] = np.nan
    events.loc[events.index[:3], "code"] = "RARE"
    events.loc[events["sample_id"].isin(ids[16:]) & (events["code"] == "HR"), "value"] += 50
    gene_sets = {"early": ["G1", "G2", "G3"], "late": [f"G{j}" for j in range(30, 40)], "const": ["G0"]}
    kw = {"clinical": clinical, "genomics": genomics, "images": bags, "events": events,
          "gene_sets": gene_sets,
          "groups": pd.Series([f"p{i // 2}" for i in range(N)], index=ids)}
    if task == "classification":
        kw["labels"] = pd.Series(rng.choice(["benign", "malignant"], N), index=ids)
    elif task == "survival":
        kw["survival"] = pd.DataFrame({"time": rng.uniform(1, 100, N), "event": rng.integers(0, 2, N)},
                                      index=ids)
    return Cohort(**kw)


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return make_cohort()


@pytest.fixture(scope="module")
def train_ids() -> list[str]:
    return [f"s{i}" for i in range(16)]


def test_using_before_fit_is_a_value_error(cohort):
    p = Preprocessor()
    assert not hasattr(p, "schema_")
    with pytest.raises(ValueError, match="not fitted yet, call fit first"):
        p.schema_  # noqa: B018
    for call in (lambda: p.transform_clinical(cohort.clinical), lambda: p.check_compatible(cohort),
                 lambda: p.transform_genomics(cohort.genomics)):
        with pytest.raises(NotFittedError, match="not fitted yet, call fit first"):
            call()


@pytest.mark.parametrize("kwargs", [{"top_genes": 0}, {"gene_transform": "zscore"}, {"min_code_count": 0},
                                    {"max_events": 0}, {"clinical_types": {"age": "ordinal"}}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Preprocessor(**kwargs)


def test_clinical_uses_training_statistics_only(cohort, train_ids):
    train = cohort.subset(train_ids)
    p = Preprocessor().fit(train)
    ages = train.clinical["age"].dropna().to_numpy()
    assert p.numeric_columns_ == ["age", "size"]
    np.testing.assert_allclose(p.numeric_mean_[0], ages.mean())
    np.testing.assert_allclose(p.numeric_std_[0], ages.std())
    whole = cohort.clinical["age"].dropna()
    assert abs(p.numeric_mean_[0] - whole.mean()) > 5  # the held-out samples would have shifted it
    assert p.categories_ == {"grade": ["1", "2", "3"]}  # '4' appears only outside training

    out = p.transform_clinical(cohort.clinical)
    rows = {s: i for i, s in enumerate(cohort.clinical.index)}
    s20 = rows["s20"]
    expected = (cohort.clinical.at["s20", "age"] - ages.mean()) / ages.std()
    np.testing.assert_allclose(out["numeric"][s20, 0], expected, rtol=1e-5)
    assert out["categorical"][s20, 0] == 1  # test-only category -> unknown
    assert out["categorical"][rows["s5"], 0] == 0  # missing -> 0
    grade0 = cohort.clinical.at["s0", "grade"]
    assert out["categorical"][rows["s0"], 0] == 2 + ["1", "2", "3"].index(grade0)
    assert out["numeric_missing"][rows["s3"], 0] and out["numeric"][rows["s3"], 0] == 0.0
    assert out["numeric"].dtype == np.float32 and out["categorical"].dtype == np.int64
    # training rows are standardised: mean 0, std 1 over the observed values
    train_rows = [rows[s] for s in train_ids if s != "s3"]
    np.testing.assert_allclose(out["numeric"][train_rows, 0].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(out["numeric"][train_rows, 0].std(), 1.0, atol=1e-5)


def test_clinical_types_override(cohort, train_ids):
    p = Preprocessor(clinical_types={"size": "categorical"}).fit(cohort.subset(train_ids[:6]))
    assert p.schema_["clinical"]["numeric"] == ["age"]
    assert list(p.schema_["clinical"]["categorical"]) == ["size", "grade"]
    with pytest.raises(ValueError, match="weight"):
        Preprocessor(clinical_types={"weight": "numeric"}).fit(cohort)


@pytest.mark.parametrize("transform", [None, "log1p", "cpm_log1p"])
def test_gene_selection_transform_and_scaling(cohort, train_ids, transform):
    train = cohort.subset(train_ids)
    p = Preprocessor(top_genes=10, gene_transform=transform).fit(train)
    X = np.asarray(train.genomics.X, dtype=np.float64)
    if transform == "cpm_log1p":
        X = X / X.sum(axis=1, keepdims=True) * 1e6
    if transform is not None:
        X = np.log1p(X)
    var = X.var(axis=0)
    genes = list(train.genomics.var_names)
    expected = sorted(np.argsort(-var, kind="stable")[:10])
    assert p.genes_ == [genes[j] for j in expected]
    assert "G0" not in p.genes_  # constant
    values = p.transform_genomics(train.genomics)
    assert values.shape == (len(train.genomics), 10) and values.dtype == np.float32
    np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(values.std(axis=0), 1.0, atol=1e-4)
    # held-out samples use the training mean / std, so they are not standardised to 0 / 1 themselves
    test = cohort.subset([f"s{i}" for i in range(16, N)])
    col = expected[0]
    raw = p.transform_genomics(test.genomics)[:, 0]
    Xt = np.asarray(test.genomics.X, dtype=np.float64)
    if transform == "cpm_log1p":
        Xt = Xt / Xt.sum(axis=1, keepdims=True) * 1e6
    if transform is not None:
        Xt = np.log1p(Xt)
    np.testing.assert_allclose(raw, (Xt[:, col] - X[:, col].mean()) / X[:, col].std(), rtol=1e-4, atol=1e-5)


def test_gene_sets_restricted_and_all_genes_kept_when_fewer(cohort, train_ids):
    p = Preprocessor(top_genes=5000).fit(cohort.subset(train_ids))
    assert len(p.genes_) == 40
    narrow = Preprocessor(top_genes=8).fit(cohort.subset(train_ids))
    kept = set(narrow.genes_)
    sets = narrow.schema_["genomics"]["gene_sets"] or {}
    assert all(set(members) <= kept and members for members in sets.values())
    assert "const" in narrow.dropped_gene_sets_  # G0 is constant: never in the top 8, recorded not hidden
    assert "const" not in sets


def test_negative_expression_with_log_transform_names_the_sample(cohort):
    genomics = cohort.genomics.copy()
    genomics.X[2, 3] = -1.0
    bad = Cohort(genomics=genomics)
    with pytest.raises(ValueError, match=genomics.obs_names[2]):
        Preprocessor(gene_transform="log1p").fit(bad)


def test_event_vocabulary_min_count_and_value_scaling(cohort, train_ids):
    train = cohort.subset(train_ids)
    p = Preprocessor(min_code_count=4).fit(train)
    counts = train.events["code"].value_counts()
    assert set(p.code_vocab_) == {c for c, n in counts.items() if n >= 4}
    assert "RARE" not in p.code_vocab_
    hr = train.events.loc[train.events["code"] == "HR", "value"]
    np.testing.assert_allclose(p.event_value_stats_["HR"], [hr.mean(), hr.std(ddof=0)])
    whole_hr = cohort.events.loc[cohort.events["code"] == "HR", "value"]
    assert abs(p.event_value_stats_["HR"][0] - whole_hr.mean()) > 5
    assert "RX" not in p.event_value_stats_  # RX never has a value
    out = p.transform_events(cohort.events, cohort.index_time)
    for seq in out.values():
        for code, idx in zip(seq["code"], seq["codes"].tolist(), strict=True):
            assert idx == (p.code_vocab_.index(code) + 2 if code in p.code_vocab_ else 1)
        assert not seq["has_value"][np.array(seq["code"]) == "RX"].any()
    raw = Preprocessor(event_value_scaling=False).fit(train).transform_events(train.events, train.index_time)
    first = train.events.dropna(subset=["value"]).iloc[0]
    assert np.isclose(raw[first["sample_id"]]["values"], first["value"]).any()


def test_schema_format(cohort, train_ids):
    p = Preprocessor(top_genes=12).fit(cohort.subset(train_ids))
    s = p.schema_
    assert list(s) == ["clinical", "genomics", "images", "events", "task"]
    assert s["clinical"] == {"numeric": ["age", "size"], "categorical": {"grade": ["1", "2", "3"]}}
    assert len(s["genomics"]["genes"]) == 12
    assert s["images"] == {"kind": "features", "feature_dim": 6}
    assert s["events"]["max_events"] == 8192 and s["events"]["has_values"] is True
    assert s["task"] == {"type": "classification", "classes": ["benign", "malignant"]}
    json.dumps(s)
    surv = Preprocessor().fit(make_cohort(task="survival"))
    assert surv.schema_["task"] == {"type": "survival"}
    assert Preprocessor().fit(make_cohort(task=None)).schema_["task"] is None


def test_pixel_image_schema():
    rng = np.random.default_rng(0)
    bags = ImageBags.from_patches({f"s{i}": rng.random((3, 3, 8, 10)).astype(np.float32) for i in range(3)})
    p = Preprocessor().fit(Cohort(images=bags))
    assert p.schema_ == {"images": {"kind": "pixels", "channels": 3, "height": 8, "width": 10}, "task": None}


def test_json_round_trip_gives_identical_transforms(cohort, train_ids, tmp_path):
    p = Preprocessor(top_genes=15, gene_transform="cpm_log1p", min_code_count=3).fit(cohort.subset(train_ids))
    path = p.to_json(tmp_path / "pre.json")
    assert [f.name for f in tmp_path.iterdir()] == ["pre.json"]  # atomic write leaves no temp file
    q = Preprocessor.from_json(path)
    assert q.to_dict() == p.to_dict() and q.schema_ == p.schema_ and q.get_params() == p.get_params()
    a, b = p.transform_clinical(cohort.clinical), q.transform_clinical(cohort.clinical)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(p.transform_genomics(cohort.genomics),
                                  q.transform_genomics(cohort.genomics))
    ea, eb = (x.transform_events(cohort.events, cohort.index_time) for x in (p, q))
    assert ea.keys() == eb.keys()
    for sid in ea:
        for key in ("codes", "values", "times", "has_value", "segments"):
            np.testing.assert_array_equal(ea[sid][key], eb[sid][key])
    unfitted = Preprocessor.from_dict(Preprocessor(top_genes=3).to_dict())
    assert unfitted.top_genes == 3 and not unfitted.is_fitted
    with pytest.raises(ValueError, match="not a saved Preprocessor"):
        Preprocessor.from_dict({"format": "pickle"})


def test_check_compatible_names_what_differs(cohort, train_ids):
    p = Preprocessor(top_genes=10).fit(cohort.subset(train_ids))
    p.check_compatible(cohort)  # the full cohort is compatible
    clinical = cohort.clinical.drop(columns=["size"])
    genomics = cohort.genomics[:, [g for g in cohort.genomics.var_names if g not in p.genes_[:7]]].copy()
    bags = ImageBags.from_features({"s0": np.zeros((2, 5), dtype=np.float32)})
    other = Cohort(clinical=clinical, genomics=genomics, images=bags)
    with pytest.raises(ValueError) as err:
        p.check_compatible(other)
    msg = str(err.value)
    assert "7 of 10" in msg and p.genes_[0] in msg and "feature dim 5" in msg
    # a dropped clinical column is missing for every sample (the trained case): a warning, not an error
    assert "'size'" not in msg
    assert any("'size' seen at fit time are absent" in w for w in data_warnings(p, Cohort(clinical=clinical)))
    clinical_only = Preprocessor().fit(Cohort(clinical=cohort.clinical))
    with pytest.raises(ValueError, match="genomics"):
        clinical_only.check_compatible(cohort)
    unseen = cohort.labels.copy()
    unseen.iloc[0] = "other"
    with pytest.raises(ValueError, match="s0"):
        p.check_compatible(Cohort(clinical=cohort.clinical, labels=unseen))


def test_pixel_schema_mismatch_is_named():
    rng = np.random.default_rng(0)
    fitted = Preprocessor().fit(Cohort(images=ImageBags.from_patches({"a": rng.random((2, 3, 8, 10))})))
    with pytest.raises(ValueError, match=r"pixel shape \(C, H, W\) \(3, 8, 8\), fitted on \(3, 8, 10\)"):
        fitted.check_compatible(Cohort(images=ImageBags.from_patches({"b": rng.random((2, 3, 8, 8))})))
    with pytest.raises(ValueError, match="kind 'features', fitted on 'pixels'"):
        fitted.check_compatible(Cohort(images=ImageBags.from_features({"b": rng.random((2, 4))})))


def test_real_gse7390_fits_on_training_folds_only(shared_path):
    from clinfuse.datasets import load_gse7390, make_splits

    cohort = load_gse7390(shared_path("gse7390_etc"))
    train, test = make_splits(cohort, 3, seed=0)[0]
    p = Preprocessor(top_genes=20, gene_transform=None).fit(cohort.subset(train))
    assert len(p.schema_["genomics"]["genes"]) == 20 and p.schema_["task"] == {"type": "survival"}
    whole = Preprocessor(top_genes=20).fit(cohort)
    assert p.numeric_mean_ != whole.numeric_mean_  # the test fold changes the statistics: they must not leak
    held_out = p.transform_genomics(cohort.subset(test).genomics)
    assert held_out.shape == (len(test), 20) and np.isfinite(held_out).all()
    p.check_compatible(cohort.subset(test))
