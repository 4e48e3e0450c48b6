"""Loaders of the real cohorts, checked against the counts in each folder's SOURCE.txt."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clinfuse.datasets import breastmnist_split_ids, load_breastmnist, load_gse7390, load_mimic3_demo


# ---------------------------------------------------------------------------------------------- GSE7390
@pytest.fixture(scope="module")
def gse_dir(shared_path) -> Path:
    return shared_path("gse7390_etc")


@pytest.fixture(scope="module")
def gse(gse_dir):
    return load_gse7390(gse_dir)


def test_gse7390_counts(gse):
    # SOURCE.txt: 198 patients, 4 clinical, 76 probes, e.tdm 51 events / 147 censored
    assert len(gse) == 198 and gse.task == "survival"
    assert gse.survival["event"].sum() == 51 and (gse.survival["event"] == 0).sum() == 147
    assert (gse.survival["time"] > 0).all()
    assert gse.genomics.shape == (198, 76)
    assert list(gse.clinical.columns) == ["age", "size", "grade", "er"]
    assert gse.modalities == ("clinical", "genomics")


def test_gse7390_columns_and_notes(gse):
    assert gse.clinical_types == {
        "age": "numeric",
        "size": "numeric",
        "grade": "categorical",
        "er": "categorical",
    }
    assert set(gse.clinical["grade"].dropna()) == {
        "well differentiated",
        "intermediate",
        "poorly differentiated",
    }
    assert gse.clinical["grade"].isna().sum() == 2
    assert set(gse.clinical["er"]) == {"negative", "positive"}
    note = [e for e in gse.excluded if "unkown" in e["what"]]
    assert len(note) == 1 and note[0]["count"] == 2 and note[0]["modality"] == "clinical"
    assert "219340_s_at" in gse.genomics.var_names and not any(
        v.startswith("X") for v in gse.genomics.var_names
    )
    assert gse.genomics.var.loc["219340_s_at", "column"] == "X219340_s_at"
    assert gse.sample_ids[0] == "GSE7390_001" and gse.sample_ids[-1] == "GSE7390_198"
    assert "unkown" in gse.summary()


def test_gse7390_accepts_the_file_and_rejects_bad_paths(gse, gse_dir, tmp_path):
    same = load_gse7390(gse_dir / "breast_cancer_GSE7390-metastasis.arff")
    pd.testing.assert_frame_equal(same.survival, gse.survival)
    with pytest.raises(ValueError, match="breast_cancer_GSE7390"):
        load_gse7390(tmp_path)


# ------------------------------------------------------------------------------------------- MIMIC-III
@pytest.fixture(scope="module")
def mimic_dir(shared_path) -> Path:
    return shared_path("mimic3_demo")


@pytest.fixture(scope="module")
def mimic(mimic_dir):
    start = time.perf_counter()
    cohort = load_mimic3_demo(mimic_dir)
    return cohort, time.perf_counter() - start


def test_mimic_before_exclusion_matches_source(mimic_dir):
    # SOURCE.txt: 100 patients, 129 admissions, 40 in-hospital deaths. A prediction time of one minute after
    # admission excludes no admission, so the loader must see all of them.
    raw = pd.read_csv(mimic_dir / "ADMISSIONS.csv", usecols=["subject_id", "hadm_id", "hospital_expire_flag"])
    assert len(raw) == 129 and raw["subject_id"].nunique() == 100 and raw["hospital_expire_flag"].sum() == 40
    all_adm = load_mimic3_demo(mimic_dir, prediction_hours=1 / 60, include=("transfers",))
    assert len(all_adm) == 129 and len(all_adm.patients) == 100 and all_adm.labels.sum() == 40
    assert not [e for e in all_adm.excluded if e["what"].startswith("admissions")]
    assert sorted(all_adm.sample_ids) == sorted(raw["hadm_id"].astype(str))


def test_mimic_48h_exclusion_is_recorded(mimic):
    cohort, seconds = mimic
    assert seconds < 10.0
    rec = [e for e in cohort.excluded if e["what"] == "admissions ended before the prediction time"]
    assert len(rec) == 1
    # what remains after excluding admissions that end within 48 h (measured on the demo, see the docstring)
    assert len(cohort) + rec[0]["count"] == 129
    assert (len(cohort), len(cohort.patients), int(cohort.labels.sum())) == (115, 87, 29)
    for sid in cohort.sample_ids:
        assert sid not in rec[0]["reason"]
    assert cohort.task == "classification" and cohort.classes == [0, 1]
    assert cohort.groups.nunique() == 87 and cohort.groups.index.tolist() == cohort.sample_ids
    assert "admissions ended before the prediction time" in cohort.summary()


def test_mimic_events_respect_the_prediction_time(mimic):
    cohort, _ = mimic
    ev = cohort.events
    assert (ev["time"] <= 2.0 + 1e-9).all()
    assert np.allclose(cohort.index_time.loc[cohort.sample_ids], 2.0)
    assert not [e for e in cohort.excluded if e["what"] == "events after the index time"]  # cut by the loader
    assert next(e for e in cohort.excluded if e["what"] == "events after the prediction time")["count"] > 0
    prefixes = set(ev["code"].str.split(":").str[0])
    assert prefixes == {"rx", "in", "out", "proc", "micro", "xfer", "dx", "px"}
    icd = ev[ev["code"].str.startswith(("dx:", "px:"))]
    assert len(icd) and (icd["segment"] >= 1).all()  # ICD codes only from earlier admissions
    assert (icd["time"] < 0).all()
    assert (ev["segment"] >= 0).all() and (ev.loc[ev["segment"] > 0, "time"] < 0).all()


def test_mimic_date_only_times_sit_at_end_of_day(mimic, mimic_dir):
    cohort, _ = mimic
    adm = pd.read_csv(mimic_dir / "ADMISSIONS.csv", usecols=["hadm_id", "admittime"],
                      parse_dates=["admittime"])
    admit = adm.set_index(adm["hadm_id"].astype(str))["admittime"]
    rx = cohort.events[cohort.events["code"].str.startswith("rx:")]
    when = (rx["sample_id"].map(admit) + pd.to_timedelta(rx["time"], unit="D")).dt.round("min")
    assert len(rx) and (when == when.dt.normalize()).all()  # midnight ending the order's day
    raw = pd.read_csv(
        mimic_dir / "PRESCRIPTIONS.csv", usecols=["hadm_id", "startdate"], parse_dates=["startdate"]
    )
    first_day = raw.groupby(raw["hadm_id"].astype(str))["startdate"].min()
    own = rx[rx["segment"] == 0]
    earliest = own.groupby("sample_id")["time"].min()
    expected = (first_day[earliest.index] + pd.Timedelta(days=1) - admit[earliest.index]) / pd.Timedelta(
        days=1
    )
    np.testing.assert_allclose(earliest.to_numpy(), expected.to_numpy(), atol=1e-6)


def test_mimic_clinical(mimic):
    cohort, _ = mimic
    clin = cohort.clinical
    assert list(clin.columns) == ["age", "gender", "admission_type"]
    assert clin["age"].between(15, 90).all() and (clin["age"] == 90).any()
    assert set(clin["gender"]) == {"F", "M"}
    capped = [e for e in cohort.excluded if e["what"].startswith("age above 89")]
    assert capped and capped[0]["count"] == (clin["age"] == 90).sum()


def test_mimic_options(mimic_dir):
    only = load_mimic3_demo(mimic_dir, include=("transfers", "icd"), history=False)
    assert set(only.events["code"].str.split(":").str[0]) == {"xfer"}  # no history -> no ICD codes at all
    assert (only.events["segment"] == 0).all()
    with pytest.raises(ValueError, match="labevents"):
        load_mimic3_demo(mimic_dir, include=("labevents",))
    with pytest.raises(ValueError, match="prediction_hours"):
        load_mimic3_demo(mimic_dir, prediction_hours=0)
    with pytest.raises(ValueError, match="folder"):
        load_mimic3_demo(mimic_dir / "ADMISSIONS.csv")


# ----------------------------------------------------------------------------------------- BreastMNIST
@pytest.fixture(scope="module")
def breast_dir(shared_path) -> Path:
    return shared_path("breastmnist")


@pytest.fixture(scope="module")
def breast(breast_dir):
    return load_breastmnist(breast_dir)


def test_breastmnist_counts(breast):
    # SOURCE.txt: train 546 (147 malignant / 399 normal+benign), val 78 (21/57), test 156 (42/114)
    assert len(breast) == 780 and breast.modalities == ("images",)
    assert breast.classes == ["malignant", "normal_benign"]
    splits = breastmnist_split_ids(breast)
    expected = {"train": (546, 147), "val": (78, 21), "test": (156, 42)}
    for name, (n, malignant) in expected.items():
        ids = splits[name]
        assert len(ids) == n and all(s.startswith(f"{name}_") for s in ids)
        assert (breast.labels[ids] == "malignant").sum() == malignant


def test_breastmnist_bags(breast, breast_dir):
    assert breast.images.kind == "pixels" and breast.images.pixel_shape == (1, 28, 28)
    bag = breast.images.load("test_0155")
    assert bag.data.shape == (1, 1, 28, 28) and bag.data.dtype == np.float32
    assert 0.0 <= bag.data.min() and bag.data.max() <= 1.0 and bag.data.max() > 0.1
    with np.load(breast_dir / "breastmnist.npz") as npz:
        np.testing.assert_allclose(bag.data[0, 0], npz["test_images"][155] / 255.0, atol=1e-6)
        assert breast.labels["test_0155"] == (
            "malignant" if npz["test_labels"].reshape(-1)[155] == 0 else "normal_benign"
        )


def test_breastmnist_single_split(breast, breast_dir):
    train = load_breastmnist(breast_dir / "breastmnist.npz", split="train")
    assert len(train) == 546 and (train.labels == "malignant").sum() == 147
    assert train.name == "BreastMNIST (train)"
    assert breastmnist_split_ids(train)["val"] == []
    sub = breast.subset(breastmnist_split_ids(breast)["val"])
    assert {k: len(v) for k, v in breastmnist_split_ids(sub).items()} == {"train": 0, "val": 78, "test": 0}
    with pytest.raises(ValueError, match="split"):
        load_breastmnist(breast_dir, split="validation")
    with pytest.raises(ValueError, match="does not start with"):
        breastmnist_split_ids(["p1"])
