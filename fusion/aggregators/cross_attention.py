"""``cross_attention``: co-attention in which one modality's tokens query another's.

As in genomic-guided co-attention survival models (MCAT), gene(-set) tokens (or clinical tokens) query
the patches: every query token gathers the patches relevant to it. Each (query, key) pair adds one learned
query token that is always real, so a sample lacking the query modality still attends over its keys.
A query modality with more than ``max_query_tokens`` tokens for a sample (raw genes, long event lists) is
summarised first, so the cost is O(Q * N): linear in the bag.

Exports, per key modality, one weight per key token: the attention averaged over heads and over the
sample's real queries, which sums to 1 (averaged again over pairs sharing the key modality). The full
head-averaged query x key map is kept in the record's ``meta["query_key_map"]`` (``[B, Q, T]``, with
``meta["query_names"]``) when it is small (at most ``max_map_elements`` numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...datasets.batch import TOKEN_KIND
from ...encoders.common import check_positive_int
from ...encoders.layers import FeedForward, MultiHeadAttention
from ...encoders.tokens import Tokens
from ..base import AGGREGATORS, Aggregator, AggregatorOutput, check_common_args
from .pooling import (
    GatedAttentionPooling,
    MissingAwareMeans,
    batch_size_of,
    cap_tokens,
    check_tokens,
    token_record,
)


def default_pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    """Genomics (else clinical, else events) queries the patches (else the first other modality)."""
    mods = list(modalities)
    key = ("images" if "images" in mods
           else next((m for m in ("events", "genomics", "clinical") if m in mods), None))
    query = next((m for m in ("genomics", "clinical", "events") if m in mods and m != key), None)
    if key is None or query is None:
        raise ValueError(f"cross_attention needs two modalities (one queries the other), got {mods}; "
                         "use abmil or hierarchical for a single modality")
    return [(query, key)]


class _CoAttention(nn.Module):
    """One (query modality -> key modality) co-attention layer, then attention pooling of the queries."""

    def __init__(self, *, d_model: int, n_heads: int, dropout: float, max_query_tokens: int) -> None:
        super().__init__()
        self.extra_query = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.norm_q, self.norm_k = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model=d_model, n_heads=n_heads, attention_dropout=dropout)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model=d_model, ffn_mult=2, dropout=dropout)
        self.summariser = GatedAttentionPooling(d_model=d_model, n_branches=min(max_query_tokens, 8))
        self.pool = GatedAttentionPooling(d_model=d_model)
        self.max_query_tokens = max_query_tokens

    def forward(self, query: Tokens | None, key: Tokens, batch_size: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[list[str]]]:
        """Returns pooled ``[B, d]``, key weights ``[B, T]`` (sum 1 over real keys), the head-averaged
        map ``[B, Q, T]``, the query mask ``[B, Q]`` and the query names ``[B][Q]``."""
        B, like = batch_size, key.values
        extra = self.extra_query.to(like.dtype).expand(B, 1, -1)
        ones = torch.ones(B, 1, dtype=torch.bool, device=like.device)
        if query is None:
            q, q_mask, q_names = extra, ones, [["learned"] for _ in range(B)]
        else:
            capped = cap_tokens(query.values, query.mask, limit=self.max_query_tokens, pooler=self.summariser)
            q = torch.cat([extra, capped.values], dim=1)
            q_mask = torch.cat([ones, capped.mask], dim=1)
            n_summ = capped.values.shape[1] - capped.width
            q_names = [["learned"] + [query.names[b][i] if m else "" for i, m in
                                      zip(capped.index[b].tolist(), capped.mask[b, :capped.width].tolist())]
                       + [f"summary{j}" if s else "" for j in range(n_summ)]
                       for b, s in enumerate(capped.summarised.tolist())]
        k_present = key.mask.any(dim=1, keepdim=True)
        # a query whose sample lacks every key gets no update (its attention row is all zeros)
        out, attn = self.attn(self.norm_q(q), self.norm_k(key.values), key.mask, need_weights=True)
        h = q + out
        h = h + self.ff(self.norm_ff(h))
        pooled, _, _ = self.pool(h, q_mask)
        qk = attn.mean(dim=1) * q_mask.unsqueeze(-1)  # [B, Q, T] head-averaged, real queries only
        key_weights = qk.sum(dim=1) / q_mask.sum(dim=1, keepdim=True).clamp_min(1)
        key_weights = key_weights * k_present
        return pooled.squeeze(1), key_weights, qk, q_mask, q_names


@AGGREGATORS.register("cross_attention")
class CrossAttentionAggregator(Aggregator):
    """Co-attention over configurable (query modality, key modality) pairs -> ``[B, d]``.

    Args:
        d_model, modalities, n_outputs, class_names: the common constructor (the last two unused here).
        pairs: (query, key) modality pairs; default :func:`default_pairs` (genomics or clinical -> images).
            A pair whose modalities are not in ``modalities`` is a ``ValueError``; query == key is refused
            (all-pairs attention over a bag would be quadratic).
        both_ways: also add every reverse pair (key queries query).
        n_heads: attention heads. max_query_tokens: cap on real queries per sample (more are summarised).
        max_map_elements: keep the full query x key map in the record meta up to this many numbers.
        dropout: attention / feed-forward dropout.

    Modalities in no pair join the fused vector as masked means (a learned vector when absent).
    """

    shared_keywords = frozenset({"n_heads", "dropout"})

    def __init__(self, *, d_model: int, modalities: Sequence[str], n_outputs: int = 1,
                 class_names: Sequence[str] | None = None, pairs: Sequence[Sequence[str]] | None = None,
                 both_ways: bool = False, n_heads: int = 4, max_query_tokens: int = 64,
                 max_map_elements: int = 1_000_000, dropout: float = 0.1) -> None:
        super().__init__()
        check_common_args(owner="cross_attention", d_model=d_model, modalities=modalities,
                          n_outputs=n_outputs, n_heads=n_heads, dropout=dropout)
        check_positive_int(max_query_tokens, "max_query_tokens", owner="cross_attention")
        self.d_model, self.modalities = d_model, tuple(modalities)
        pair_list = default_pairs(self.modalities) if pairs is None else [tuple(p) for p in pairs]
        for p in pair_list:
            if len(p) != 2 or any(m not in self.modalities for m in p):
                raise ValueError(f"cross_attention: each pair must be (query, key) of modalities in "
                                 f"{list(self.modalities)}, got {p!r}")
            if p[0] == p[1]:
                raise ValueError(f"cross_attention: pair {p!r} has the same query and key modality")
        if both_ways:
            pair_list += [(k, q) for q, k in pair_list if (k, q) not in pair_list]
        if not pair_list:
            raise ValueError("cross_attention: pairs must not be empty")
        self.pairs = list(dict.fromkeys(pair_list))
        self.max_map_elements = max_map_elements
        self.coattn = nn.ModuleList(_CoAttention(d_model=d_model, n_heads=n_heads, dropout=dropout,
                                                 max_query_tokens=max_query_tokens) for _ in self.pairs)
        covered = {m for p in self.pairs for m in p}
        self.others = [m for m in self.modalities if m not in covered]
        self.means = MissingAwareMeans(d_model=d_model, modalities=self.others) if self.others else None
        self.fuse = nn.Sequential(nn.LayerNorm(d_model * (len(self.pairs) + len(self.others))),
                                  nn.Linear(d_model * (len(self.pairs) + len(self.others)), d_model))
        self.attention_kinds = frozenset(TOKEN_KIND[k] for _, k in self.pairs)

    def forward(self, tokens: Mapping[str, Tokens]) -> AggregatorOutput:
        """``tokens``: modality -> Tokens ``[B, T_m, d]`` -> pooled ``[B, d]``, a record per key modality."""
        check_tokens(tokens, self.modalities, self.d_model)
        B, like = batch_size_of(tokens)
        parts, by_key = [], {}
        for (q_mod, k_mod), layer in zip(self.pairs, self.coattn):
            if k_mod not in tokens:  # the key modality is absent for every sample: nothing to attend
                parts.append(torch.zeros(B, self.d_model, dtype=like.dtype, device=like.device))
                continue
            pooled, weights, qk, _, q_names = layer(tokens.get(q_mod), tokens[k_mod], B)
            parts.append(pooled)
            by_key.setdefault(k_mod, []).append((q_mod, weights, qk, q_names))
        if self.means is not None:
            parts.append(self.means(tokens, B, like))
        fused = self.fuse(torch.cat(parts, dim=-1))

        records = []
        for k_mod, entries in (by_key.items() if self.wants_records else ()):
            weights = torch.stack([w for _, w, _, _ in entries]).mean(dim=0)
            meta = {"queried_by": [q for q, _, _, _ in entries]}
            for q_mod, _, qk, q_names in entries:
                if qk.numel() <= self.max_map_elements:
                    meta[f"query_key_map/{q_mod}"] = qk
                    meta[f"query_names/{q_mod}"] = q_names
            if len(entries) == 1 and f"query_key_map/{entries[0][0]}" in meta:
                meta["query_key_map"], meta["query_names"] = qk, entries[0][3]
            records.append(token_record(tokens[k_mod], weights, nonnegative=True, meta=meta))
        return AggregatorOutput(pooled=fused, records=records)
