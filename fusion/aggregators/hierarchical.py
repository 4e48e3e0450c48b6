"""``hierarchical``: attention within each modality, then attention across the modality summaries.

Level 1: gated attention pooling over each modality's tokens (its features, genes, events or patches) gives
one summary per modality and a weight per token. Level 2: gated attention over the sample's present modality
summaries gives one weight per modality (an absent modality gets exactly 0) and the patient vector.
Both levels are linear in the number of tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...datasets.batch import TOKEN_KIND
from ...encoders.common import check_positive_int
from ...encoders.tokens import Tokens
from ..base import AGGREGATORS, Aggregator, AggregatorOutput, check_common_args
from ..records import masked_normalise
from .pooling import (
    GatedAttentionPooling,
    batch_size_of,
    check_tokens,
    modality_record,
    presence_matrix,
    token_record,
)


@AGGREGATORS.register("hierarchical")
class HierarchicalAggregator(Aggregator):
    """Two-level attention: tokens -> modality summaries ``[B, M, d]`` -> patient vector ``[B, d]``.

    Args:
        d_model, modalities, n_outputs, class_names: the common constructor (the last two unused here).
        hidden: width of the gated attention MLPs (default d_model).
        dropout: dropout inside the attention MLPs.

    A sample without any modality gets a learned "nothing known" vector, so the prediction stays finite.
    """

    shared_keywords = frozenset({"dropout"})

    def __init__(self, *, d_model: int, modalities: Sequence[str], n_outputs: int = 1,
                 class_names: Sequence[str] | None = None, hidden: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        check_common_args(owner="hierarchical", d_model=d_model, modalities=modalities, n_outputs=n_outputs,
                          dropout=dropout)
        if hidden is not None:
            check_positive_int(hidden, "hidden", owner="hierarchical")
        self.d_model, self.modalities = d_model, tuple(modalities)
        self.level1 = nn.ModuleDict({m: GatedAttentionPooling(d_model=d_model, hidden=hidden, dropout=dropout)
                                     for m in self.modalities})
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model))
                                   for m in self.modalities})
        self.level2 = GatedAttentionPooling(d_model=d_model, hidden=hidden, dropout=dropout)
        self.empty = nn.Parameter(torch.zeros(d_model))
        self.norm = nn.LayerNorm(d_model)
        self.attention_kinds = frozenset({"modality"}
                                         | {TOKEN_KIND[m] for m in self.modalities if m in TOKEN_KIND})

    def forward(self, tokens: Mapping[str, Tokens]) -> AggregatorOutput:
        """``tokens``: modality -> Tokens ``[B, T_m, d]`` -> pooled ``[B, d]`` + records."""
        check_tokens(tokens, self.modalities, self.d_model)
        B, like = batch_size_of(tokens)
        records, summaries = [], []
        for m in self.modalities:
            if m not in tokens:
                summaries.append(like.new_zeros(B, self.d_model))
                continue
            t = tokens[m]
            pooled, weights, raw = self.level1[m](t.values, t.mask)
            summaries.append(self.proj[m](pooled[:, 0]))
            if self.wants_records:
                records.append(token_record(t, raw[:, 0], value=weights[:, 0]))
        summ = torch.stack(summaries, dim=1)  # [B, M, d]
        present = presence_matrix(tokens, self.modalities, B, like.device)
        scores = self.level2.scores(summ)[:, 0]  # [B, M]
        weights = masked_normalise(scores, present)
        fused = torch.einsum("bm,bmd->bd", weights, summ.masked_fill(~present.unsqueeze(-1), 0.0))
        none = ~present.any(dim=1, keepdim=True)
        fused = torch.where(none, self.empty.to(fused.dtype).expand(B, -1), fused)
        if self.wants_records:
            records.append(modality_record(scores, present, self.modalities, logits=True))
        return AggregatorOutput(pooled=self.norm(fused), records=records)
