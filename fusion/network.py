"""``FusionNetwork``: encoders -> token types -> aggregator -> head, with modality dropout in training."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..datasets.batch import MODALITIES, Batch
from ..encoders.common import check_probability
from ..encoders.tokens import Tokens
from .base import Aggregator, AggregatorOutput, records_off
from .records import AttentionRecord
from .token_types import TokenTypeEmbedding


@dataclass
class NetworkOutput:
    """What :class:`FusionNetwork` returns for a batch of B samples.

    Attributes:
        outputs: classification logits ``[B, C]``, discrete-time hazard logits ``[B, K]`` or Cox risk ``[B]``.
        records: the aggregator's :class:`AttentionRecord` list (one per kind and modality); outside training
            the list :meth:`Aggregator.explain` returns; empty when the forward was asked for none.
        pooled: the aggregator's patient vector(s), ``[B, d]`` or ``[B, C, d]``.
        tokens: modality -> the :class:`Tokens` the aggregator saw (token types added, after modality
            dropout), so that more fusion passes (e.g. exact modality contributions) reuse the encoders' work.
    """

    outputs: torch.Tensor
    records: list[AttentionRecord] = field(default_factory=list)
    pooled: torch.Tensor | None = None
    tokens: dict[str, Tokens] | None = None


class FusionNetwork(nn.Module):
    """The whole model for one batch: per-modality encoders, token-type embeddings, aggregator, task head.

    Args:
        encoders: modality -> :class:`~clinfuse.encoders.ModalityEncoder` (one per modality of
            ``modalities``).
        aggregator: a registered :class:`~clinfuse.fusion.base.Aggregator` built for the same modalities.
        head: ``ClassificationHead`` / ``DiscreteTimeHead`` / ``CoxHead`` (any module mapping the pooled
            vector(s) to outputs).
        d_model: token width d shared by encoders, token types and aggregator.
        modalities: the schema's modalities (canonical order).
        modality_dropout: in training, each present modality of each sample is dropped (masked as absent)
            with this probability, so that a missing modality at prediction time is a trained case. A sample
            never loses every modality it has: when all would be dropped, one of them (chosen at random) is
            kept. Evaluation is never affected.
        token_types: a :class:`TokenTypeEmbedding` (default: modality embeddings only).
        wide: optional module ``Batch -> [B, 1 or C]`` (:class:`~clinfuse.fusion.wide.WideLinear`) whose
            score is added to the outputs: one column is added to every output (a Cox risk, every bin's
            hazard logit), C columns to the C outputs.
    """

    def __init__(self, *, encoders: Mapping[str, nn.Module], aggregator: Aggregator, head: nn.Module,
                 d_model: int, modalities: Sequence[str], modality_dropout: float = 0.0,
                 token_types: TokenTypeEmbedding | None = None, wide: nn.Module | None = None) -> None:
        super().__init__()
        if isinstance(modalities, str) or not modalities:
            raise TypeError(f"FusionNetwork: modalities must be a non-empty sequence, got {modalities!r}")
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"FusionNetwork: unknown modalities {unknown}; expected some of {MODALITIES}")
        missing = [m for m in modalities if m not in encoders]
        extra = [m for m in encoders if m not in modalities]
        if missing or extra:
            raise ValueError(f"FusionNetwork: encoders must be given for exactly the modalities "
                             f"{list(modalities)}; missing {missing}, unexpected {extra}")
        if not isinstance(aggregator, Aggregator):
            raise TypeError(f"FusionNetwork: aggregator must be an Aggregator module, "
                            f"got {type(aggregator).__name__}")
        modality_dropout = check_probability(modality_dropout, "modality_dropout", owner="FusionNetwork")
        self.d_model, self.modalities = d_model, tuple(modalities)
        self.modality_dropout = float(modality_dropout)
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.token_types = token_types or TokenTypeEmbedding(d_model=d_model, modalities=self.modalities)
        self.aggregator = aggregator
        self.head = head
        self.wide = wide

    def encode(self, batch: Batch) -> dict[str, Tokens]:
        """modality -> Tokens ``[B, T_m, d]`` (encoders only, no token types, no dropout)."""
        return self._encode(batch, {})

    def _encode(self, batch: Batch, offsets: Mapping[str, torch.Tensor]) -> dict[str, Tokens]:
        """:meth:`encode`, the encoders of ``offsets``' modalities given that vector as their ``offset``."""
        if not isinstance(batch, Batch):
            raise TypeError(f"FusionNetwork expects a Batch, got {type(batch).__name__}")
        missing = [m for m in self.modalities if m not in batch.modalities]
        if missing:
            raise ValueError(f"the batch lacks modalities {missing} that the network was built for "
                             f"({list(self.modalities)}); every schema modality must be in the batch")
        extra = [m for m in batch.modalities if m not in self.modalities]
        if extra:
            raise ValueError(f"the batch has modalities {extra} that the network was not built for "
                             f"({list(self.modalities)})")
        out = {}
        for m in self.modalities:
            if m in offsets:
                tokens = self.encoders[m](batch.modalities[m], offset=offsets[m])
            else:
                tokens = self.encoders[m](batch.modalities[m])
            if tokens.d_model != self.d_model:
                raise ValueError(f"encoder of {m!r} returned width {tokens.d_model}, "
                                 f"expected d_model={self.d_model}")
            out[m] = tokens
        return out

    def typed_tokens(self, batch: Batch) -> dict[str, Tokens]:
        """:meth:`encode` then the token types (no modality dropout): the tokens the aggregator reads.

        On a large bag a pass over its tokens costs about as much as the aggregator, so the token-type
        vector goes to the encoders that take it as an ``offset`` (``accepts_offset``: the feature-bag
        encoder folds it into its LayerNorm's bias at inference) and the other terms are added in place to
        the outputs of the encoders that own them (``owns_output``)."""
        offsets = {m: self.token_types.type_vector(m) for m in self.modalities
                   if getattr(self.encoders[m], "accepts_offset", False)}
        tokens = self._encode(batch, offsets)
        owned = [m for m in self.modalities if getattr(self.encoders[m], "owns_output", False)]
        return self.token_types(tokens, inplace=owned, typed=list(offsets))

    def drop_modalities(self, tokens: Mapping[str, Tokens]) -> dict[str, Tokens]:
        """Modality dropout: mask whole modalities per sample (training only; see the class docstring)."""
        if not self.training or self.modality_dropout == 0.0:
            return dict(tokens)
        names = list(tokens)
        present = torch.stack([tokens[m].mask.any(dim=1) for m in names], dim=1)  # [B, M]
        drop = (torch.rand(present.shape, device=present.device) < self.modality_dropout) & present
        lost_all = present.any(dim=1) & (drop == present).all(dim=1)
        if bool(lost_all.any()):
            # keep one present modality (uniformly among the sample's present ones) for those samples
            noise = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0)
            keep = torch.nn.functional.one_hot(noise.argmax(dim=1), len(names)).bool()
            drop = drop & ~(keep & lost_all.unsqueeze(1))
        out = {}
        for j, m in enumerate(names):
            t, d = tokens[m], drop[:, j]
            out[m] = replace(t, mask=t.mask & ~d.unsqueeze(1), present=t.present & ~d)
        return out

    def forward(self, batch: Batch, *, records: bool | None = None) -> NetworkOutput:
        """``Batch`` -> :class:`NetworkOutput` (outputs, attention records, pooled vectors).

        ``records=False``: build no attention records (``fit``'s training and validation steps, which read
        only the outputs); the outputs are the same either way.
        """
        tokens = self.drop_modalities(self.typed_tokens(batch))
        with records_off(self.aggregator, records is False):
            outputs, agg = self.fuse(tokens, lambda: self.wide(batch))
        if records is False:
            return NetworkOutput(outputs=outputs, records=[], pooled=agg.pooled, tokens=tokens)
        # outside training the aggregator may measure its attention on the head's scores
        found = agg.records if self.training else self.aggregator.explain(agg, self.head)
        return NetworkOutput(outputs=outputs, records=found, pooled=agg.pooled, tokens=tokens)

    def fuse(self, tokens: Mapping[str, Tokens], linear: Callable[[], torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, AggregatorOutput]:
        """Tokens (token types added, masked as they should be seen) -> (outputs, the aggregator's output).

        ``outputs`` = head(pooled) + the aggregator's offsets + ``linear()``, the wide score ``[B, 1 or C]``
        (called only when the network has a wide term; :meth:`forward` scores the batch with it). Masking
        the tokens of a modality (``mask`` and ``present`` False) is what the network sees for a missing one.
        """
        agg = self.aggregator(tokens)
        outputs = self.head(agg.pooled)
        if agg.offsets is not None:
            if agg.offsets.numel() != outputs.numel():
                raise ValueError(f"{type(self.aggregator).__name__}: offsets {tuple(agg.offsets.shape)} "
                                 f"do not match the head's outputs {tuple(outputs.shape)}")
            outputs = outputs + agg.offsets.reshape(outputs.shape)  # (a Cox risk is [B], its offset [B, 1])
        if self.wide is not None and linear is not None:
            score = linear()  # [B, 1] or [B, C]
            outputs = outputs + (score[:, 0] if outputs.dim() == 1 else score)
        return outputs, agg
