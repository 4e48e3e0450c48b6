"""``concat``: the simplest fusion baseline, mean-pooled tokens per modality, concatenated.

A modality a sample lacks contributes a learned "missing" vector (never zeros, which would be a value).
It weighs nothing, so it declares no attention kinds: asking its report for any is an error, not a constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from ...encoders.tokens import Tokens
from ..base import AGGREGATORS, Aggregator, AggregatorOutput, check_common_args
from .pooling import MissingAwareMeans, batch_size_of, check_tokens


@AGGREGATORS.register("concat")
class ConcatAggregator(Aggregator):
    """Masked mean per modality ``[B, d]`` each, concatenated ``[B, M * d]``, projected by an MLP to
    ``[B, d]``.

    Args:
        d_model, modalities, n_outputs, class_names: the common constructor (the last two unused here).
        dropout: dropout in the projection MLP.
    """

    shared_keywords = frozenset({"dropout"})

    attention_kinds = frozenset()

    def __init__(self, *, d_model: int, modalities: Sequence[str], n_outputs: int = 1,
                 class_names: Sequence[str] | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        check_common_args(owner="concat", d_model=d_model, modalities=modalities, n_outputs=n_outputs,
                          dropout=dropout)
        self.d_model, self.modalities = d_model, tuple(modalities)
        self.means = MissingAwareMeans(d_model=d_model, modalities=self.modalities)
        width = d_model * len(self.modalities)
        self.fuse = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d_model), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(d_model, d_model))

    def forward(self, tokens: Mapping[str, Tokens]) -> AggregatorOutput:
        """``tokens``: modality -> Tokens ``[B, T_m, d]`` -> pooled ``[B, d]``, no records."""
        check_tokens(tokens, self.modalities, self.d_model)
        B, like = batch_size_of(tokens)
        return AggregatorOutput(pooled=self.fuse(self.means(tokens, B, like)), records=[])
