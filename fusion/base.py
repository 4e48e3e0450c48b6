"""Base class and registry of the aggregators (token sequences of all modalities -> one patient vector)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..encoders.common import check_heads, check_positive_int, check_probability
from ..encoders.registry import Registry
from ..encoders.tokens import Tokens
from .records import AttentionRecord

AGGREGATORS = Registry("aggregator", populate="clinfuse.fusion.aggregators")


@dataclass
class AggregatorOutput:
    """What an aggregator returns for a batch of B samples.

    Attributes:
        pooled: ``[B, d]`` one vector per sample, or ``[B, C, d]`` one vector per class / time bin (the head
            then scores each class from its own vector).
        records: the attention this aggregator exports, one :class:`AttentionRecord` per (kind, modality).
        offsets: optional ``[B, C]`` added to the head's C outputs (logits, hazard logits, or the Cox risk
            with C = 1): a term the aggregator scores itself, outside the pooled vector; None = nothing.
        extras: aggregator-private state (key = the aggregator's registry name by convention) that its
            :meth:`Aggregator.explain` reads; generic code never looks inside.
    """

    pooled: torch.Tensor
    records: list[AttentionRecord] = field(default_factory=list)
    offsets: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Aggregator(nn.Module):
    """Fuses the modalities' :class:`Tokens` (token-type embeddings already added) into a patient vector.

    Constructor (keyword-only, shared by every aggregator): ``d_model`` (token width), ``modalities``
    (the modalities of the schema, canonical order), ``n_outputs`` (C: classes, time bins, or 1 for a Cox
    risk), ``class_names`` (C names), plus the aggregator's own hyperparameters.

    Class attributes:
        attention_kinds: the report kinds the aggregator fills (an instance may narrow it to its
            configuration); kinds it does not declare are absent from its report, never filled with a
            constant.
        sample_figure: the name of the per-sample figure that shows its attention best, which the CLI draws:
            ``"patches"`` (the patch attention over the slide, the default), or the name of a figure an
            aggregator brings for its own kinds.
    """

    registry_name: ClassVar[str] = ""
    shared_keywords: ClassVar[frozenset[str]] = frozenset()
    """The FusionModel-wide keywords (``n_heads, n_layers, dropout, ffn_mult``) this aggregator has."""
    attention_kinds: ClassVar[frozenset[str]] = frozenset()
    own_kinds: ClassVar[tuple[str, ...]] = ()
    """Report kinds of the aggregator's own (neither ``modality`` nor a modality's token kind), in report
    order; they join :data:`~clinfuse.fusion.records.ATTENTION_KINDS`."""
    sample_figure: ClassVar[str] = "patches"
    wants_records: bool = True
    """Whether ``forward`` builds its attention records: :class:`~clinfuse.fusion.network.FusionNetwork`
    switches it off (:func:`records_off`) where nothing reads them (training, validation). An aggregator
    that ignores it builds them anyway, which only costs time."""

    def forward(self, tokens: Mapping[str, Tokens]) -> AggregatorOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def explain(self, output: AggregatorOutput, head: nn.Module) -> list[AttentionRecord]:
        """The records to export for ``output`` once ``head`` has scored it (evaluation only).

        The default returns ``output.records``; an aggregator may override it to measure its attention on the
        head's scores (e.g. with the head's exact split of its scores, ``part_scores``).
        """
        return output.records


@contextlib.contextmanager
def records_off(aggregator: Aggregator, off: bool = True) -> Iterator[None]:
    """``aggregator.wants_records = False`` inside the block (when ``off``), restored after it."""
    saved = aggregator.wants_records
    aggregator.wants_records = saved and not off
    try:
        yield
    finally:
        aggregator.wants_records = saved


def create_aggregator(name: str, **kwargs: Any) -> Aggregator:
    """Build a registered aggregator by name; an unknown name raises ``ValueError`` listing the names."""
    return AGGREGATORS.create(name, **kwargs)


def list_aggregators() -> list[str]:
    return AGGREGATORS.names()


def check_common_args(*, owner: str, d_model: int, modalities: Sequence[str], n_outputs: int,
                      n_heads: int | None = None, dropout: float | None = None) -> None:
    """Validate the constructor arguments every aggregator shares (``ValueError`` / ``TypeError`` naming
    ``owner``), with the encoders' checks; ``n_heads`` / ``dropout`` only for aggregators that have them."""
    check_positive_int(d_model, "d_model", owner=owner)
    if n_heads is not None:
        check_heads(d_model, n_heads, owner=owner)
    if dropout is not None:
        check_probability(dropout, "dropout", owner=owner)
    if isinstance(modalities, str) or not modalities:
        raise TypeError(f"{owner}: modalities must be a non-empty sequence of modality names, "
                        f"got {modalities!r}")
    check_positive_int(n_outputs, "n_outputs (classes, time bins, or 1)", owner=owner)
