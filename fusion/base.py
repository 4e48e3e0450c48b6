"""Base class and registry of the aggregators (token sequences of all modalities -> one patient vector)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..encoders.registry import Registry
from ..encoders.tokens import Tokens
from .records import AttentionRecord

AGGREGATORS = Registry("aggregator", populate="clinfuse.fusion.aggregators")


@dataclass
class AggregatorOutput:
    """What an aggregator returns for a batch of B samples.

    Attributes:
        pooled: ``[B, d]`` one vector per sample, or ``[B, C, d]`` one vector per class / time bin
            (PersAM pools per class; the head then scores each class from its own vector).
        records: the attention this aggregator exports, one :class:`AttentionRecord` per (kind, modality).
        offsets: ``[B, C]`` added to the head's C outputs (logits, hazard logits, or the Cox risk with C = 1):
            a term the aggregator scores itself, such as PersAM's modality logits; None = nothing.
        score_parts: additive parts of ``pooled`` (name -> same shape) whose exact share of the head's scores
            ``finish_records`` needs; the network computes them with ``head.part_scores`` (outside training).
        finish_records: ``part scores -> records`` that replace the records of the same (kind, modality),
            e.g. PersAM's modality weights measured in logits; not called when the head cannot split its
            scores exactly (a hidden layer).
    """

    pooled: torch.Tensor
    records: list[AttentionRecord] = field(default_factory=list)
    offsets: torch.Tensor | None = None
    score_parts: dict[str, torch.Tensor] | None = None
    finish_records: Callable[[dict[str, torch.Tensor]], list[AttentionRecord]] | None = None


class Aggregator(nn.Module):
    """Fuses the modalities' :class:`Tokens` (token-type embeddings already added) into a patient vector.

    Constructor (keyword-only, shared by every aggregator): ``d_model`` (token width), ``modalities``
    (the modalities of the schema, canonical order), ``n_outputs`` (C: classes, time bins, or 1 for a Cox
    risk), ``class_names`` (C names), plus the aggregator's own hyperparameters.

    ``attention_kinds`` declares the report kinds the aggregator fills (API.md); kinds it does not
    declare are absent from its report, never filled with a constant.
    """

    registry_name: ClassVar[str] = ""
    attention_kinds: ClassVar[frozenset[str]] = frozenset()

    def forward(self, tokens: Mapping[str, Tokens]) -> AggregatorOutput:  # pragma: no cover - interface
        raise NotImplementedError


def create_aggregator(name: str, **kwargs: Any) -> Aggregator:
    """Build a registered aggregator by name; an unknown name raises ``ValueError`` listing the names."""
    return AGGREGATORS.create(name, **kwargs)


def list_aggregators() -> list[str]:
    return AGGREGATORS.names()


def check_common_args(*, d_model: int, modalities: Sequence[str], n_outputs: int, n_heads: int | None = None) -> None:
    """Validate the constructor arguments every aggregator shares (clear ``ValueError``/``TypeError``)."""
    if not isinstance(d_model, int) or d_model <= 0:
        raise ValueError(f"d_model must be a positive int, got {d_model!r}")
    if n_heads is not None and (n_heads <= 0 or d_model % n_heads):
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    if isinstance(modalities, str) or not modalities:
        raise TypeError(f"modalities must be a non-empty sequence of modality names, got {modalities!r}")
    if not isinstance(n_outputs, int) or n_outputs <= 0:
        raise ValueError(f"n_outputs must be a positive int (classes, time bins, or 1), got {n_outputs!r}")
