"""Fixtures of the fusion tests that several modules share."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def which_model():
    """``which(models, path)`` -> "a" or "b": the model loaded from ``path`` predicts on ``models.cohort``
    exactly as ``models.a`` (``models.pa``) or ``models.b`` (``models.pb``); AssertionError for any other
    (a mixed or damaged model)."""
    from clinfuse.fusion import FusionModel

    def which(models, path) -> str:
        p = FusionModel.load(path).predict_proba(models.cohort).to_numpy()
        for name in ("a", "b"):
            if np.array_equal(p, getattr(models, f"p{name}")):
                return name
        raise AssertionError(f"{path} holds neither model: a mixed or damaged model")

    return which
