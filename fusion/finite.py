"""Finite-value guards: a model whose loss went NaN or whose parameters are not finite is never kept.

One NaN input (a bag, a value) can turn every parameter into NaN; such a model predicts NaN for every
sample, so training refuses to return it and ``save`` refuses to write it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn


def non_finite_parameters(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``tensors`` (a state dict) holding NaN or inf."""
    return [name for name, t in tensors.items()
            if torch.is_floating_point(t) and not bool(torch.isfinite(t).all())]


def check_finite_network(network: nn.Module, where: str) -> None:
    """``ValueError`` naming the parameters (and buffers) of ``network`` that are not finite."""
    bad = non_finite_parameters(network.state_dict())
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{where}: the network has non-finite (NaN or inf) parameters: {shown}; "
                         "the training data probably hold NaN or infinite values")


def check_finite_history(history: Iterable[Mapping[str, Any]], *, validated: bool) -> None:
    """``ValueError`` naming the first epoch whose training loss (or, when ``validated``, validation loss)
    is NaN or infinite."""
    keys = ("train_loss", "val_loss") if validated else ("train_loss",)
    for row in history:
        for key in keys:
            value = row.get(key)
            if value is None or not math.isfinite(float(value)):
                raise ValueError(f"training: epoch {row.get('epoch')} has a non-finite {key} ({value}); "
                                 "the model is not kept (check the data for NaN or infinite values, "
                                 "or lower lr)")


def check_fit_finite(history: Iterable[Mapping[str, Any]], network: nn.Module, *, validated: bool) -> None:
    """What ``fit`` checks before it returns a model: a finite loss history and finite parameters."""
    history = list(history)
    check_finite_history(history, validated=validated)
    last = history[-1]["epoch"] if history else None
    check_finite_network(network, f"training (epoch {last})")
