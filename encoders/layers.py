"""The attention layers every clinfuse model shares: masked softmax, multi-head attention, feed-forward,
pre-norm transformer block and stack, and the one activation-checkpointing helper.

Used by the sequence encoders (genes, events, ViT), the self- and cross-attention aggregators and PersAM's
group-balanced encoder. Three properties are handled here once:

* **Memory linear in T.** Without ``need_weights``, attention is
  :func:`torch.nn.functional.scaled_dot_product_attention` (SDPA) with a boolean key-padding mask passed
  broadcast (``[B, 1, 1, T]``): with a float32 input and no attention dropout SDPA's fused kernel keeps only
  a log-sum-exp per query for backward, never the T x T weights. Attention dropout or an expanded mask would
  switch it to the math kernel, which materialises T x T, so that path takes no attention dropout.
  ``query_chunk_size`` splits the queries (exact) and recomputes each chunk in backward
  (:func:`checkpointed`), keeping memory linear even on the math kernel.
* **All-masked rows are finite.** A sample without any real key gets outputs exactly 0 (and zero weights),
  never a softmax over an empty set, so no NaN reaches values or gradients.
* **Padding never changes real tokens.** Masked keys get exactly zero weight and every other layer acts
  per token.

``need_weights=True`` computes the weights explicitly (:func:`attention_weights`) and returns them, with
optional dropout on them: for the aggregators, whose sequences are short and whose weights are exported.
``attention="latent"`` (induced-set attention, Set Transformer ISAB): ``n_latents`` learned latents read
the real tokens, then every token reads the latents, O(T * n_latents) for very long profiles.

State-dict keys written before these layers were shared are renamed on load in one place,
:data:`LEGACY_NAMES` (the self-attention aggregator's ``to_q / to_kv / out / norm1 / norm2 / ff`` and the
encoders' feed-forward ``ffn.2``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from .common import check_heads, check_int, check_positive_int, check_probability

AttentionKind = Literal["full", "latent"]

# old parameter prefix -> new one, per layer class (applied in order by ``_load_from_state_dict``)
LEGACY_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "MultiHeadAttention": (("to_q.", "q_proj."), ("to_kv.", "kv_proj."), ("out.", "out_proj.")),
    "TransformerBlock": (("norm1.", "norm_attn."), ("norm2.", "norm_ffn."), ("ff.", "ffn."),
                         ("ffn.2.", "ffn.3.")),
}


def _rename_legacy_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str) -> None:
    for old, new in LEGACY_NAMES.get(type(module).__name__, ()):
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


def masked_normalise(scores: torch.Tensor, mask: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` over the real tokens only, with exact zeros on padding.

    Args:
        scores: float ``[..., T]`` (or with T at ``dim``) raw scores (logits).
        mask: bool broadcastable to ``scores``; True = real token.

    Returns:
        Weights of the same shape; sums to 1 over real tokens, all zeros where no token is real.
        Numerically stable (max-subtracted), no NaN even for an all-False mask.
    """
    neg = torch.finfo(scores.dtype).min
    masked = scores.masked_fill(~mask, neg)
    peak = masked.amax(dim=dim, keepdim=True).detach()
    # in place on the fresh masked copy (the same values as exp(masked - peak)): one [.., T] tensor, not
    # three, which counts on long bags; autograd keeps exp's output, so under it the rest is out of place
    expd = masked.sub_(peak).exp_()
    tiny = torch.finfo(scores.dtype).tiny
    if torch.is_grad_enabled() and expd.requires_grad:
        expd = expd * mask
        return expd / expd.sum(dim=dim, keepdim=True).clamp_min(tiny)
    expd = expd.mul_(mask)
    return expd.div_(expd.sum(dim=dim, keepdim=True).clamp_min(tiny))


def attention_weights(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(dh))`` over the real keys: q ``[B, H, Tq, dh]``, k ``[B, H, Tk, dh]``, key_mask
    bool ``[B, Tk]`` -> ``[B, H, Tq, Tk]`` (rows of a sample without real keys are 0)."""
    logits = torch.einsum("bhqe,bhke->bhqk", q, k) * q.shape[-1] ** -0.5
    return masked_normalise(logits, key_mask[:, None, None, :])


def checkpointed(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """``fn(*args)`` whose activations are recomputed in backward instead of stored (the one checkpointing
    mechanism of clinfuse: ``torch.utils.checkpoint``, non-reentrant, so tensors ``fn`` closes over also
    get their gradients; its first call imports ``torch._dynamo``, a one-off cost)."""
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, *,
                     query_chunk_size: int | None = None) -> torch.Tensor:
    """SDPA of every query over the real keys: q ``[B, H, Tq, dh]``, k, v ``[B, H, Tk, dh]``, key_mask bool
    ``[B, Tk]`` or None (all real) -> ``[B, H, Tq, dh]``; rows of a sample without real keys are exactly 0.

    ``query_chunk_size``: at most this many queries per SDPA call, each recomputed in backward when
    gradients are recorded (None = all at once).
    """
    empty = sdpa_mask = None
    if key_mask is not None:
        has_key = key_mask.any(dim=1)  # [B]
        # all-True stand-in for samples with no real key: a finite softmax whose result is zeroed below
        sdpa_mask = rearrange(key_mask | ~has_key[:, None], "b t -> b 1 1 t")  # broadcast, never expanded
        empty = ~has_key
    n_q = q.shape[2]
    if query_chunk_size is None or n_q <= query_chunk_size:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)
    else:
        recompute = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)

        def sdpa(q_chunk: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q_chunk, k, v, attn_mask=sdpa_mask)

        chunks = [checkpointed(sdpa, q[:, :, s:s + query_chunk_size], k, v) if recompute
                  else sdpa(q[:, :, s:s + query_chunk_size], k, v) for s in range(0, n_q, query_chunk_size)]
        out = torch.cat(chunks, dim=2)
    if empty is not None and bool(empty.any()):
        out = out.masked_fill(rearrange(empty, "b -> b 1 1 1"), 0.0)
    return out


class FeedForward(nn.Sequential):
    """Position-wise ``Linear(d, ffn_mult * d) -> GELU -> Dropout(dropout) -> Linear(ffn_mult * d, d)``.

    The pre-norm and the dropout on the output belong to the caller (a block applies them around it).
    """

    def __init__(self, *, d_model: int, ffn_mult: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(ffn_mult * d_model, d_model))


class MultiHeadAttention(nn.Module):
    """Queries from ``x_q`` ``[B, Tq, d]`` attend to keys and values from ``x_kv`` ``[B, Tk, d]``.

    Args:
        d_model, n_heads: width and heads (d divisible by it).
        attention_dropout: dropout on the attention weights, used only with ``need_weights`` (the SDPA
            path takes none, see the module docstring).
        query_chunk_size: queries per SDPA call (None = one call).
    """

    def __init__(self, *, d_model: int, n_heads: int, attention_dropout: float = 0.0,
                 query_chunk_size: int | None = None) -> None:
        super().__init__()
        check_heads(d_model, n_heads, owner="MultiHeadAttention")
        self.n_heads = n_heads
        self.query_chunk_size = query_chunk_size
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(attention_dropout)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, key_mask: torch.Tensor | None, *,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``key_mask`` bool ``[B, Tk]`` (None = all real). With ``need_weights`` also returns the attention
        ``[B, H, Tq, Tk]`` (before dropout)."""
        q = rearrange(self.q_proj(x_q), "b t (h e) -> b h t e", h=self.n_heads)
        k, v = rearrange(self.kv_proj(x_kv), "b t (two h e) -> two b h t e", two=2, h=self.n_heads)
        if not need_weights:
            out = masked_attention(q, k, v, key_mask, query_chunk_size=self.query_chunk_size)
            return self.out_proj(rearrange(out, "b h t e -> b t (h e)"))
        if key_mask is None:
            key_mask = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device)
        attn = attention_weights(q, k, key_mask)
        out = torch.einsum("bhqk,bhke->bhqe", self.drop(attn), v)
        return self.out_proj(rearrange(out, "b h t e -> b t (h e)")), attn

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_legacy_keys(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block over ``x`` ``[B, T, d]`` with key-padding ``mask`` ``[B, T]``.

    Args:
        d_model, n_heads: width and heads.
        ffn_mult: feed-forward hidden width, multiple of d.
        dropout: on the attention and feed-forward outputs (before the residual sums).
        attention_dropout: on the attention weights (``need_weights`` only). ffn_dropout: inside the
            feed-forward, after the GELU.
        attention: ``"full"``: tokens attend to all real tokens; ``"latent"``: ``n_latents`` learned latents
            attend to the real tokens, then the tokens attend to the latents (linear in T).
        query_chunk_size: see :class:`MultiHeadAttention`.
    """

    def __init__(self, *, d_model: int, n_heads: int, ffn_mult: int = 2, dropout: float = 0.0,
                 attention_dropout: float = 0.0, ffn_dropout: float = 0.0, attention: AttentionKind = "full",
                 n_latents: int = 32, query_chunk_size: int | None = None) -> None:
        super().__init__()
        owner = "TransformerBlock"
        check_heads(d_model, n_heads, owner=owner)
        if attention not in ("full", "latent"):
            raise ValueError(f"attention must be 'full' or 'latent', got {attention!r}")
        for name, p in (("dropout", dropout), ("attention_dropout", attention_dropout),
                        ("ffn_dropout", ffn_dropout)):
            check_probability(p, name, owner=owner)
        if query_chunk_size is not None:
            check_positive_int(query_chunk_size, "query_chunk_size", owner=owner)
        check_positive_int(ffn_mult, "ffn_mult", owner=owner)
        self.attention = attention
        self.norm_attn = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model=d_model, n_heads=n_heads, attention_dropout=attention_dropout,
                                       query_chunk_size=query_chunk_size)
        if attention == "latent":
            check_positive_int(n_latents, "n_latents", owner=owner)
            self.latents = nn.Parameter(torch.randn(n_latents, d_model) * d_model**-0.5)
            self.attn_back = MultiHeadAttention(d_model=d_model, n_heads=n_heads,
                                                query_chunk_size=query_chunk_size)
            self.norm_latent = nn.LayerNorm(d_model)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model=d_model, ffn_mult=ffn_mult, dropout=ffn_dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, need_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, T, d]``, ``mask`` bool ``[B, T]`` -> ``[B, T, d]`` (and, with ``need_weights``, the
        attention ``[B, H, T, T]``; full attention only)."""
        h = self.norm_attn(x)
        attn = None
        if self.attention == "full":
            a = self.attn(h, h, mask, need_weights=need_weights)
            if need_weights:
                a, attn = a
        else:
            if need_weights:
                raise ValueError("TransformerBlock: need_weights needs attention='full'")
            lat = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
            lat = lat + self.attn(lat, h, mask)  # [B, m, d]: summary of the real tokens only
            a = self.attn_back(h, self.norm_latent(lat), None)
        x = x + self.drop(a)
        x = x + self.drop(self.ffn(self.norm_ffn(x)))
        return (x, attn) if need_weights else x

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_legacy_keys(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MaskedTransformer(nn.Module):
    """``n_layers`` :class:`TransformerBlock` s and a final LayerNorm; padding rows are zeroed.

    Args (keyword-only): as :class:`TransformerBlock` (``dropout`` on the block outputs), plus ``n_layers``
    (0 = only the final norm). ``forward(x [B, T, d], mask [B, T]) -> [B, T, d]``.
    """

    def __init__(self, *, d_model: int, n_heads: int, n_layers: int, ffn_mult: int = 2, dropout: float = 0.0,
                 attention: AttentionKind = "full", n_latents: int = 32,
                 query_chunk_size: int | None = None) -> None:
        super().__init__()
        check_heads(d_model, n_heads, owner="MaskedTransformer")
        check_int(n_layers, "n_layers", owner="MaskedTransformer", minimum=0)
        if attention not in ("full", "latent"):  # checked here too: with n_layers=0 no block checks it
            raise ValueError(f"attention must be 'full' or 'latent', got {attention!r}")
        self.layers = nn.ModuleList(
            TransformerBlock(d_model=d_model, n_heads=n_heads, ffn_mult=ffn_mult, dropout=dropout,
                             attention=attention, n_latents=n_latents, query_chunk_size=query_chunk_size)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        # zero padding rows so that nothing downstream can pick up their (finite, meaningless) content
        x = self.norm(x)
        return x if bool(mask.all()) else x.masked_fill(~mask.unsqueeze(-1), 0.0)
