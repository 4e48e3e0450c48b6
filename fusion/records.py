"""``AttentionRecord``: named attention tensors from one batch, the raw material of an AttentionReport."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ..encoders.layers import masked_normalise

__all__ = ["ATTENTION_KINDS", "AttentionRecord", "masked_normalise", "normalise_nonnegative"]

BUILT_IN_TOKEN_KINDS = ("feature", "gene", "event", "patch")


class _AttentionKinds(Sequence):
    """The attention kinds, as a live tuple-like view: ``modality``, then the token kind of every registered
    modality (registry order: ``feature, gene, patch, event``, and any registered later), then the kinds
    registered aggregators declare of their own (``Aggregator.own_kinds``, registration order)."""

    def _kinds(self) -> tuple[str, ...]:
        from ..datasets.batch import TOKEN_KIND
        from .base import AGGREGATORS

        own = [k for name in AGGREGATORS.names() for k in AGGREGATORS.get(name).own_kinds]
        # the built-in token kinds keep the order reports have always listed them in
        return tuple(dict.fromkeys(["modality", *BUILT_IN_TOKEN_KINDS, *TOKEN_KIND.values(), *own]))

    def __getitem__(self, index):  # type: ignore[override]
        return self._kinds()[index]

    def __len__(self) -> int:
        return len(self._kinds())

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # live content: not hashable

    def __add__(self, other: Sequence[str]) -> tuple[str, ...]:
        return (*self, *other)

    def __radd__(self, other: Sequence[str]) -> tuple[str, ...]:
        return (*other, *self)

    def __reduce__(self) -> str:  # pickle / deepcopy give back the one live view
        return "ATTENTION_KINDS"

    def __repr__(self) -> str:
        return repr(self._kinds())


ATTENTION_KINDS: Sequence[str] = _AttentionKinds()


@dataclass
class AttentionRecord:
    """Weights of one attention ``kind`` over one modality's tokens for a batch of B samples.

    Attributes:
        kind: one of :data:`ATTENTION_KINDS`.
        modality: the modality whose tokens are weighed; ``"all"`` for ``kind == "modality"`` (then the
            tokens are the modalities themselves, and the weights are attention shares, not importance: a
            modality's effect on the prediction is its ``modality_contribution``).
        value: float ``[B, C, T]``: normalised weights (see ``normalised_over``). C = 1 for
            class-independent kinds (``class_names`` is None then).
        raw: float ``[B, C, T]``: the unnormalised scores (logits or products) behind ``value``.
        mask: bool ``[B, T]``, True = real token.
        names: ``[B][T]`` token names ("" for padding).
        class_names: the C class (or time-bin) names, or None for class-independent kinds.
        meta: structured per-token columns for the report, e.g. ``{"x": Tensor[B, T], "y": ...,
            "slide_id": [B][T], "position": Tensor[B, T]}`` for patches, ``{"code": [B][T], "time":
            Tensor[B, T]}`` for events.
        normalised_over: ``"tokens"`` (default): each ``value[b, c]`` sums to 1 over the real tokens
            ``mask[b]`` and is exactly 0 on padding; a sample whose mask is all False has all zeros.
            ``"classes"``: each ``value[b, :, t]`` of a real token sums to 1 over the C classes (a per-class
            weight of one reading, e.g. a single token per sample).
    """

    kind: str
    modality: str
    value: torch.Tensor
    raw: torch.Tensor
    mask: torch.Tensor
    names: list[list[str]]
    class_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    normalised_over: Literal["tokens", "classes"] = "tokens"

    def __post_init__(self) -> None:
        # aggregators (also user-written ones) build records: say what is wrong, with the record's name
        where = f"AttentionRecord(kind={self.kind!r}, modality={self.modality!r})"
        if self.kind not in ATTENTION_KINDS:
            raise ValueError(f"{where}: unknown kind; the kinds are {list(ATTENTION_KINDS)} (an aggregator "
                             "declares kinds of its own in own_kinds)")
        if self.value.dim() != 3 or self.raw.shape != self.value.shape:
            raise ValueError(f"{where}: value and raw must both be [B, C, T], got {tuple(self.value.shape)} "
                             f"and {tuple(self.raw.shape)}")
        if self.mask.shape != (self.value.shape[0], self.value.shape[2]):
            raise ValueError(f"{where}: mask must be [B, T] = {(self.value.shape[0], self.value.shape[2])}, "
                             f"got {tuple(self.mask.shape)}")
        if self.normalised_over not in ("tokens", "classes"):
            raise ValueError(f"{where}: normalised_over must be 'tokens' or 'classes', "
                             f"got {self.normalised_over!r}")

    def detach(self) -> AttentionRecord:
        return replace(
            self, value=self.value.detach().float().cpu(), raw=self.raw.detach().float().cpu(),
            mask=self.mask.detach().cpu(),
            meta={k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in self.meta.items()},
        )


def normalise_nonnegative(weights: torch.Tensor, mask: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Scale non-negative ``weights`` to sum 1 over real tokens (zeros on padding, all-zero if none)."""
    w = weights.clamp_min(0) * mask
    return w / w.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
