"""Ids with leading zeros stay text; ids that match another input's only after a conversion are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from clinfuse.datasets import Cohort
from clinfuse.datasets.files import read_table
from clinfuse.fusion.config import DataConfig

IDS = ["001", "002", "003", "004", "005", "006"]


def _bags(ids):
    rng = np.random.default_rng(0)
    return {i: rng.normal(size=(3, 4)).astype(np.float32) for i in ids}


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_read_table_keeps_leading_zeros(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    pd.DataFrame({"sample_id": IDS, "age": range(6)}).to_csv(path, sep="\t" if suffix == ".tsv" else ",",
                                                             index=False)
    frame = read_table(path, "sample_id", "data.clinical")
    assert list(frame.index) == IDS
    assert frame["age"].dtype.kind == "i"  # only the id column is read as text


def test_a_data_config_with_zero_padded_ids_gives_one_sample_per_patient(tmp_path):
    pd.DataFrame({"sample_id": IDS, "age": [50.0, 61, 47, 70, 55, 66]}).to_csv(tmp_path / "clinical.csv",
                                                                              index=False)
    (tmp_path / "features").mkdir()
    for sid, bag in _bags(IDS).items():
        np.save(tmp_path / "features" / f"{sid}.npy", bag)
    config = DataConfig.parse({"clinical": "clinical.csv", "images": "features"}, base=tmp_path)
    cohort = config.to_cohort(task="classification", require_targets=False)
    assert sorted(cohort.sample_ids) == IDS  # 6 samples, not 12 from 6 patients


def test_a_manifest_keeps_leading_zeros(tmp_path):
    for sid, bag in _bags(IDS[:2]).items():
        np.save(tmp_path / f"{sid}.npy", bag)
    pd.DataFrame({"sample_id": IDS[:2], "path": [f"{s}.npy" for s in IDS[:2]]}).to_csv(
        tmp_path / "manifest.csv", index=False)
    config = DataConfig.parse({"images": "manifest.csv"}, base=tmp_path)
    assert config.to_cohort(task="classification", require_targets=False).sample_ids == IDS[:2]


@pytest.mark.parametrize("numeric", [["1", "2", "3", "4", "5", "6"], [f"{i}.0" for i in range(1, 7)]])
def test_cohort_refuses_ids_that_match_only_after_a_conversion(numeric):
    clinical = pd.DataFrame({"age": np.arange(6.0)}, index=IDS if numeric[0] == "1" else numeric)
    images = _bags(numeric if numeric[0] == "1" else [str(i) for i in range(1, 7)])
    with pytest.raises(ValueError, match=r"sample ids of clinical and images match only after a conversion"
                                         r": '(001|1\.0)' \(clinical\) vs '1' \(images\)"):
        Cohort(clinical=clinical, images=images)


def test_labels_that_match_only_after_a_conversion_are_named():
    with pytest.raises(ValueError, match=r"'001' \(clinical\) vs '1' \(labels\)"):
        Cohort(clinical=pd.DataFrame({"age": np.arange(6.0)}, index=IDS),
               labels=pd.Series([0, 1] * 3, index=range(1, 7)))


def test_ids_that_match_exactly_are_fine_even_when_some_look_alike():
    ids = ["1", "01", "2"]  # two distinct samples in both inputs: nothing to convert
    cohort = Cohort(clinical=pd.DataFrame({"age": [1.0, 2, 3]}, index=ids), images=_bags(ids))
    assert cohort.sample_ids == ids
