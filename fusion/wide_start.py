"""Wide first, deep as a residual: fit the linear term to its penalised optimum before the joint training.

Before the first epoch, :func:`fit_wide_first` fits the network's linear ("wide") term, together with the
head's output biases (the baseline hazard of each time bin, or the class priors), to the minimum of the
model's own training loss plus the term's ridge penalty on the whole training part (full-batch L-BFGS), with
the deep part's scores held at zero (the head's output weights are set to 0). Training then starts from a
fitted penalised linear model (a ridge Cox / discrete-time / logistic model on the standardised inputs) and
the deep part learns a correction from zero, so that on a small cohort, where the deep part adds little but
variance, checkpoint selection on the validation metric can keep a model close to the linear one.

Training only: nothing new is stored, a saved model predicts as before. Off unless
:data:`WIDE_FIRST_ITERATIONS` is set above 0 (an experiment kept reproducible, not a default).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..datasets.batch import Batch
from .wide import WIDE_MODALITIES

LINEAR_CANDIDATE_EPOCH = -1
"""``best_epoch_`` when no epoch's weights beat the wide-first linear model on the validation samples."""
LINEAR_CANDIDATE = True
"""Whether the linear model itself competes in checkpoint selection (see :func:`consider_linear_model`)."""

WIDE_FIRST_ITERATIONS = 0
"""L-BFGS iterations of the linear term's fit before training; 0 (the default): no such fit, the term starts
at 0 and the head keeps its random output weights. Off by default: on the inner folds that choose the
survival defaults (``benchmarks/bench_survival_inner.py``) 100 iterations were behind the term started at 0
on 5 of 6 cohorts, and classification's demo AUC fell."""


def _wide_batches(loader: Any) -> list[Batch]:
    """The loader's batches with only the inputs the linear term reads (and the targets)."""
    out = []
    for batch in loader:
        kept = {m: v for m, v in batch.modalities.items() if m in WIDE_MODALITIES}
        out.append(replace(batch, modalities=kept))
    return out


def _output_bias(network: nn.Module) -> nn.Parameter | None:
    score = getattr(getattr(network, "head", None), "score", None)
    return getattr(score, "bias", None) if isinstance(score, nn.Linear) else None


def fit_wide_first(module: Any, loader: Any, *, iterations: int | None = None) -> float | None:
    """Fit ``module.network.wide`` (and the head's output biases) to the penalised training loss.

    Args:
        module: the :class:`~clinfuse.fusion.training.FusionLightningModule` (its ``loss`` is the task's).
        loader: the training samples, in any order (every batch is used at once: the Cox partial likelihood
            is not a sum over batches).
        iterations: L-BFGS iterations (0: do nothing; None: :data:`WIDE_FIRST_ITERATIONS`).

    Returns the objective reached (task loss + ridge penalty), or None when there is no linear term.
    The head's output weights are zeroed, so that before training the network's scores are the linear
    model's (plus an aggregator's own offsets, if it has any).
    """
    network = module.network
    wide = getattr(network, "wide", None)
    iterations = WIDE_FIRST_ITERATIONS if iterations is None else int(iterations)
    if wide is None or iterations <= 0:
        return None
    score = getattr(getattr(network, "head", None), "score", None)
    if isinstance(score, nn.Linear):
        with torch.no_grad():
            score.weight.zero_()  # the deep part starts as a zero correction of the linear model
    bias = _output_bias(network)
    batches = _wide_batches(loader)
    params = list(wide.parameters()) + ([bias] if bias is not None else [])
    if not batches or not params:
        return None
    time = event = labels = None
    if batches[0].labels is not None:
        labels = torch.cat([b.labels for b in batches])
    if batches[0].time is not None:
        time, event = torch.cat([b.time for b in batches]), torch.cat([b.event for b in batches])

    def objective() -> torch.Tensor:
        outputs = torch.cat([wide(b) for b in batches])  # [N, 1 or C]: one risk for every bin, or per class
        if bias is not None:
            outputs = outputs + bias
        loss = module.loss(outputs, labels=labels, time=time, event=event)
        return loss + wide.penalty_loss()

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = objective()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)
    for p in params:
        p.grad = None
    with torch.no_grad():
        return float(objective())


def consider_linear_model(module: Any, loader: Any) -> None:
    """Score the network before training (the wide-first linear model) on the validation ``loader``: it is
    kept, with ``best_epoch`` :data:`LINEAR_CANDIDATE_EPOCH`, unless an epoch's weights do better on the
    ``monitor`` metric. Nothing is added to the history (no epoch was trained)."""
    if not LINEAR_CANDIDATE:
        return
    was_training = module.network.training
    module.network.eval()
    module.on_validation_epoch_start()
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                module.validation_step(batch, i)
        parts = [torch.cat(col) for col in zip(*module._val_outputs)]
    finally:
        module._val_outputs = []
        module.network.train(was_training)
    val, metric = module.score_outputs(parts)
    module.consider(val, metric, epoch=LINEAR_CANDIDATE_EPOCH, outputs=parts[0])
