"""Building blocks shared by the aggregators: gated attention pooling, masked means, token capping, records.

Everything here is linear in the number of tokens T (no ``[T, T]`` matrix), exact-zero on padding
(:func:`~clinfuse.fusion.records.masked_normalise`) and independent of the other samples of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ...datasets.batch import TOKEN_KIND
from ...encoders.tokens import Tokens
from ..records import AttentionRecord, masked_normalise, normalise_nonnegative


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, T, d]`` over the real tokens ``mask [B, T]`` -> ``[B, d]`` (0 where none is real)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    # multiply by the mask first so that non-finite padding content can never leak (0 * inf = nan otherwise)
    total = torch.where(m.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)
    return total / m.sum(dim=1).clamp_min(1.0)


class GatedAttentionPooling(nn.Module):
    """Gated attention pooling (Ilse et al., 2018) with ``n_branches`` independent attention vectors.

    score[q, t] = w_q . (tanh(V x_t) * sigmoid(U x_t)); weights = softmax over the real tokens (per branch);
    pooled[q] = sum_t weights[q, t] * x_t. Cost O(T * hidden * n_branches): linear in T.

    Args:
        d_model: token width d.
        hidden: width of the gating MLP (default ``d_model``).
        n_branches: Q, the number of pooled vectors (1 for classic MIL pooling).
        gated: use the sigmoid gate (False = plain tanh attention).
        dropout: dropout on the scores' hidden layer during training.
    """

    def __init__(self, *, d_model: int, hidden: int | None = None, n_branches: int = 1, gated: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if n_branches <= 0:
            raise ValueError(f"n_branches must be positive, got {n_branches}")
        hidden = hidden or d_model
        self.attn_v = nn.Linear(d_model, hidden)
        self.attn_u = nn.Linear(d_model, hidden) if gated else None
        self.drop = nn.Dropout(dropout)
        self.attn_w = nn.Linear(hidden, n_branches)
        self.n_branches = n_branches

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Raw scores ``[B, Q, T]`` for tokens ``x [B, T, d]``."""
        if not torch.is_grad_enabled():  # inference: in place on the [B, T, hidden] temporaries (same values)
            h = self.attn_v(x).tanh_()
            if self.attn_u is not None:
                h.mul_(self.attn_u(x).sigmoid_())
            return rearrange(self.attn_w(self.drop(h)), "b t q -> b q t")
        h = torch.tanh(self.attn_v(x))
        if self.attn_u is not None:
            h = h * torch.sigmoid(self.attn_u(x))
        return rearrange(self.attn_w(self.drop(h)), "b t q -> b q t")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pool ``x [B, T, d]`` over ``mask [B, T]``.

        Returns:
            pooled ``[B, Q, d]`` (zeros for a sample without real tokens), weights ``[B, Q, T]`` (sum 1 over
            real tokens, exact 0 on padding), raw scores ``[B, Q, T]``.
        """
        raw = self.scores(x)
        weights = masked_normalise(raw, mask.unsqueeze(1))
        if not bool(mask.all()):  # padding rows to 0; a bag without padding is used as it is (no copy)
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        pooled = torch.einsum("bqt,btd->bqd", weights, x)
        return pooled, weights, raw


@dataclass
class CappedTokens:
    """A modality's tokens after :func:`cap_tokens`: per sample either its own tokens or a summary.

    Attributes:
        values: ``[B, W + Q, d]``: the compacted real tokens of samples at or below the cap (first W
            columns), then Q summary tokens of samples above it.
        mask: bool ``[B, W + Q]``.
        index: long ``[B, W]`` original token position of each compacted column.
        summarised: bool ``[B]``, the sample's tokens were replaced by the summary.
        pool_weights: ``[B, Q, T]`` pooling weights over the original tokens (zeros when not summarised),
            or None when no sample of the batch was summarised.
        width: W.
    """

    values: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor
    summarised: torch.Tensor
    pool_weights: torch.Tensor | None
    width: int

    def to_original(self, weights: torch.Tensor, original_mask: torch.Tensor) -> torch.Tensor:
        """Map non-negative weights over the capped columns ``[B, W + Q]`` back to the original ``[B, T]``.

        Summary columns are spread over the original tokens by their pooling weights (attention rollout
        through the summary), so every original token keeps a weight.
        """
        B, T = original_mask.shape
        out = weights.new_zeros(B, T)
        direct = weights[:, : self.width] * self.mask[:, : self.width]
        out = out.scatter_add(1, self.index, direct)
        if self.pool_weights is not None:
            out = out + torch.einsum("bq,bqt->bt", weights[:, self.width:], self.pool_weights)
        return out * original_mask


def cap_tokens(x: torch.Tensor, mask: torch.Tensor, *, limit: int,
               pooler: GatedAttentionPooling) -> CappedTokens:
    """Keep each sample's real tokens when it has at most ``limit`` of them, else its ``pooler`` summary.

    The decision is per sample (by its own token count), so a sample's result never depends on which other
    samples share the batch. Real tokens are compacted to the front (stable order), so the width of the
    kept part is at most ``limit`` whatever the padded length T: later all-pairs attention stays small.

    Args:
        x: ``[B, T, d]``; mask: bool ``[B, T]``; limit: the cap (>= 1); pooler: Q-branch pooling.
    """
    B, T, d = x.shape
    counts = mask.sum(dim=1)
    summarised = counts > limit
    keep = mask & ~summarised.unsqueeze(1)
    width = int(min(T, limit, int(keep.sum(dim=1).max()) if B else 0)) or 1
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :width]  # real first, stable
    kept_x = torch.gather(x, 1, order.unsqueeze(-1).expand(B, width, d))
    kept_mask = torch.gather(keep, 1, order)
    if not bool(summarised.any()):
        return CappedTokens(kept_x, kept_mask, order, summarised, None, width)
    pooled, weights, _ = pooler(x, mask & summarised.unsqueeze(1))
    q = pooled.shape[1]
    summ_mask = summarised.unsqueeze(1).expand(B, q)
    values = torch.cat([kept_x, pooled], dim=1)
    return CappedTokens(values, torch.cat([kept_mask, summ_mask], dim=1), order, summarised, weights, width)


class MissingAwareMeans(nn.Module):
    """Masked mean per modality, a learned vector for an absent modality (never zeros), concatenated."""

    def __init__(self, *, d_model: int, modalities: Sequence[str]) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.randn(d_model) * 0.02)
                                         for m in self.modalities})

    def forward(self, tokens: Mapping[str, Tokens], batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """``[B, len(modalities) * d]``; a modality missing from ``tokens`` is absent for every sample."""
        parts = []
        for m in self.modalities:
            miss = self.missing[m].to(like.dtype).expand(batch_size, -1)
            if m not in tokens:
                parts.append(miss)
                continue
            t = tokens[m]
            present = t.mask.any(dim=1, keepdim=True)
            parts.append(torch.where(present, masked_mean(t.values, t.mask), miss))
        return torch.cat(parts, dim=-1)


def batch_size_of(tokens: Mapping[str, Tokens]) -> tuple[int, torch.Tensor]:
    """B and one tensor (for device/dtype) of a non-empty token mapping."""
    if not tokens:
        raise ValueError("an aggregator needs the tokens of at least one modality, got an empty mapping")
    sizes = {m: int(t.values.shape[0]) for m, t in tokens.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every modality must hold the same samples (batch size), got {sizes}")
    first = next(iter(tokens.values()))
    return next(iter(sizes.values())), first.values


def check_tokens(tokens: Mapping[str, Tokens], modalities: Sequence[str], d_model: int) -> None:
    """Raise a clear error for unknown modalities or a token width different from ``d_model``."""
    if not isinstance(tokens, Mapping):
        raise TypeError(f"tokens must be a mapping modality -> Tokens, got {type(tokens).__name__}")
    for m, t in tokens.items():
        if m not in modalities:
            raise ValueError(f"tokens for modality {m!r}, which this aggregator was not built for "
                             f"(modalities={list(modalities)})")
        if not isinstance(t, Tokens):
            raise TypeError(f"tokens[{m!r}] must be Tokens, got {type(t).__name__}")
        if t.d_model != d_model:
            raise ValueError(f"tokens of modality {m!r} have width {t.d_model}, expected d_model={d_model}")
    batch_size_of(tokens)


def record_meta(tokens: Tokens) -> dict:
    """Report columns from the encoder's ``Tokens.meta``: ``x, y, position, slide_id`` / ``time, code``."""
    meta = dict(tokens.meta)
    coords = meta.get("coords")
    if isinstance(coords, torch.Tensor) and coords.dim() == 3 and coords.shape[-1] == 2:
        meta["x"], meta["y"] = coords[..., 0], coords[..., 1]
    if "times" in meta and "time" not in meta:
        meta["time"] = meta["times"]
    return meta


def token_record(tokens: Tokens, raw: torch.Tensor, *, value: torch.Tensor | None = None,
                 nonnegative: bool = False, meta: Mapping | None = None) -> AttentionRecord:
    """The record of kind ``TOKEN_KIND[modality]`` for one modality's tokens.

    Args:
        raw: ``[B, T]`` or ``[B, C, T]`` scores. With ``nonnegative`` they are weights that are scaled to
            sum 1 (:func:`normalise_nonnegative`), else logits (:func:`masked_normalise`).
        value: already-normalised weights (then ``raw`` is only kept beside them).
    """
    if raw.dim() == 2:
        raw = raw.unsqueeze(1)
    mask = tokens.mask
    if value is None:
        norm = normalise_nonnegative if nonnegative else masked_normalise
        value = norm(raw, mask.unsqueeze(1))
    elif value.dim() == 2:
        value = value.unsqueeze(1)
    value = value * mask.unsqueeze(1)  # exact zeros on padding, whatever produced the weights
    raw = raw.masked_fill(~mask.unsqueeze(1), 0.0)
    full_meta = record_meta(tokens)
    full_meta.update(meta or {})
    return AttentionRecord(kind=TOKEN_KIND[tokens.modality], modality=tokens.modality, value=value, raw=raw,
                           mask=mask, names=tokens.names, meta=full_meta)


def modality_record(weights: torch.Tensor, present: torch.Tensor, modalities: Sequence[str],
                    *, raw: torch.Tensor | None = None, logits: bool = False) -> AttentionRecord:
    """The ``modality`` record: one weight per modality and sample, ``[B, 1, M]``, absent = exactly 0.

    Args:
        weights: ``[B, M]`` non-negative weights (or logits with ``logits=True``).
        present: bool ``[B, M]``.
    """
    norm = masked_normalise if logits else normalise_nonnegative
    value = norm(weights, present) * present
    raw = weights if raw is None else raw
    names = [[m if p else "" for m, p in zip(modalities, row)] for row in present.tolist()]
    return AttentionRecord(kind="modality", modality="all", value=value.unsqueeze(1),
                           raw=raw.masked_fill(~present, 0.0).unsqueeze(1), mask=present, names=names)


def presence_matrix(tokens: Mapping[str, Tokens], modalities: Sequence[str], batch_size: int,
                    device: torch.device) -> torch.Tensor:
    """bool ``[B, M]``: sample b has at least one real token of modality m."""
    cols = [tokens[m].mask.any(dim=1) if m in tokens
            else torch.zeros(batch_size, dtype=torch.bool, device=device) for m in modalities]
    return torch.stack(cols, dim=1)
