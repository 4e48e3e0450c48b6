"""Task heads: the patient vector(s) from an aggregator -> classification logits, hazard logits or a Cox risk.

Every head accepts a pooled ``[B, d]`` vector or per-class vectors ``[B, C, d]`` (an aggregator may pool
once per class or time bin). Both use the same parameters: output c is ``w_c . v + b_c`` where ``v`` is the
pooled vector, or class c's own vector ``v[:, c]``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..encoders.common import check_int, check_positive_int, check_probability


class _ScoreHead(nn.Module):
    """An optional hidden layer followed by one score per output, ``[B, d]`` or ``[B, C, d]`` ->
    ``[B, C]``."""

    shared_keywords = frozenset({"dropout"})

    def __init__(self, *, d_model: int, n_outputs: int, hidden: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_int(d_model, "d_model", owner=name)
        check_positive_int(n_outputs, "the number of outputs", owner=name)
        if hidden is not None:
            check_positive_int(hidden, "hidden", owner=name)
        check_probability(dropout, "dropout", owner=name)
        self.d_model, self.n_outputs, self.hidden = d_model, n_outputs, hidden
        width = hidden or d_model
        self.body = (nn.Sequential(nn.LayerNorm(d_model), nn.Dropout(dropout), nn.Linear(d_model, width),
                                   nn.GELU())
                     if hidden else nn.Sequential(nn.LayerNorm(d_model), nn.Dropout(dropout)))
        self.score = nn.Linear(width, n_outputs)

    def scores(self, pooled: torch.Tensor) -> torch.Tensor:
        if not isinstance(pooled, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a tensor, got {type(pooled).__name__}")
        if pooled.shape[-1] != self.d_model or pooled.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__} expects [B, {self.d_model}] or [B, C, {self.d_model}], "
                             f"got {tuple(pooled.shape)}")
        h = self.body(pooled)
        if pooled.dim() == 2:
            return self.score(h)
        if pooled.shape[1] != self.n_outputs:
            raise ValueError(f"{type(self).__name__}: per-class input has {pooled.shape[1]} vectors, "
                             f"expected one per output ({self.n_outputs})")
        # class c is scored from its own vector with row c of the same linear layer
        return torch.einsum("bcd,cd->bc", h, self.score.weight) + self.score.bias

    def part_scores(self, pooled: torch.Tensor,
                    parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Each additive part ``X`` of ``pooled`` (``[B, d]`` or ``[B, C, d]``) -> its exact share of the
        scores.

        A generic head method for :meth:`Aggregator.explain`: an aggregator whose pooled vector is a sum of
        parts can measure each part in the head's output units (logits), e.g. to weigh modalities.
        Without a hidden layer the head is ``w_c . LayerNorm(v) + b_c``, which is linear in ``v`` once the
        LayerNorm's scale ``sigma(v)`` is fixed: part X contributes ``<w_c * gamma, X - mean(X)> / sigma(v)``
        (``[B, C]``), and the shares of parts that sum to ``v`` sum to the score minus ``b_c + w_c . beta``.
        None with a hidden layer (no exact split).
        """
        if self.hidden:
            return None
        norm = self.body[0]
        sigma = torch.sqrt(pooled.var(-1, unbiased=False, keepdim=True) + norm.eps)
        weight = self.score.weight * norm.weight if norm.weight is not None else self.score.weight  # [C, d]
        out = {}
        for name, part in parts.items():
            centred = (part - part.mean(-1, keepdim=True)) / sigma
            out[name] = (torch.einsum("bcd,cd->bc", centred, weight) if centred.dim() == 3
                         else centred @ weight.T)
        return out


class ClassificationHead(_ScoreHead):
    """Class logits ``[B, C]`` (C >= 2; binary tasks use two logits and softmax cross-entropy)."""

    def __init__(self, *, d_model: int, n_classes: int, hidden: int | None = None,
                 dropout: float = 0.0) -> None:
        check_int(n_classes, "n_classes", owner="ClassificationHead", minimum=2)
        super().__init__(d_model=d_model, n_outputs=n_classes, hidden=hidden, dropout=dropout)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` or ``[B, C, d]`` -> logits ``[B, C]``."""
        return self.scores(pooled)


class DiscreteTimeHead(_ScoreHead):
    """Hazard logits ``[B, K]`` over K time bins: h_k = sigmoid(logit_k) = P(event in bin k | survived to
    k)."""

    def __init__(self, *, d_model: int, n_bins: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        check_positive_int(n_bins, "n_bins", owner="DiscreteTimeHead")
        super().__init__(d_model=d_model, n_outputs=n_bins, hidden=hidden, dropout=dropout)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` or ``[B, K, d]`` -> hazard logits ``[B, K]``."""
        return self.scores(pooled)


class CoxHead(_ScoreHead):
    """One log-risk per sample ``[B]`` (higher = worse) for the Cox partial likelihood.

    A per-class input must have a single vector (``[B, 1, d]``: one risk token).
    """

    def __init__(self, *, d_model: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__(d_model=d_model, n_outputs=1, hidden=hidden, dropout=dropout)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` or ``[B, 1, d]`` -> risk ``[B]``."""
        return self.scores(pooled)[:, 0]
