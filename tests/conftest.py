"""Shared, session-scoped fixtures: the real cohorts' folder, one small trained classifier and one trained
survival model.

Tests that only read a fitted model use these, so the suite trains each of them once. Both train on the
synthetic cohort (all four modalities, some missing) in a few seconds. The real cohorts (GSE7390,
MIMIC-III demo, BreastMNIST, H&E tiles) are not part of the repository: tests that read them skip, with the
path they looked for, when the folder is absent, and fail instead where CLINFUSE_REQUIRE_SHARED_DATA is set
(``.ci/run`` sets it when the folder is there, so that a cohort missing from it is an error, not a skip).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# Tiny models on a busy 2-core machine: intra-op thread synchronisation costs far more than it gains
# (a 30-token transformer layer ran ~25x slower with the default threads while other jobs ran).
torch.set_num_threads(1)

SHARED_DATA_ENV = "CLINFUSE_SHARED_DATA"
REQUIRE_ENV = "CLINFUSE_REQUIRE_SHARED_DATA"
"""Set (to anything but 0 / empty) where the real cohorts must be there, as in CI: an absent folder or cohort
then fails the tests that read it instead of skipping them."""
# The default: a `shared/data` folder next to the repository checkout.
DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "batch_size": 8, "max_epochs": 3,
         "early_stopping_patience": 2, "max_patches": 16, "verbose": False, "seed": 0}


def _absent(message: str) -> None:
    """Skip, or fail where the real cohorts are required (:data:`REQUIRE_ENV`)."""
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{message} ({REQUIRE_ENV} is set: the real cohorts are required)")
    pytest.skip(message)


def _shared_data_root() -> Path:
    value = os.environ.get(SHARED_DATA_ENV)
    return Path(value).expanduser() if value else DEFAULT_SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real cohorts' folder: ``$CLINFUSE_SHARED_DATA``, else ``<repo>/../shared/data``; skips if none."""
    root = _shared_data_root()
    if not root.is_dir():
        _absent(f"real cohorts not found at {root}: put them there or set {SHARED_DATA_ENV}=/path")
    return root


@pytest.fixture(scope="session")
def shared_path(shared_data: Path) -> Callable[..., Path]:
    """``shared_path("gse7390_etc")`` -> that path inside ``shared_data``; skips if it is missing."""

    def resolve(*parts: str) -> Path:
        path = shared_data.joinpath(*parts)
        if not path.exists():
            wanted = "/".join(parts)
            _absent(f"{path} not found: set {SHARED_DATA_ENV} to a real-cohort folder that has {wanted}")
        return path

    return resolve


def _cohort(task: str, n: int = 48, seed: int = 0):
    from clinfuse.datasets import make_synthetic_cohort

    return make_synthetic_cohort(n, task=task, n_patches=(6, 16), feature_dim=16, n_genes=24, n_codes=12,
                                 seed=seed)


def _fit(task: str, **kw) -> SimpleNamespace:
    from clinfuse.datasets import train_validation_split
    from clinfuse.fusion import FusionModel

    cohort, truth = _cohort(task)
    train_ids, test_ids = train_validation_split(cohort, fraction=0.25, seed=1)
    train, test = cohort.subset(train_ids), cohort.subset(test_ids)
    model = FusionModel(task=task, **{**SMALL, **kw}).fit(train)
    return SimpleNamespace(model=model, cohort=cohort, train=train, test=test, truth=truth)


@pytest.fixture(scope="session")
def fitted_classifier() -> SimpleNamespace:
    """PersAM classifier: ``.model`` fitted on ``.train``; ``.test`` held out; ``.cohort`` = both."""
    return _fit("classification")


@pytest.fixture(scope="session")
def fitted_survival() -> SimpleNamespace:
    """PersAM discrete-time survival model, same layout as ``fitted_classifier``."""
    return _fit("survival", n_time_bins=3)


@pytest.fixture(scope="session")
def small_cohort():
    """A tiny classification cohort (clinical + genomics only) for tests that train many models."""
    from clinfuse.datasets import make_synthetic_cohort

    cohort, _ = make_synthetic_cohort(30, modalities=("clinical", "genomics"), n_genes=12, seed=3)
    return cohort
