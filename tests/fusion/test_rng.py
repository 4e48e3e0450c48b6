"""``fit`` seeds what it draws from itself and leaves the caller's random generators (python, numpy, torch)
and Lightning's seed variables as it found them."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion import FusionModel

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "batch_size": 8, "max_epochs": 2, "max_patches": 4,
        "verbose": False, "modality_dropout": 0.3}


@pytest.fixture(scope="module")
def cohort():
    cohort, _ = make_synthetic_cohort(24, n_patches=(6, 12), feature_dim=8, n_genes=12, n_codes=6, seed=3)
    return cohort


def _states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


@pytest.mark.parametrize("env", [None, "123"])
def test_fit_leaves_the_callers_generators_and_seed_variables_alone(cohort, monkeypatch, env):
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    if env is not None:
        monkeypatch.setenv("PL_GLOBAL_SEED", env)
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    py, npy, th = _states()
    FusionModel(**TINY, seed=5).fit(cohort)
    assert random.getstate() == py
    after = np.random.get_state()
    assert after[0] == npy[0] and np.array_equal(after[1], npy[1]) and after[2:] == npy[2:]
    assert torch.equal(torch.get_rng_state(), th)
    assert os.environ.get("PL_GLOBAL_SEED") == env and "PL_SEED_WORKERS" not in os.environ
    # The caller's next draws are the ones it would have had without the fit.
    assert random.random() == random.Random(11).random()


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_fit_is_deterministic_whatever_the_callers_generators_hold(cohort):
    torch.manual_seed(1)
    np.random.seed(1)
    a = FusionModel(**TINY, seed=5).fit(cohort)
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    b = FusionModel(**TINY, seed=5).fit(cohort)
    for k, v in a.network_.state_dict().items():
        torch.testing.assert_close(b.network_.state_dict()[k], v, rtol=0, atol=0)
    assert a.history_ == b.history_
