"""A model whose loss or parameters went NaN is never returned by ``fit`` nor written by ``save``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from clinfuse.fusion import FusionModel
from clinfuse.fusion.finite import check_finite_history
from clinfuse.fusion.training import FusionLightningModule


def _model(**kw):
    return FusionModel(d_model=8, n_heads=2, max_epochs=2, batch_size=8, verbose=False, **kw)


def test_fit_refuses_a_nan_training_loss_naming_the_epoch(small_cohort, monkeypatch):
    step = FusionLightningModule.training_step

    def nan_in_epoch_1(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        return loss * math.nan if self.current_epoch == 1 else loss

    monkeypatch.setattr(FusionLightningModule, "training_step", nan_in_epoch_1)
    with pytest.raises(ValueError, match=r"epoch 1 has a non-finite train_loss"):
        _model(validation_fraction=0.0).fit(small_cohort)


def test_fit_refuses_a_nan_validation_loss_even_when_an_earlier_epoch_was_kept(small_cohort, monkeypatch):
    end = FusionLightningModule.on_validation_epoch_end

    def nan_val(self):
        end(self)
        if self.current_epoch == 1:
            self.history[-1]["val_loss"] = math.nan

    monkeypatch.setattr(FusionLightningModule, "on_validation_epoch_end", nan_val)
    with pytest.raises(ValueError, match=r"epoch 1 has a non-finite val_loss"):
        _model(early_stopping_patience=None).fit(small_cohort)


def test_fit_refuses_non_finite_parameters(small_cohort, monkeypatch):
    end = FusionLightningModule.on_fit_end

    def poison(self):
        end(self)
        with torch.no_grad():
            next(iter(self.network.parameters())).fill_(math.inf)

    monkeypatch.setattr(FusionLightningModule, "on_fit_end", poison)
    with pytest.raises(ValueError, match=r"training \(epoch 1\).*non-finite \(NaN or inf\) parameters"):
        _model(validation_fraction=0.0).fit(small_cohort)


def test_history_without_validation_may_have_nan_val_loss():
    check_finite_history([{"epoch": 0, "train_loss": 0.5, "val_loss": math.nan}], validated=False)
    with pytest.raises(ValueError, match="epoch 0 has a non-finite val_loss"):
        check_finite_history([{"epoch": 0, "train_loss": 0.5, "val_loss": math.nan}], validated=True)


def test_save_refuses_a_model_with_nan_parameters(fitted_classifier, tmp_path):
    model = copy.deepcopy(fitted_classifier.model)
    name, param = next(iter(model.network_.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = math.nan
    with pytest.raises(ValueError, match=rf"save to .*non-finite.*{name}"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
