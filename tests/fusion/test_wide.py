"""The linear ("wide") term: its module, its place in the network configuration, the default, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.datasets.loading import make_loader
from clinfuse.fusion import FusionModel
from clinfuse.fusion.build import build_network
from clinfuse.fusion.wide import WideLinear

SMALL = {"verbose": False, "max_epochs": 3, "d_model": 16, "n_heads": 2}


def _batch(model, cohort):
    return next(iter(make_loader(cohort, model.preprocessor_, batch_size=len(cohort), shuffle=False,
                                 train=False)))


def test_default_survival_model_on_a_small_clinical_cohort_has_a_trained_linear_term(tmp_path):
    cohort, _ = make_synthetic_cohort(60, task="survival", modalities=("clinical",), seed=0)
    model = FusionModel(task="survival", **SMALL).fit(cohort)
    assert model.network_config_["wide"] == {"name": "linear", "kwargs": {"penalty": 0.1, "n_outputs": 1}}
    wide = model.network_.wide
    assert isinstance(wide, WideLinear)
    weights = torch.cat([p.detach().reshape(-1) for p in wide.parameters()])
    assert weights.abs().max() > 1e-3  # it started at zero and was trained

    # the risk is the deep part's plus the linear score of the same batch
    batch = _batch(model, cohort)
    with torch.no_grad():
        out = model.network_(batch).outputs
        model.network_.wide = None
        deep = model.network_(batch).outputs
        model.network_.wide = wide
        linear = wide(batch)
    torch.testing.assert_close(out, deep + linear)  # [B, K] + [B, 1]: every bin's hazard logit

    folder = model.save(tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["network"]["wide"]["name"] == "linear"
    again = FusionModel.load(folder)
    np.testing.assert_allclose(again.predict_risk(cohort).to_numpy(), model.predict_risk(cohort).to_numpy(),
                               atol=1e-6)


def test_wide_penalty_none_builds_no_linear_term():
    cohort, _ = make_synthetic_cohort(30, task="survival", modalities=("clinical",), seed=0)
    model = FusionModel(task="survival", wide_penalty=None, **SMALL).fit(cohort)
    assert "wide" not in model.network_config_ and model.network_.wide is None
    assert not any(k.startswith("wide.") for k in model.network_.state_dict())


def test_classification_linear_term_has_one_score_per_class_and_reads_genes():
    cohort, _ = make_synthetic_cohort(30, modalities=("clinical", "genomics"), n_genes=12, seed=1)
    model = FusionModel(**SMALL).fit(cohort)
    wide = model.network_.wide
    assert model.network_config_["wide"]["kwargs"]["n_outputs"] == 2
    assert wide.genes.shape == (len(model.schema_["genomics"]["genes"]), 2)
    assert wide(_batch(model, cohort)).shape == (len(cohort), 2)


def test_no_linear_term_without_tabular_inputs():
    cohort, _ = make_synthetic_cohort(20, modalities=("images",), n_patches=(2, 4), feature_dim=8, seed=0)
    model = FusionModel(max_epochs=1, verbose=False, d_model=16, n_heads=2).fit(cohort)
    assert "wide" not in model.network_config_


def test_wide_linear_module():
    wide = WideLinear(n_outputs=3, n_numeric=2, categories={"a": 2}, n_genes=4, penalty=0.5)
    assert wide.penalty_loss().item() == 0.0  # zero at initialisation
    with torch.no_grad():
        wide.numeric.fill_(1.0)
    assert wide.penalty_loss().item() == pytest.approx(0.5 * 0.5 * 12)
    with pytest.raises(ValueError, match="penalty must be >= 0"):
        WideLinear(n_outputs=1, penalty=-1.0)


def test_wide_config_is_checked_when_built():
    cohort, _ = make_synthetic_cohort(20, task="survival", modalities=("clinical",), seed=0)
    model = FusionModel(task="survival", **{**SMALL, "max_epochs": 1}).fit(cohort)
    config = json.loads(json.dumps(model.network_config_))
    config["wide"]["name"] = "quadratic"
    with pytest.raises(ValueError, match="unknown wide term 'quadratic'"):
        build_network(model.schema_, config)
    config["wide"] = {"name": "linear", "kwargs": {"penalty": 0.1, "n_outputs": 1, "n_genes": 3}}
    with pytest.raises(ValueError, match="no keyword"):
        build_network(model.schema_, config)


@pytest.mark.parametrize("bad", [-0.1, "0.1", True])
def test_bad_wide_penalty_is_a_clear_error(bad):
    cohort, _ = make_synthetic_cohort(20, task="survival", modalities=("clinical",), seed=0)
    with pytest.raises(ValueError, match="wide_penalty must be a number >= 0 or None"):
        FusionModel(task="survival", wide_penalty=bad, **SMALL).fit(cohort)


def test_default_monitor_is_the_c_index_for_survival_and_the_auc_for_classification():
    from clinfuse.fusion.checkpoints import resolve_monitor

    assert FusionModel().monitor is None
    assert resolve_monitor("survival", None) == "c_index"
    assert resolve_monitor("classification", None) == "auc"
    assert resolve_monitor("survival", "val_loss") == "val_loss"
    cohort, _ = make_synthetic_cohort(60, task="survival", modalities=("clinical",), seed=2)
    model = FusionModel(task="survival", **{**SMALL, "max_epochs": 4}).fit(cohort)
    scores = [h["val_metric"] for h in model.history_]
    assert model.best_epoch_ == int(np.argmax(scores))  # the kept weights: the best validation c-index


def test_default_batch_size_grows_with_the_cohort():
    from clinfuse.fusion.hyperparameters import resolve_batch_size

    assert FusionModel().batch_size is None
    assert resolve_batch_size(None, 100) == 16 and resolve_batch_size(None, 512) == 16
    assert resolve_batch_size(None, 5040) == 158  # ceil(5040 / 32): 32 steps an epoch
    assert resolve_batch_size(8, 5040) == 8
    cohort, _ = make_synthetic_cohort(30, task="survival", modalities=("clinical",), seed=0)
    model = FusionModel(task="survival", **{**SMALL, "max_epochs": 1}).fit(cohort)
    assert len(model.predict_risk(cohort)) == len(cohort)  # prediction batches without a batch_size
