"""Cohort: construction, every validation error, subset/presence consistency, summary, gene sets."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from clinfuse.datasets import Cohort, ImageBags
from clinfuse.datasets.validation import format_ids
from hypothesis import given, settings
from hypothesis import strategies as st

IDS = ["s1", "s2", "s3", "s4"]


def _adata(ids, n_genes=5, x=None):
    x = np.random.default_rng(0).normal(size=(len(ids), n_genes)) if x is None else x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata warns about duplicated names, which we test on purpose
        a = ad.AnnData(X=x)
        a.obs_names = list(ids)
        a.var_names = [f"G{i}" for i in range(x.shape[1])]
    return a


def _clinical(ids=IDS):
    n = len(ids)
    return pd.DataFrame(
        {
            "age": np.linspace(40, 70, n),
            "grade": ["1", "2", "3", "1"][:n],
            "er": [True, False, True, False][:n],
        },
        index=list(ids),
    )


def _events(ids=("s1", "s2")):
    rows = [(s, t, c, v) for s in ids for t, c, v in [(0.0, "a", 1.0), (2.0, "b", np.nan), (5.0, "a", 3.0)]]
    return pd.DataFrame(rows, columns=["sample_id", "time", "code", "value"])


def _labels(ids=IDS, values=(0, 1, 0, 1)):
    return pd.Series(list(values)[: len(ids)], index=list(ids))


def _survival(ids=IDS, time=(1.0, 2.0, 3.0, 4.0), event=(1, 0, 1, 0)):
    return pd.DataFrame({"time": list(time)[: len(ids)], "event": list(event)[: len(ids)]}, index=list(ids))


def _full(**kw):
    args = {
        "clinical": _clinical(),
        "genomics": _adata(["s1", "s2", "s3"]),
        "images": ImageBags.from_features({"s1": np.ones((3, 4)), "s4": np.zeros((2, 4))}),
        "events": _events(),
        "labels": _labels(),
    }
    args.update(kw)
    return Cohort(**args)


# ---------------------------------------------------------------------------- construction and access


def test_full_cohort_attributes():
    c = _full(groups=pd.Series({"s1": "P1", "s2": "P1", "s3": "P2", "s4": 7}))
    assert c.sample_ids == IDS and len(c) == 4
    assert c.modalities == ("clinical", "genomics", "images", "events")
    assert c.patients == ["P1", "P2", "7"]
    assert c.task == "classification" and c.classes == [0, 1]
    assert c.clinical_types == {"age": "numeric", "grade": "categorical", "er": "categorical"}
    assert c.has("s4", "images") and not c.has("s4", "genomics") and not c.has("s3", "events")
    pres = c.presence()
    assert pres.loc["s2"].tolist() == [True, True, False, True]
    assert list(c.events.columns) == ["sample_id", "time", "code", "value", "segment"]
    assert c.events["segment"].eq(0).all() and c.index_time.to_dict() == {"s1": 5.0, "s2": 5.0}
    assert c.excluded == []
    with pytest.raises(ValueError, match="unknown modality 'foo'"):
        c.has("s1", "foo")
    with pytest.raises(ValueError, match="unknown sample id 'zz'"):
        c.has("zz", "clinical")


def test_ids_are_strings_and_order_follows_targets():
    clin = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=[3, 1, 2])
    c = Cohort(clinical=clin, labels=pd.Series(["b", "a", "b"], index=[1, 2, 3]))
    assert c.sample_ids == ["1", "2", "3"] and list(c.clinical.index) == ["3", "1", "2"]
    assert c.groups.to_dict() == {"1": "1", "2": "2", "3": "3"}


def test_cohort_without_targets_and_single_class_checks():
    c = Cohort(clinical=_clinical())
    assert c.task is None and c.labels is None and c.survival is None
    with pytest.raises(ValueError, match="no targets"):
        c.check_fittable()
    one = Cohort(clinical=_clinical(), labels=_labels(values=("x",) * 4))  # a cohort may hold one class
    with pytest.raises(ValueError, match="only one class .'x'."):
        one.check_fittable()
    _full().check_fittable()
    cens = Cohort(clinical=_clinical(), survival=_survival(event=(0, 0, 0, 0)))
    with pytest.raises(ValueError, match="no event"):
        cens.check_fittable()


def test_survival_targets():
    c = Cohort(clinical=_clinical(), survival=_survival(event=(True, False, True, False)))
    assert c.task == "survival" and c.classes is None
    assert c.survival["event"].dtype == np.int64 and c.survival["time"].dtype == np.float64
    c.check_fittable()


@pytest.mark.parametrize("fields", [("event", "time"), ("Status", "Survival_in_days")])
def test_survival_accepts_a_structured_array_in_the_data_order(fields):
    # what scikit-survival's Surv.from_arrays(event, time) returns, built by hand (no sksurv needed)
    y = np.array([(True, 5.0), (False, 2.5), (True, 7.0), (False, 1.0)],
                 dtype=[(fields[0], "?"), (fields[1], "<f8")])
    clinical = _clinical().iloc[[3, 1, 0, 2]]  # rows follow the clinical index, not sorted ids
    c = Cohort(clinical=clinical, genomics=_adata(["s2", "s4"]), survival=y)
    assert c.sample_ids == ["s4", "s2", "s1", "s3"]
    assert c.survival["time"].tolist() == [5.0, 2.5, 7.0, 1.0]
    assert c.survival["event"].tolist() == [1, 0, 1, 0] and c.survival["event"].dtype == np.int64
    # fields in the other order, with an extra int field: still the first bool and the first float
    z = np.array([(3, 5.0, True), (4, 2.5, False), (5, 7.0, True), (6, 1.0, False)],
                 dtype=[("n", "<i8"), ("days", "<f4"), ("died", "?")])
    assert Cohort(clinical=clinical, survival=z).survival["event"].tolist() == [1, 0, 1, 0]


def test_survival_structured_array_errors():
    y = np.array([(True, 5.0), (False, 2.5), (True, 7.0)], dtype=[("event", "?"), ("time", "<f8")])
    with pytest.raises(ValueError, match="3 rows but the cohort's data have 4 samples"):
        Cohort(clinical=_clinical(), survival=y)
    no_bool = np.array([(1, 5.0)] * 4, dtype=[("event", "<i8"), ("time", "<f8")])
    with pytest.raises(ValueError, match="bool event field and a float time field.*'event': 'int64'"):
        Cohort(clinical=_clinical(), survival=no_bool)
    bad_time = np.array([(True, 5.0), (False, -1.0), (True, 7.0), (False, 1.0)],
                        dtype=[("event", "?"), ("time", "<f8")])
    with pytest.raises(ValueError, match="'time' must be a finite number > 0.*'s2'"):
        Cohort(clinical=_clinical(), survival=bad_time)


def test_clinical_type_detection_and_override():
    df = pd.DataFrame(
        {
            "num_str": [str(i) for i in range(8)],
            "few": ["1", "2"] * 4,
            "cat": pd.Categorical(list("abababab")),
            "flag": [True, False] * 4,
            "int": list(range(8)),
        },
        index=[f"s{i}" for i in range(8)],
    )
    c = Cohort(clinical=df)
    assert c.clinical_types == {
        "num_str": "numeric",
        "few": "categorical",
        "cat": "categorical",
        "flag": "categorical",
        "int": "numeric",
    }
    assert c.clinical["num_str"].dtype == np.float64
    c2 = Cohort(clinical=df, clinical_types={"int": "categorical", "few": "numeric"})
    assert c2.clinical_types["int"] == "categorical" and c2.clinical["few"].dtype == np.float64


def test_all_nan_clinical_row_means_no_clinical_data_and_is_recorded():
    df = _clinical().astype({"er": object})
    df.loc["s2"] = np.nan
    c = Cohort(clinical=df, genomics=_adata(IDS))
    assert not c.has("s2", "clinical") and c.has("s2", "genomics")
    assert any(e["modality"] == "clinical" and "s2" in e["reason"] for e in c.excluded)


def test_genomics_sparse_layer_and_nan():
    a = _adata(IDS)
    a.layers["counts"] = sp.csr_matrix(np.arange(20, dtype=np.float32).reshape(4, 5))
    c = Cohort(genomics=a, genomics_layer="counts")
    assert sp.issparse(c.genomics.X) and c.genomics.X[1, 0] == 5
    x = np.ones((4, 5))
    x[0, 0] = np.nan  # NaN = not measured, allowed
    assert Cohort(genomics=_adata(IDS, x=x)).genomics.n_obs == 4
    with pytest.raises(ValueError, match="layer 'nope' not found"):
        Cohort(genomics=a, genomics_layer="nope")


@pytest.mark.parametrize("form", ["set_to_genes", "gene_to_set", "series", "gmt"])
def test_gene_set_inputs(form, tmp_path):
    sets = {"A": ["G0", "G1", "GX"], "B": ["G2", "G3"], "EMPTY": ["GY"]}
    if form == "set_to_genes":
        src = sets
    elif form == "gene_to_set":
        src = {"G0": "A", "G1": ["A"], "GX": "A", "G2": "B", "G3": ["B"], "GY": "EMPTY"}
    elif form == "series":
        src = pd.Series({"G0": "A", "G1": "A", "GX": "A", "G2": "B", "G3": "B", "GY": "EMPTY"})
    else:
        src = tmp_path / "sets.gmt"
        src.write_text("".join(f"{k}\tdesc\t" + "\t".join(v) + "\n" for k, v in sets.items()))
    c = Cohort(genomics=_adata(IDS), gene_sets=src)
    assert c.gene_sets == {"A": ["G0", "G1"], "B": ["G2", "G3"]}
    reasons = " ".join(e["reason"] for e in c.excluded)
    assert "GX" in reasons and "EMPTY" in reasons
    assert "gene sets" in c.summary()


def test_bad_gene_sets(tmp_path):
    bad = tmp_path / "bad.gmt"
    bad.write_text("A\tonly_two_fields\n")
    with pytest.raises(ValueError, match="line 1"):
        Cohort(genomics=_adata(IDS), gene_sets=bad)
    with pytest.raises(ValueError, match="does not exist"):
        Cohort(genomics=_adata(IDS), gene_sets=tmp_path / "missing.gmt")
    twice = tmp_path / "twice.gmt"
    twice.write_text("A\td\tG0\nA\td\tG1\n")
    with pytest.raises(ValueError, match="gene set 'A' appears twice"):
        Cohort(genomics=_adata(IDS), gene_sets=twice)
    with pytest.raises(ValueError, match="no gene set shares a gene"):
        Cohort(genomics=_adata(IDS), gene_sets={"A": ["Z1", "Z2"]})
    with pytest.raises(ValueError, match="without genomics"):
        Cohort(clinical=_clinical(), gene_sets={"A": ["G0"]})


def test_events_normalisation_datetimes_patient_id_and_segments():
    t0 = pd.Timestamp("2020-01-01")
    ev = pd.DataFrame(
        {
            "patient_id": [1, 1, 2],
            "time": [t0, t0 + pd.Timedelta(hours=12), t0],
            "code": ["a", 5, "c"],
            "value": ["1.5", None, 2],
            "segment": [1, 0, 0],
        }
    )
    c = Cohort(events=ev)
    e = c.events
    assert e["sample_id"].tolist() == ["1", "1", "2"] and e["code"].tolist() == ["a", "5", "c"]
    assert e["time"].iloc[1] - e["time"].iloc[0] == pytest.approx(0.5)
    assert e["time"].iloc[0] == pytest.approx((t0 - pd.Timestamp("1970-01-01")).days)
    assert np.isnan(e["value"].iloc[1]) and e["value"].iloc[0] == 1.5
    assert e["segment"].tolist() == [1, 0, 0]
    assert c.events_of("1")["code"].tolist() == ["a", "5"]


def test_numbers_stored_as_text_are_days_and_object_expression_is_converted():
    ev = pd.DataFrame({"sample_id": ["a", "a"], "time": ["1.5", "3"], "code": ["x", "y"]})
    assert Cohort(events=ev).events["time"].tolist() == [1.5, 3.0]
    c = Cohort(genomics=_adata(IDS, x=np.array([["1", 2.5]] * 4, dtype=object)))
    assert c.genomics.X.dtype == np.float64 and c.genomics.X[0, 0] == 1.0


def test_events_after_index_time_are_excluded_and_recorded():
    it = pd.Series({"s1": 1.0, "s2": 10.0})
    c = Cohort(events=_events(), index_time=it)
    assert c.events_of("s1")["time"].tolist() == [0.0]
    assert c.index_time.to_dict() == {"s1": 1.0, "s2": 10.0}
    rec = [e for e in c.excluded if e["sample_id"] == "s1"]
    assert rec and rec[0]["count"] == 2 and rec[0]["modality"] == "events"
    assert "events after the index time" in c.summary()
    # a sample whose only data are events all after its index time leaves the cohort, recorded
    c2 = Cohort(
        clinical=_clinical(["s1"]),
        events=_events(),
        labels=_labels(["s1", "s2"]),
        index_time=pd.Series({"s2": -1.0}),
    )
    assert c2.sample_ids == ["s1"] and list(c2.labels.index) == ["s1"]
    assert any(e["what"] == "samples with no data left" and "s2" in e["reason"] for e in c2.excluded)
    assert list(c2.index_time.index) == ["s1"]
    with pytest.raises(ValueError, match="every sample's events are after its index time"):
        Cohort(events=_events(), index_time=pd.Series({"s1": -1.0, "s2": -1.0}))


def test_index_time_datetimes_share_the_event_axis():
    t0 = pd.Timestamp("2021-03-01")
    ev = pd.DataFrame({"sample_id": ["a", "a"], "time": [t0, t0 + pd.Timedelta(days=3)], "code": ["x", "y"]})
    c = Cohort(events=ev, index_time=pd.Series({"a": t0 + pd.Timedelta(days=1)}))
    assert c.events_of("a")["code"].tolist() == ["x"]
    assert c.index_time["a"] - c.events["time"].iloc[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- every error


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        # clinical
        (
            {"clinical": pd.concat([_clinical(), _clinical().iloc[[1]]])},
            ValueError,
            "clinical: duplicated.*'s2'",
        ),
        ({"clinical": _clinical().assign(age=[1, np.inf, 2, 3])}, ValueError, "'age' is infinite.*'s2'"),
        (
            {
                "clinical": _clinical(),
                "clinical_types": {"grade": "numeric", "er": "categorical"},
            },
            None,
            None,
        ),
        (
            {
                "clinical": _clinical().assign(grade=["1", "x", "2", "3"]),
                "clinical_types": {"grade": "numeric"},
            },
            ValueError,
            "'grade' is numeric but sample.*'s2'",
        ),
        (
            {"clinical": _clinical(), "clinical_types": {"nope": "numeric"}},
            ValueError,
            "unknown column.*'nope'",
        ),
        (
            {"clinical": _clinical(), "clinical_types": {"age": "ordinal"}},
            ValueError,
            "'numeric' or 'categorical'",
        ),
        ({"clinical": [1, 2]}, TypeError, "clinical: expected a pandas"),
        (
            {"clinical": pd.DataFrame([[1.0, 2.0]], columns=["a", "a"], index=["s1"])},
            ValueError,
            "clinical: duplicated column.*'a'",
        ),
        # genomics
        ({"genomics": _adata(["s1", "s1", "s2"])}, ValueError, "genomics obs_names: duplicated.*'s1'"),
        (
            {"genomics": _adata(IDS, x=np.array([[1.0, np.inf]] * 4))},
            ValueError,
            "genomics: infinite.*'s1'.*gene.*'G1'",
        ),
        (
            {"genomics": _adata(IDS, x=np.array([[1.0, 2.0]] * 3 + [[1.0, "high"]], dtype=object))},
            ValueError,
            "genomics: non-numeric.*'high'.*'s4'.*gene.*'G1'",
        ),
        ({"genomics": _adata(IDS, x=np.array([[True, False]] * 4, dtype=object))}, None, None),
        ({"genomics": np.ones((2, 2))}, TypeError, "genomics: expected an anndata"),
        ({"genomics": _adata(IDS).T.T[:, [0, 0]]}, ValueError, "genomics: duplicated gene name.*'G0'"),
        (
            {"genomics": _adata(["x1", "x2"]), "clinical": _clinical(), "labels": _labels()},
            ValueError,
            "genomics: none of its sample ids matches.*'x1'",
        ),
        # events
        ({"events": _events().iloc[:0]}, ValueError, "events: the table has no row"),
        ({"events": _events().drop(columns="time")}, ValueError, r"events: missing column\(s\) \['time'\]"),
        ({"events": _events().drop(columns="code")}, ValueError, r"events: missing column\(s\) \['code'\]"),
        ({"events": _events().rename(columns={"sample_id": "sid"})}, ValueError, "sample_id"),
        ({"events": _events().assign(value=["x"] + [1.0] * 5)}, ValueError, "column 'value'.*'x'.*'s1'"),
        ({"events": _events().assign(time=[0, np.nan, 1, 2, 3, 4])}, ValueError, "'time' is missing.*'s1'"),
        ({"events": _events().assign(code=[None, "a", "b", "a", "b", "a"])}, ValueError, "'code' is missing"),
        ({"events": _events().assign(segment=[0, 0, 0, -1, 0, 0])}, ValueError, "'segment'.*'s2'"),
        ({"events": _events().assign(time=["x"] * 6)}, ValueError, "events column 'time'"),
        (
            {"events": _events(), "clinical": _clinical(["s1"]), "labels": _labels(["s1"])},
            ValueError,
            "events: sample.*'s2'.*no target",
        ),
        ({"events": _events(), "index_time": pd.Series({"zz": 1.0})}, ValueError, "index_time: sample.*'zz'"),
        (
            {"events": _events(), "index_time": pd.Series([1.0, 2.0], index=["s1", "s1"])},
            ValueError,
            "index_time: duplicated.*'s1'",
        ),
        (
            {"clinical": _clinical(), "index_time": pd.Series({"s1": 1.0})},
            ValueError,
            "index_time given without",
        ),
        # targets
        ({"clinical": _clinical(), "labels": _labels(), "survival": _survival()}, ValueError, "not both"),
        (
            {"clinical": _clinical(), "labels": pd.DataFrame({"a": _labels(), "b": _labels()})},
            TypeError,
            r"labels: expected a Series.*\['a', 'b'\]",
        ),
        (
            {"clinical": _clinical(), "labels": pd.concat([_labels(), _labels().iloc[[0]]])},
            ValueError,
            "labels: duplicated.*'s1'",
        ),
        (
            {"clinical": _clinical(), "labels": pd.Series([0, 1, np.nan, 1], index=IDS)},
            ValueError,
            "labels: missing.*'s3'",
        ),
        (
            {"clinical": _clinical(["s1", "s2"]), "labels": _labels()},
            ValueError,
            "labels: target.*'s3', 's4'.*no modality",
        ),
        (
            {"clinical": _clinical(), "labels": _labels(["s1", "s2", "s3"])},
            ValueError,
            "clinical: sample.*'s4'.*no target",
        ),
        (
            {"clinical": _clinical(), "survival": _survival(time=(1, 0, 2, 3))},
            ValueError,
            "'time'.*> 0.*'s2'",
        ),
        (
            {"clinical": _clinical(), "survival": _survival(time=(1, 2, np.nan, 3))},
            ValueError,
            "'time'.*'s3'",
        ),
        (
            {"clinical": _clinical(), "survival": _survival(event=(1, 2, 0, 0))},
            ValueError,
            "'event'.*0.*1.*'s2'",
        ),
        (
            {"clinical": _clinical(), "survival": _survival().drop(columns="event")},
            ValueError,
            "survival: expected columns 'time' and 'event'",
        ),
        (
            {"clinical": _clinical(), "survival": pd.concat([_survival(), _survival().iloc[[3]]])},
            ValueError,
            "survival: duplicated.*'s4'",
        ),
        # groups
        (
            {"clinical": _clinical(), "groups": pd.Series({"s1": "P", "s2": "P"})},
            ValueError,
            "groups: sample.*'s3', 's4'",
        ),
        (
            {"clinical": _clinical(), "groups": pd.Series(["P", "P", "Q", "Q", "R"], index=IDS + ["s1"])},
            ValueError,
            "groups: duplicated.*'s1'",
        ),
        # images / general
        ({"images": np.ones((2, 3))}, TypeError, "images: expected ImageBags"),
        ({}, ValueError, "no sample has any modality"),
    ],
)
def test_errors(kwargs, exc, match):
    if exc is None:
        Cohort(**kwargs)
        return
    with pytest.raises(exc, match=match):
        Cohort(**kwargs)


def test_an_all_nan_column_is_refused_at_fit_time_only():
    # a blank column is missing data to predict (one new patient, one blank field); fitting needs values
    cohort = Cohort(clinical=_clinical().assign(empty=np.nan))
    with pytest.raises(ValueError, match="clinical: column.*'empty'.*all NaN"):
        cohort.check_fittable()


def test_duplicate_ids_after_string_conversion():
    with pytest.raises(ValueError, match="duplicated.*'1'"):
        Cohort(clinical=pd.DataFrame({"x": [1.0, 2.0]}, index=[1, "1"]))


def test_error_messages_summarise_long_id_lists():
    assert format_ids([f"s{i}" for i in range(12)]).endswith("... (12 in total)")
    with pytest.raises(ValueError, match=r"'s1', 's2', 's3', 's4', 's5', \.\.\. \(11 in total\)"):
        Cohort(
            clinical=pd.DataFrame({"x": np.ones(12)}, index=[f"s{i}" for i in range(12)]),
            labels=pd.Series([0], index=["s0"]),
        )


# ---------------------------------------------------------------------------- subset and summary


def test_subset_keeps_everything_consistent():
    c = _full(
        groups=pd.Series({"s1": "P1", "s2": "P1", "s3": "P2", "s4": "P3"}),
        genomics=_adata(IDS[:3]),
        gene_sets={"A": ["G0", "GX"]},
        index_time=pd.Series({"s1": 1.0}),
    )
    sub = c.subset(["s4", "s1"])
    assert sub.sample_ids == ["s4", "s1"] and list(sub.labels.index) == ["s4", "s1"]
    assert sub.groups.tolist() == ["P3", "P1"] and sub.patients == ["P3", "P1"]
    assert list(sub.clinical.index) == ["s4", "s1"] and list(sub.genomics.obs_names) == ["s1"]
    assert sub.images.sample_ids == ["s4", "s1"] and set(sub.events["sample_id"]) == {"s1"}
    assert sub.gene_sets == {"A": ["G0"]} and sub.classes == [0, 1]
    assert [e["sample_id"] for e in sub.excluded] == [None, "s1"]  # gene-set record + s1's cut events
    assert sub.presence().equals(c.presence().loc[["s4", "s1"]])
    only_s3 = c.subset(["s3"])
    assert only_s3.modalities == ("clinical", "genomics") and only_s3.events is None
    assert not any(e["sample_id"] == "s1" for e in only_s3.excluded)
    with pytest.raises(ValueError, match="unknown sample id.*'nope'"):
        c.subset(["s1", "nope"])
    with pytest.raises(ValueError, match="duplicated.*'s1'"):
        c.subset(["s1", "s1"])


def test_subset_does_not_revalidate_columns():
    df = _clinical()
    df.loc[["s1", "s2"], "age"] = np.nan  # age is all NaN within the subset, fine there
    sub = Cohort(clinical=df).subset(["s1", "s2"])
    assert sub.clinical["age"].isna().all()


def test_summary_content():
    c = _full(
        excluded=[
            {
                "what": "icu stays",
                "modality": "events",
                "sample_id": None,
                "count": 3,
                "reason": "shorter than 48 h",
            }
        ],
        name="demo",
    )
    text = c.summary()
    for piece in [
        "Cohort 'demo'",
        "samples: 4",
        "clinical       4 / 4",
        "genomics       3 / 4",
        "age [numeric]: 0 / 4 missing",
        "bag size min 2, median 2.5, max 3",
        "6 events, 2 distinct codes",
        "labels: 0: 2 (50%), 1: 2 (50%)",
        "    [events] icu stays: 3 (shorter than 48 h)",
    ]:
        assert piece in text, piece
    surv = Cohort(clinical=_clinical(), survival=_survival()).summary()
    assert "2 events, 2 censored (50% censoring)" in surv and "excluded: nothing" in surv
    with pytest.raises(ValueError, match="excluded: each record needs keys"):
        Cohort(clinical=_clinical(), excluded=[{"what": "x"}])


# ---------------------------------------------------------------------------- properties

MODS = ("clinical", "genomics", "images", "events")


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.lists(st.booleans(), min_size=4, max_size=4).filter(any), min_size=1, max_size=8),
    st.booleans(),
    st.data(),
)
def test_random_missingness_builds_a_valid_cohort(pattern, with_labels, data):
    ids = [f"p{i}" for i in range(len(pattern))]
    has = {m: [s for s, row in zip(ids, pattern, strict=True) if row[k]] for k, m in enumerate(MODS)}
    kw = {}
    if has["clinical"]:
        kw["clinical"] = pd.DataFrame(
            {"x": np.arange(len(has["clinical"]), dtype=float), "c": ["a"] * len(has["clinical"])},
            index=has["clinical"],
        )
    if has["genomics"]:
        kw["genomics"] = _adata(has["genomics"], n_genes=3)
    if has["images"]:
        kw["images"] = ImageBags.from_features({s: np.ones((i + 1, 4)) for i, s in enumerate(has["images"])})
    if has["events"]:
        kw["events"] = pd.DataFrame({"sample_id": has["events"], "time": 1.0, "code": "e"})
    if with_labels:
        kw["labels"] = pd.Series([i % 2 for i in range(len(ids))], index=ids)
    c = Cohort(**kw)
    assert sorted(c.sample_ids) == sorted(ids)
    pres = c.presence()
    for m in MODS:
        if m in c.modalities:
            assert sorted(pres.index[pres[m]]) == sorted(has[m])
        else:
            assert not has[m]
    chosen = data.draw(st.lists(st.sampled_from(ids), unique=True))
    sub = c.subset(chosen)
    assert sub.sample_ids == chosen and len(sub) == len(chosen)
    assert sub.presence().equals(pres.loc[chosen, list(sub.modalities)])
    if chosen:
        assert sub.subset(chosen).sample_ids == chosen


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(-5, 5)), min_size=1, max_size=30),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(-5, 5)),
)
def test_index_time_cut_keeps_or_records_every_event(rows, cut):
    ev = pd.DataFrame(rows, columns=["sample_id", "time"]).assign(code="e")
    ids = set(ev["sample_id"])
    cut = {k: v for k, v in cut.items() if k in ids}
    clin = pd.DataFrame({"x": 1.0}, index=sorted(ids))
    c = Cohort(clinical=clin, events=ev, index_time=pd.Series(cut, dtype=float))
    kept = 0 if c.events is None else len(c.events)
    cut_n = sum(e["count"] for e in c.excluded if e["what"] == "events after the index time")
    assert kept + cut_n == len(ev)
    if c.events is not None:
        assert (c.events["time"].to_numpy() <= c.events["sample_id"].map(c.index_time).to_numpy()).all()
    for s in ids - set(cut):  # default index time: the latest event, so nothing of theirs is cut
        assert len(c.events_of(s)) == int((ev["sample_id"] == s).sum())
