"""A FusionModel with the default aggregator on a clinical-only cohort: fit, predict, save/load, explain."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion import FusionModel
from clinfuse.fusion.build import resolve_aggregator

SMALL = {"verbose": False, "max_epochs": 2, "d_model": 16, "n_heads": 2}


@pytest.mark.parametrize("task", ["classification", "survival"])
def test_default_aggregator_fits_a_clinical_only_cohort(task, tmp_path):
    cohort, _ = make_synthetic_cohort(40, task=task, modalities=("clinical",), seed=0)
    model = FusionModel(task=task, **SMALL).fit(cohort)
    assert model.get_params()["aggregator"] is None  # the user's value, unchanged (sklearn)
    assert model.aggregator_ == "hierarchical"
    if task == "classification":
        pred = model.predict_proba(cohort).to_numpy()
        np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-6)
    else:
        pred = model.predict_risk(cohort).to_numpy()
        assert model.predict_survival(cohort, [1.0, 5.0]).shape == (len(cohort), 2)
    assert pred.shape[0] == len(cohort) and np.isfinite(pred).all()

    folder = model.save(tmp_path / "model")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["network"]["aggregator"]["name"] == "hierarchical"
    loaded = FusionModel.load(folder)
    assert loaded.aggregator is None and loaded.aggregator_ == "hierarchical"
    again = (loaded.predict_proba(cohort) if task == "classification" else loaded.predict_risk(cohort))
    np.testing.assert_allclose(again.to_numpy(), pred, atol=1e-6)

    frame = model.explain(cohort).to_frame()
    assert "feature" in set(frame["kind"]) and set(frame["sample_id"]) == set(cohort.sample_ids)


def test_default_aggregator_stays_persam_with_an_instance_modality():
    cohort, _ = make_synthetic_cohort(30, modalities=("clinical", "images"), seed=0)
    model = FusionModel(**SMALL).fit(cohort)
    assert model.aggregator is None and model.aggregator_ == "persam"
    for modalities in (["clinical", "genomics"], ["events"], ["clinical", "images"]):
        assert resolve_aggregator(None, modalities) == "persam"
    assert resolve_aggregator(None, ["clinical"]) == "hierarchical"
    assert resolve_aggregator("concat", ["clinical", "images"]) == "concat"


def test_explicit_persam_on_a_clinical_only_cohort_is_a_clear_error():
    cohort, _ = make_synthetic_cohort(30, modalities=("clinical",), seed=0)
    with pytest.raises(ValueError, match="persam needs an instance modality"):
        FusionModel(aggregator="persam", **SMALL).fit(cohort)
