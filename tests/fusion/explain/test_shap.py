"""SHAP attributions (kind ``shap``) for clinical and genomic inputs, and their agreement with attention."""

from __future__ import annotations

import numpy as np
import pytest
from clinfuse.fusion.explain.shap import attention_shap_agreement, shap_values


@pytest.fixture(scope="module")
def few(fitted_classifier):
    test = fitted_classifier.test
    ids = [s for s in test.sample_ids if test.has(s, "clinical") and test.has(s, "genomics")][:3]
    return fitted_classifier.model, test.subset(ids), fitted_classifier.train


@pytest.mark.slow  # the first explainer call of a session compiles shap's numba kernels (seconds)
@pytest.mark.parametrize("modality", ["clinical", "genomics"])
def test_rows_are_signed_per_class_and_additive(few, modality):
    model, cohort, train = few
    report = model.shap_values(cohort, modality=modality, background=train, n_background=8)
    frame = report.to_frame()
    assert set(frame["kind"]) == {"shap"} and set(frame["modality"]) == {modality}
    assert set(frame["sample_id"]) == set(cohort.sample_ids)
    assert set(frame["target_class"]) == {str(c) for c in model.classes_}
    schema = model.preprocessor_.schema_[modality]
    if modality == "clinical":
        expected = len(schema["numeric"]) + len(schema["categorical"])
    else:
        expected = len(schema["genes"])
    assert frame.groupby(["sample_id", "target_class"]).size().eq(expected).all()
    assert (frame["value"] < 0).any() and (frame["value"] > 0).any()  # signed, not normalised
    for sample in cohort.sample_ids:  # efficiency: attributions sum to f(x) - E_background[f]
        per_class = frame[frame.sample_id == sample].groupby("target_class")["value"].sum()
        total = per_class.reindex([str(c) for c in model.classes_]).to_numpy()
        assert np.allclose(total, report.outputs[sample] - report.base_values[sample], atol=1e-4)


@pytest.mark.slow
def test_agreement_with_attention(few):
    model, cohort, train = few
    report = shap_values(model, cohort, modality="clinical", background=train, n_background=8)
    agreement = attention_shap_agreement(model.explain(cohort), report)
    assert list(agreement.columns) == ["sample_id", "n_tokens", "spearman"]
    assert set(agreement["sample_id"]) == set(cohort.sample_ids)
    clinical = model.preprocessor_.schema_["clinical"]
    n_vars = len(clinical["numeric"]) + len(clinical["categorical"])
    assert agreement["n_tokens"].eq(n_vars).all()
    rho = agreement["spearman"].dropna()
    assert ((rho >= -1) & (rho <= 1)).all()


def test_bad_requests(few, fitted_classifier):
    model, cohort, _ = few
    with pytest.raises(ValueError, match="modality must be one of"):
        shap_values(model, cohort, modality="images")
    from clinfuse.fusion import FusionModel

    with pytest.raises(ValueError, match="not fitted"):
        shap_values(FusionModel(), cohort, modality="clinical")
    with pytest.raises(ValueError, match="not fitted"):
        FusionModel().shap_values(cohort)
