"""ImageBags.from_features(folder, patient_of=...): a patient's slides form one bag; unmatched slides are
listed, never dropped silently."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
from clinfuse.datasets import Cohort, ImageBags

SLIDES = {  # slide id -> number of patches; two slides of one patient, one of another, one stray file
    "TCGA-A1-A0SB-01Z-00-DX1.1234": 3,
    "TCGA-A1-A0SB-01Z-00-DX2.5678": 2,
    "TCGA-B6-A0RE-01Z-00-DX1.9abc": 4,
    "control_slide": 1,
}


@pytest.fixture
def folder(tmp_path):
    """One CLAM-style ``<slide>.h5`` per slide; the features of slide k, patch j are ``k * 10 + j``."""
    for k, (sid, n) in enumerate(SLIDES.items()):
        with h5py.File(tmp_path / f"{sid}.h5", "w") as fh:
            fh["features"] = (k * 10 + np.arange(n, dtype=np.float32))[:, None].repeat(4, axis=1)
            fh["coords"] = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.int64) * 256
    return tmp_path


def test_tcga_rule_joins_a_patients_slides_and_lists_the_stray_one(folder):
    with pytest.warns(UserWarning, match="control_slide"):
        bags = ImageBags.from_features(folder, patient_of="tcga")
    assert bags.sample_ids == ["TCGA-A1-A0SB", "TCGA-B6-A0RE"]
    assert bags.unmatched_slides == ["control_slide"]
    assert bags.n_patches("TCGA-A1-A0SB") == 5
    assert bags.slide_ids("TCGA-A1-A0SB") == ["TCGA-A1-A0SB-01Z-00-DX1.1234", "TCGA-A1-A0SB-01Z-00-DX2.5678"]
    bag = bags.load("TCGA-A1-A0SB")
    np.testing.assert_array_equal(bag.data[:, 0], [0, 1, 2, 10, 11])  # slide order, then patch order
    np.testing.assert_array_equal(bag.positions, [0, 1, 2, 0, 1])
    assert bag.slide_ids == ["TCGA-A1-A0SB-01Z-00-DX1.1234"] * 3 + ["TCGA-A1-A0SB-01Z-00-DX2.5678"] * 2
    np.testing.assert_array_equal(bag.coords[:, 0], [0, 256, 512, 0, 256])
    assert bags.subset(["TCGA-B6-A0RE"]).unmatched_slides == ["control_slide"]


def test_summary_lists_unmatched_slides(folder):
    with pytest.warns(UserWarning):
        bags = ImageBags.from_features(folder, patient_of="tcga")
    labels = pd.Series({"TCGA-A1-A0SB": 1, "TCGA-B6-A0RE": 0})
    cohort = Cohort(images=bags, labels=labels)
    text = cohort.summary()
    assert "1 slide(s) matched no patient (left out): 'control_slide'" in text


def test_mapping_and_callable(folder):
    mapping = {"TCGA-A1-A0SB-01Z-00-DX1.1234": "p1", "TCGA-A1-A0SB-01Z-00-DX2.5678": "p1",
               "TCGA-B6-A0RE-01Z-00-DX1.9abc": "p2", "control_slide": "p2"}
    bags = ImageBags.from_features(folder, patient_of=mapping)
    assert bags.sample_ids == ["p1", "p2"] and bags.unmatched_slides == []
    assert bags.n_patches("p2") == 5
    bags = ImageBags.from_features(folder, patient_of=pd.Series(mapping))
    assert bags.n_patches("p1") == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every slide matched: no warning
        called = ImageBags.from_features(folder, patient_of=lambda sid: sid.split("-")[0])
    assert called.sample_ids == ["TCGA", "control_slide"]
    assert called.n_patches("TCGA") == 9


def test_a_mapping_that_misses_slides_warns_or_raises(folder):
    partial = {"TCGA-B6-A0RE-01Z-00-DX1.9abc": "p2"}
    with pytest.warns(UserWarning, match=r"3 slide\(s\) matched no patient"):
        bags = ImageBags.from_features(folder, patient_of=partial)
    assert bags.sample_ids == ["p2"]
    assert sorted(bags.unmatched_slides) == sorted(set(SLIDES) - set(partial))
    with pytest.raises(ValueError, match="control_slide"):
        ImageBags.from_features(folder, patient_of=partial, unmatched="raise")
    with pytest.raises(ValueError, match="no slide matched any patient"):
        ImageBags.from_features(folder, patient_of={"other": "p"})


def test_bad_rules(folder):
    with pytest.raises(ValueError, match="not a known rule"):
        ImageBags.from_features(folder, patient_of="tcga12")
    with pytest.raises(TypeError, match="patient_of must be"):
        ImageBags.from_features(folder, patient_of=12)
    with pytest.raises(ValueError, match="unmatched must be"):
        ImageBags.from_features(folder, patient_of="tcga", unmatched="ignore")


def test_data_config_patient_of_table(folder):
    from clinfuse.fusion.config import DataConfig

    pd.DataFrame({"slide_id": list(SLIDES), "patient_id": ["p1", "p1", "p2", "p2"]}).to_csv(
        folder / "slides.csv", index=False)
    pd.DataFrame({"sample_id": ["p1", "p2"], "label": [1, 0]}).to_csv(folder / "targets.csv", index=False)
    spec = {"images": ".", "patient_of": "slides.csv", "targets": "targets.csv", "label": "label"}
    cohort = DataConfig.parse(spec, base=folder).to_cohort(task="classification", require_targets=True)
    assert cohort.images.n_patches("p1") == 5 and cohort.images.n_patches("p2") == 5
    with pytest.raises(ValueError, match="needs image_kind: features"):
        DataConfig.parse({**spec, "image_kind": "patches"}, base=folder)
