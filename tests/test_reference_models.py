"""Saved models of the reference format still load and reproduce their predictions and attention.

``tests/data/reference_models/`` holds models saved by an earlier version of the code, with the cohort
files they were trained on and what they predicted and explained then (see ``make_reference_models.py``
there). A change that alters a prediction or an attention value by more than 1e-6 fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REFERENCE = Path(__file__).resolve().parent / "data" / "reference_models"
NAMES = sorted(p.name for p in REFERENCE.iterdir() if (p / "model").is_dir())
KEY = ["sample_id", "modality", "token", "kind", "target_class"]
NUMBERS = ["value", "raw_value", "position", "x", "y", "time"]
TEXT = ["patient_id", "slide_id", "code"]


def test_reference_models_are_present():
    assert len(NAMES) >= 4, f"reference models missing under {REFERENCE}"


@pytest.fixture(scope="module", params=NAMES)
def reference(request):
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.config import load_data_config

    folder = REFERENCE / request.param
    model = FusionModel.load(folder / "model")
    cohort = load_data_config(folder / "data.yaml").to_cohort(task=model.task, require_targets=True)
    return folder, model, cohort


def test_predictions_are_reproduced(reference):
    folder, model, cohort = reference
    want = pd.read_csv(folder / "predictions.csv", index_col=0)
    want.index = want.index.astype(str)
    if model.task == "classification":
        got = model.predict_proba(cohort)
        got.columns = [str(c) for c in got.columns]
    else:
        got = model.predict_risk(cohort).to_frame()
        if model.survival_head == "discrete":
            surv = model.predict_survival(cohort, times=[10.0, 50.0, 200.0])
            got = got.join(surv.rename(columns=lambda t: f"S({t:g})"))
    assert list(got.index) == list(want.index)
    assert list(got.columns) == list(want.columns)
    np.testing.assert_allclose(got.to_numpy(float), want.to_numpy(float), rtol=0, atol=1e-6)


def test_attention_is_reproduced(reference):
    folder, model, cohort = reference
    want = pd.read_csv(folder / "attention.csv", dtype={c: str for c in [*KEY, *TEXT]}, keep_default_na=False,
                       na_values={c: [""] for c in NUMBERS})
    got = model.explain(cohort).to_frame()
    assert sorted(got.columns) == sorted(want.columns)
    assert sorted(got["kind"].unique()) == sorted(want["kind"].unique())
    for col in [*KEY, *TEXT]:  # text as written to CSV: a missing value is ""
        got[col] = got[col].astype(object).where(got[col].notna(), "").astype(str)
    assert len(got) == len(want)
    merged = want.merge(got, on=KEY, how="outer", suffixes=("_want", "_got"), indicator=True)
    unmatched = merged[merged["_merge"] != "both"]
    assert unmatched.empty, f"rows only on one side:\n{unmatched[KEY + ['_merge']].head()}"
    for col in NUMBERS:
        np.testing.assert_allclose(merged[f"{col}_got"].to_numpy(float),
                                   merged[f"{col}_want"].to_numpy(float),
                                   rtol=0, atol=1e-6, equal_nan=True, err_msg=f"column {col}")
    for col in TEXT:
        assert (merged[f"{col}_got"] == merged[f"{col}_want"]).all(), f"column {col} differs"
