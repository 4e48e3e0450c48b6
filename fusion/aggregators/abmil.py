"""``abmil``: gated attention MIL (Ilse et al., 2018) over one bag, other modalities mean-pooled.

The instance bag is the image patches by default (``instance_modality=`` picks genes or events when a
cohort has no images). Its attention-pooled vector is concatenated with the masked mean of every other
modality (a learned vector when a sample lacks one) and projected to d. A baseline: it weighs the instances
only, so it declares the instance kind (``patch`` by default) and no ``modality`` weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...datasets.batch import TOKEN_KIND
from ...encoders.tokens import Tokens
from ..base import AGGREGATORS, Aggregator, AggregatorOutput, check_common_args
from .pooling import GatedAttentionPooling, MissingAwareMeans, batch_size_of, check_tokens, token_record

_INSTANCE_PREFERENCE = ("images", "genomics", "events", "clinical")


def default_instance_modality(modalities: Sequence[str]) -> str:
    """``images`` when the schema has them, else the first of genomics, events, clinical."""
    return next(m for m in _INSTANCE_PREFERENCE if m in modalities)


@AGGREGATORS.register("abmil")
class ABMILAggregator(Aggregator):
    """Gated attention MIL over ``instance_modality`` + mean-pooled context -> ``[B, d]``.

    Args:
        d_model, modalities, n_outputs, class_names: the common constructor (the last two unused here).
        instance_modality: the bag (default :func:`default_instance_modality`).
        hidden: width of the gated attention MLP (default d_model). gated: use the sigmoid gate.
        dropout: dropout in the attention MLP.
    """

    shared_keywords = frozenset({"dropout"})

    def __init__(self, *, d_model: int, modalities: Sequence[str], n_outputs: int = 1,
                 class_names: Sequence[str] | None = None, instance_modality: str | None = None,
                 hidden: int | None = None, gated: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        check_common_args(owner="abmil", d_model=d_model, modalities=modalities, n_outputs=n_outputs,
                          dropout=dropout)
        if not any(m in _INSTANCE_PREFERENCE for m in modalities):
            raise ValueError(f"abmil: no known modality in {list(modalities)}; expected some of "
                             f"{_INSTANCE_PREFERENCE}")
        instance_modality = instance_modality or default_instance_modality(modalities)
        if instance_modality not in modalities:
            raise ValueError(f"abmil: instance_modality={instance_modality!r} is not one of the modalities "
                             f"{list(modalities)}")
        self.d_model, self.modalities, self.instance_modality = d_model, tuple(modalities), instance_modality
        self.attention = GatedAttentionPooling(d_model=d_model, hidden=hidden, gated=gated, dropout=dropout)
        self.missing_bag = nn.Parameter(torch.randn(d_model) * 0.02)
        self.others = [m for m in self.modalities if m != instance_modality]
        self.means = MissingAwareMeans(d_model=d_model, modalities=self.others) if self.others else None
        width = d_model * (1 + len(self.others))
        self.fuse = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d_model))
        self.attention_kinds = frozenset({TOKEN_KIND[instance_modality]})

    def forward(self, tokens: Mapping[str, Tokens]) -> AggregatorOutput:
        """``tokens``: modality -> Tokens ``[B, T_m, d]`` -> pooled ``[B, d]`` + the instance record."""
        check_tokens(tokens, self.modalities, self.d_model)
        B, like = batch_size_of(tokens)
        missing = self.missing_bag.to(like.dtype).expand(B, -1)
        records = []
        bag = tokens.get(self.instance_modality)
        if bag is None:
            pooled = missing
        else:
            pooled, weights, raw = self.attention(bag.values, bag.mask)
            pooled = torch.where(bag.mask.any(dim=1, keepdim=True), pooled[:, 0], missing)
            if self.wants_records:
                records.append(token_record(bag, raw[:, 0], value=weights[:, 0]))
        parts = [pooled] + ([self.means(tokens, B, like)] if self.means is not None else [])
        return AggregatorOutput(pooled=self.fuse(torch.cat(parts, dim=-1)), records=records)
