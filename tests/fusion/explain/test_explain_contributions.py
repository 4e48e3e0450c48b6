"""``explain(contributions=True)``: the exact modality contributions computed in the explain pass equal the
standalone ``modality_contributions``, the attention rows are unchanged, and fusing a masked bag as one
padding slot gives the same values as fusing its masked tokens."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from clinfuse.fusion.explain import contributions as contributions_module
from clinfuse.fusion.explain import modality_contributions

KIND = "modality_contribution"


@pytest.mark.parametrize("fixture", ["fitted_classifier",
                                     pytest.param("fitted_survival", marks=pytest.mark.slow)])
def test_one_pass_contributions_match_the_standalone_ones(fixture, request, tmp_path):
    fitted = request.getfixturevalue(fixture)
    model, test = fitted.model, fitted.test
    report = model.explain(test, contributions=True)
    frame = report.to_frame()
    attention = frame[frame["kind"] != KIND].reset_index(drop=True)
    pd.testing.assert_frame_equal(attention, model.explain(test).to_frame())  # attention rows unchanged

    alone = modality_contributions(model, test)
    shares = frame[frame["kind"] == KIND].reset_index(drop=True)
    assert len(shares) == len(alone.frame) > 0
    pd.testing.assert_frame_equal(shares, alone.frame.reset_index(drop=True), check_exact=False, atol=1e-5)
    for sample, value in alone.outputs.items():  # v(P) is the model's own prediction of the explain pass
        np.testing.assert_allclose(report.outputs[sample], value, atol=1e-5)
        np.testing.assert_allclose(report.base_values[sample], alone.base_values[sample], atol=1e-5)
    pd.testing.assert_frame_equal(report.modality_contributions(), alone.modality_contributions(),
                                  check_exact=False, atol=1e-5)

    streamed = model.explain(test, out=tmp_path / "a.parquet", contributions=True)
    pd.testing.assert_frame_equal(streamed.to_frame().reset_index(drop=True), frame, check_exact=False,
                                  atol=1e-6)
    assert streamed.base_values.keys() == report.base_values.keys()


@pytest.mark.slow
def test_masked_bags_fused_as_one_padding_slot_give_the_same_values(fitted_classifier, monkeypatch):
    model, test = fitted_classifier.model, fitted_classifier.test
    monkeypatch.setattr(contributions_module, "SHORT_TOKENS", 10 ** 9)  # every masked token fused
    full = modality_contributions(model, test)
    monkeypatch.setattr(contributions_module, "SHORT_TOKENS", 0)  # every masked modality: one slot
    padded = modality_contributions(model, test)
    assert len(full.frame) == len(padded.frame) > 0
    np.testing.assert_allclose(padded.frame["value"], full.frame["value"], atol=1e-5)
    np.testing.assert_allclose(padded.frame["raw_value"], full.frame["raw_value"], atol=1e-5)
    assert (full.frame["value"].abs() > 1e-4).any()  # the comparison is not between zeros
