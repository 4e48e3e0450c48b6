"""``self_attention``: a [CLS] transformer over the tokens of every modality.

Large token sets are summarised first (per sample, by gated attention pooling into a few tokens), so the
joint sequence stays small and the cost is linear in the number of patches. The exported attention is the
[CLS] row of the last layer, averaged over heads:

- per token (kind ``feature`` / ``gene`` / ``event`` / ``patch``): the CLS attention restricted to the
  modality's tokens, renormalised. For a summarised bag the weight of patch l is the attention rolled out
  through the summary, ``sum_q cls[q] * pool[q, l]``, so patch weights exist at any bag size;
- per modality (kind ``modality``): the CLS attention summed over the modality's tokens (summaries
  included), renormalised over the sample's present modalities; an absent modality gets exactly 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...datasets.batch import TOKEN_KIND
from ...encoders.common import check_positive_int
from ...encoders.layers import TransformerBlock
from ...encoders.tokens import Tokens
from ..base import AGGREGATORS, Aggregator, AggregatorOutput, check_common_args
from .pooling import (
    GatedAttentionPooling,
    batch_size_of,
    cap_tokens,
    check_tokens,
    modality_record,
    presence_matrix,
    token_record,
)


@AGGREGATORS.register("self_attention")
class SelfAttentionAggregator(Aggregator):
    """[CLS] + all modalities' tokens -> ``n_layers`` transformer blocks -> the CLS output ``[B, d]``.

    Args:
        d_model: token width; modalities: the schema's modalities; n_outputs, class_names: unused here
            (the head scores the pooled vector) but validated for the common constructor.
        n_layers: transformer blocks (>= 1). n_heads: attention heads (divides d_model).
        ffn_mult: feed-forward width of the blocks, in multiples of d_model.
        max_patch_tokens: an image bag with more patches is summarised into ``n_summary_tokens`` tokens.
        max_tokens: the same cap for the other modalities (long event histories, un-grouped genes).
        n_summary_tokens: Q, tokens a summarised modality contributes.
        dropout: dropout in the blocks.
    """

    shared_keywords = frozenset({"n_heads", "n_layers", "dropout", "ffn_mult"})

    def __init__(self, *, d_model: int, modalities: Sequence[str], n_outputs: int = 1,
                 class_names: Sequence[str] | None = None, n_layers: int = 1, n_heads: int = 4,
                 ffn_mult: int = 2,
                 max_patch_tokens: int = 256, max_tokens: int = 1024, n_summary_tokens: int = 8,
                 dropout: float = 0.1) -> None:
        super().__init__()
        check_common_args(owner="self_attention", d_model=d_model, modalities=modalities, n_outputs=n_outputs,
                          n_heads=n_heads, dropout=dropout)
        for name, value in (("n_layers", n_layers), ("ffn_mult", ffn_mult),
                            ("max_patch_tokens", max_patch_tokens),
                            ("max_tokens", max_tokens), ("n_summary_tokens", n_summary_tokens)):
            check_positive_int(value, name, owner="self_attention")
        self.d_model, self.modalities = d_model, tuple(modalities)
        self.limits = {m: (max_patch_tokens if m == "images" else max_tokens) for m in self.modalities}
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.summarisers = nn.ModuleDict({m: GatedAttentionPooling(d_model=d_model,
                                                                   n_branches=n_summary_tokens)
                                          for m in self.modalities})
        # dropout on the attention weights, inside the feed-forward and on both block outputs
        self.blocks = nn.ModuleList(TransformerBlock(d_model=d_model, n_heads=n_heads, ffn_mult=ffn_mult,
                                                     dropout=dropout, attention_dropout=dropout,
                                                     ffn_dropout=dropout)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.attention_kinds = frozenset({"modality"}
                                         | {TOKEN_KIND[m] for m in self.modalities if m in TOKEN_KIND})

    def forward(self, tokens: Mapping[str, Tokens]) -> AggregatorOutput:
        """``tokens``: modality -> Tokens ``[B, T_m, d]`` -> pooled ``[B, d]`` + records."""
        check_tokens(tokens, self.modalities, self.d_model)
        B, like = batch_size_of(tokens)
        order = [m for m in self.modalities if m in tokens]
        capped = {m: cap_tokens(tokens[m].values, tokens[m].mask, limit=self.limits[m],
                                pooler=self.summarisers[m]) for m in order}
        seq = torch.cat([self.cls.to(like.dtype).expand(B, 1, -1)] + [capped[m].values for m in order], dim=1)
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=like.device)]
                         + [capped[m].mask for m in order], dim=1)
        attn = None
        for block in self.blocks:
            seq, attn = block(seq, mask, need_weights=True)
        cls_row = attn[:, :, 0, :].mean(dim=1)  # [B, L] head-averaged CLS attention of the last layer
        pooled = self.norm(seq[:, 0])

        records, per_modality, start = [], {}, 1
        if not self.wants_records:
            return AggregatorOutput(pooled=pooled, records=records)
        for m in order:
            width = capped[m].values.shape[1]
            part = cls_row[:, start:start + width] * capped[m].mask
            start += width
            per_modality[m] = part.sum(dim=1)
            weights = capped[m].to_original(part, tokens[m].mask)
            records.append(token_record(tokens[m], weights, nonnegative=True,
                                        meta={"summarised": capped[m].summarised}))
        present = presence_matrix(tokens, self.modalities, B, like.device)
        mod_raw = torch.stack([per_modality.get(m, torch.zeros(B, device=like.device, dtype=like.dtype))
                               for m in self.modalities], dim=1)
        records.append(modality_record(mod_raw, present, self.modalities))
        return AggregatorOutput(pooled=pooled, records=records)
