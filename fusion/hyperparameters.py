"""The checks of a :class:`~clinfuse.fusion.FusionModel`'s hyperparameters, run when ``fit`` starts.

scikit-learn's habit: ``__init__`` stores the keywords unchanged (so ``clone`` works) and they are
validated at fit time, each error naming the hyperparameter and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..datasets.batch import MODALITIES
from .build import SHARED_KEYWORDS

TASKS = ("classification", "survival")
SURVIVAL_HEADS = ("discrete", "cox")


BATCH_SIZE = 16
"""The batch size of ``batch_size=None`` on cohorts of up to ``BATCH_SIZE * MAX_STEPS_PER_EPOCH`` samples."""
MAX_STEPS_PER_EPOCH = 32
"""``batch_size=None`` grows the batch beyond that so that an epoch takes at most this many optimiser
steps: with batches of 16 the cost of a fit grows with the cohort in per-step overhead, where a Cox model
on thousands of patients takes a second."""


def resolve_batch_size(batch_size: int | None, n_train: int) -> int:
    """The training batch size: ``batch_size``, or for None ``max(16, ceil(n_train / 32))``."""
    if batch_size is not None:
        return int(batch_size)
    return max(BATCH_SIZE, -(-int(n_train) // MAX_STEPS_PER_EPOCH))


def check_hyperparameters(model: Any) -> None:
    """ValueError / TypeError naming the first hyperparameter of ``model`` that is out of range."""
    from .base import AGGREGATORS

    if model.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {model.task!r}")
    if model.survival_head not in SURVIVAL_HEADS:
        raise ValueError(f"survival_head must be one of {SURVIVAL_HEADS}, got {model.survival_head!r}")
    if model.aggregator is not None:  # None: resolved from the modalities (build.resolve_aggregator)
        AGGREGATORS.get(model.aggregator)  # unknown name -> ValueError listing the registered ones
    for name in ("d_model", "n_heads", "n_layers", "ffn_mult", "max_epochs", "batch_size",
                 "accumulate_grad_batches"):
        v = getattr(model, name)
        if v is None and (name in SHARED_KEYWORDS or name == "batch_size"):
            continue
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if model.n_heads is not None and model.d_model % model.n_heads:
        raise ValueError(f"d_model={model.d_model} must be divisible by n_heads={model.n_heads}")
    if model.task == "survival" and model.survival_head == "discrete" and (
            not isinstance(model.n_time_bins, int | np.integer) or model.n_time_bins < 2):
        raise ValueError(f"n_time_bins must be an int >= 2, got {model.n_time_bins!r}")
    for name in ("dropout", "modality_dropout"):
        if getattr(model, name) is not None and not 0.0 <= float(getattr(model, name)) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(model, name)!r}")
    if model.wide_penalty is not None and (isinstance(model.wide_penalty, bool) or not isinstance(
            model.wide_penalty, int | float | np.integer | np.floating) or not model.wide_penalty >= 0):
        raise ValueError(f"wide_penalty must be a number >= 0 or None, got {model.wide_penalty!r}")
    if not 0.0 <= float(model.validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {model.validation_fraction!r}")
    if model.max_patches is not None and int(model.max_patches) < 1:
        raise ValueError(f"max_patches must be a positive int or None, got {model.max_patches!r}")
    for name in ("encoders", "preprocessor_kwargs", "aggregator_kwargs", "encoder_kwargs"):
        v = getattr(model, name)
        if v is not None and not isinstance(v, dict):
            raise TypeError(f"{name} must be a dict or None, got {type(v).__name__}")
    from .checkpoints import check_params

    check_params(task=model.task, monitor=model.monitor, checkpoint_dir=model.checkpoint_dir)
    from .loggers import check_params as check_logging

    check_logging(logger=model.logger, log_dir=model.log_dir, callbacks=model.callbacks)
    if model.encoders is not None:
        bad = [m for m in model.encoders if m not in MODALITIES]
        if bad:
            raise ValueError(f"encoders: unknown modality {bad}; modalities are {MODALITIES}")


def class_weight_tensor(spec: Any, classes: list, labels: list) -> Any:
    """The cross-entropy's ``[C]`` class weights for ``class_weights=spec`` (None: unweighted)."""
    import torch

    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(f"class_weights must be None, 'balanced' or a mapping label -> weight, "
                             f"got {spec!r}")
        counts = np.array([sum(1 for y in labels if y == c) for c in classes], dtype=float)
        return torch.tensor(len(labels) / (len(classes) * np.maximum(counts, 1.0)), dtype=torch.float32)
    if isinstance(spec, dict):
        keys = {str(k): float(v) for k, v in spec.items()}
        unknown = [k for k in keys if k not in {str(c) for c in classes}]
        missing = [c for c in classes if str(c) not in keys]
        if unknown or missing:
            raise ValueError(f"class_weights must give a weight for every class {classes}; "
                             f"unknown: {unknown}, missing: {missing}")
        return torch.tensor([keys[str(c)] for c in classes], dtype=torch.float32)
    raise TypeError(f"class_weights must be None, 'balanced' or a dict, got {type(spec).__name__}")
