"""Wide first: the linear term is fitted to its penalised optimum before training, the deep part at 0."""

from __future__ import annotations

import pytest
import torch
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.datasets.loading import make_loader
from clinfuse.fusion import FusionModel, wide_start
from clinfuse.fusion.training import FusionLightningModule


@pytest.fixture
def wide_first(monkeypatch):
    """The wide-first fit switched on (it is off by default)."""
    monkeypatch.setattr(wide_start, "WIDE_FIRST_ITERATIONS", 100)

# lr ~ 0: the joint training moves nothing, so the fitted model is the one training started from
FROZEN = {"verbose": False, "max_epochs": 1, "d_model": 16, "n_heads": 2, "lr": 1e-12,
          "validation_fraction": 0.0}


def _full_batch(model, cohort):
    return next(iter(make_loader(cohort, model.preprocessor_, batch_size=len(cohort), shuffle=False,
                                 train=False)))


def _objective_and_gradient(model, cohort):
    """The training objective of the linear term alone (task loss + ridge penalty) on the training samples,
    and the norm of its gradient in the linear weights and the head's output biases."""
    net = model.network_
    edges = None if model.time_bins_ is None else torch.tensor(model.time_bins_)
    module = FusionLightningModule(net, task=model.task, survival_head=model.survival_head, bin_edges=edges)
    batch = _full_batch(model, cohort)
    params = list(net.wide.parameters()) + [net.head.score.bias]
    outputs = net.wide(batch) + net.head.score.bias
    loss = module.loss(outputs, labels=batch.labels, time=batch.time, event=batch.event)
    objective = loss + net.wide.penalty_loss()
    grads = torch.autograd.grad(objective, params)
    return float(objective.detach()), float(torch.cat([g.reshape(-1) for g in grads]).norm())


@pytest.mark.parametrize("task,head", [("survival", "discrete"), ("survival", "cox"),
                                       ("classification", "discrete")])
def test_linear_term_reaches_its_ridge_optimum_before_training(task, head, wide_first):
    cohort, _ = make_synthetic_cohort(80, task=task, modalities=("clinical",), seed=3)
    model = FusionModel(task=task, survival_head=head, **FROZEN).fit(cohort)
    objective, grad_norm = _objective_and_gradient(model, cohort)
    # convex objective: a vanishing gradient is its minimum (on main the term stayed at 0, gradient ~0.1)
    assert grad_norm < 1e-3, (objective, grad_norm)
    weights = torch.cat([p.detach().reshape(-1) for p in model.network_.wide.parameters()])
    assert weights.abs().max() > 1e-2


def test_deep_part_starts_at_zero_so_training_starts_from_the_linear_model(wide_first):
    cohort, _ = make_synthetic_cohort(80, task="survival", modalities=("clinical",), seed=4)
    model = FusionModel(task="survival", **FROZEN).fit(cohort)
    net = model.network_
    assert float(net.head.score.weight.detach().abs().max()) < 1e-6
    batch = _full_batch(model, cohort)
    with torch.no_grad():
        linear = net.wide(batch) + net.head.score.bias  # [B, K]: the linear discrete-time model
        torch.testing.assert_close(net(batch).outputs, linear, atol=1e-5, rtol=1e-5)


def test_by_default_the_linear_term_starts_at_zero_and_the_head_at_random():
    assert wide_start.WIDE_FIRST_ITERATIONS == 0  # not kept as a default: see the module docstring
    cohort, _ = make_synthetic_cohort(40, task="survival", modalities=("clinical",), seed=0)
    model = FusionModel(task="survival", **FROZEN).fit(cohort)
    weights = torch.cat([p.detach().reshape(-1) for p in model.network_.wide.parameters()])
    assert weights.abs().max() < 1e-6
    assert float(model.network_.head.score.weight.detach().abs().max()) > 1e-3  # random initialisation kept


def test_linear_model_is_kept_when_no_epoch_beats_it_on_validation(wide_first):
    cohort, _ = make_synthetic_cohort(80, task="survival", modalities=("clinical",), seed=5)
    params = {**FROZEN, "validation_fraction": 0.25, "max_epochs": 2}
    model = FusionModel(task="survival", **params).fit(cohort)
    # lr ~ 0: every epoch scores as the linear model did, so none is strictly better
    assert model.best_epoch_ == wide_start.LINEAR_CANDIDATE_EPOCH
    assert len(model.history_) == 2  # the candidate is not an epoch of the history
    assert float(model.network_.head.score.weight.detach().abs().max()) < 1e-6
