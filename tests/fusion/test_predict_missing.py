"""Predicting with a blank value, a blank or dropped clinical column, or a missing modality: the trained
"missing" case, never an error, and recorded (a DataWarning, the ``missing`` column of predictions.csv)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from clinfuse.datasets import Cohort, Preprocessor
from clinfuse.datasets.missingness import DataWarning, missing_variables
from clinfuse.fusion import FusionModel

BLANK = "have no value for any sample (all NaN); drop them or provide values"


def _predict(model, cohort):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proba = model.predict_proba(cohort)
    return proba, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def test_one_new_patient_with_a_blank_field_is_predicted(fitted_classifier):
    model, test = fitted_classifier.model, fitted_classifier.test
    sid = next(s for s in test.sample_ids if s in test.clinical.index)
    row = test.clinical.loc[[sid]].copy()
    row["age"] = np.nan
    cohort = Cohort(clinical=row)  # refused before: column 'age' all NaN in this cohort
    proba, messages = _predict(model, cohort)
    assert proba.shape == (1, len(model.classes_)) and np.isfinite(proba.to_numpy()).all()
    assert any("'age' have no value in this cohort: treated as missing" in m for m in messages)
    assert "age" in missing_variables(model.preprocessor_, cohort)[sid].split("; ")


def test_a_dropped_column_and_missing_modalities_are_the_missing_case(fitted_classifier):
    model, test = fitted_classifier.model, fitted_classifier.test
    clinical = test.clinical.drop(columns=["age", "site"])
    cohort = Cohort(clinical=clinical)  # no genomics, images or events either
    proba, messages = _predict(model, cohort)
    assert np.isfinite(proba.to_numpy()).all()
    assert any("'age', 'site' seen at fit time are absent: treated as missing for every sample" in m
               for m in messages)
    missing = missing_variables(model.preprocessor_, cohort)
    first = missing.iloc[0].split("; ")
    assert {"age", "site", "genomics", "images", "events"} <= set(first)
    # the same prediction as an explicit NaN column: a dropped column is exactly the trained missing case
    blank = Cohort(clinical=test.clinical.assign(age=np.nan, site=np.nan))
    assert np.allclose(model.predict_proba(blank).to_numpy(), proba.to_numpy(), atol=1e-6)


def test_all_nan_column_still_refused_when_fitting(small_cohort):
    clinical = small_cohort.clinical.assign(blank=np.nan)
    cohort = Cohort(clinical=clinical, genomics=small_cohort.genomics, labels=small_cohort.labels)
    pattern = r"column\(s\) 'blank' " + BLANK.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=pattern):
        cohort.check_fittable()
    with pytest.raises(ValueError, match="'blank' have no value for any sample"):
        FusionModel(max_epochs=1, verbose=False).fit(cohort)
    with pytest.raises(ValueError, match="'blank' have no value for any sample"):
        Preprocessor().fit(cohort)


def test_cli_predictions_list_the_missing_variables(tmp_path):
    import yaml
    from clinfuse.datasets import make_synthetic_cohort
    from clinfuse.fusion.cli import main

    cohort, _ = make_synthetic_cohort(24, n_patches=(3, 5), feature_dim=8, n_genes=10, n_codes=6, seed=4,
                                      modalities=("clinical", "images"))
    from clinfuse.fusion.config import write_cohort_files

    spec = write_cohort_files(cohort, tmp_path / "data")
    run = {"task": "classification", "data": spec,
           "model": {"d_model": 8, "n_heads": 2, "max_epochs": 1, "batch_size": 8, "verbose": False}}
    (tmp_path / "data" / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["train", "--config", str(tmp_path / "data" / "run.yaml"), "--out", str(tmp_path / "m")]) == 0
    new = tmp_path / "new"
    new.mkdir()
    first = cohort.sample_ids[0]
    pd.DataFrame({"sample_id": [first], "age": [np.nan], "site": ["site_a"]}).to_csv(new / "clinical.csv",
                                                                                    index=False)
    (new / "data.yaml").write_text(yaml.safe_dump({"clinical": "clinical.csv"}))
    with pytest.warns(DataWarning):
        assert main(["predict", "--model", str(tmp_path / "m"), "--data", str(new / "data.yaml"),
                     "--out", str(tmp_path / "p")]) == 0
    preds = pd.read_parquet(tmp_path / "p" / "predictions.parquet")
    listed = preds.loc[first, "missing"].split("; ")
    assert "age" in listed and "images" in listed and "biomarker_level" in listed
