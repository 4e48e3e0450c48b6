"""A masked pre-norm transformer block for long token sequences (genes, events, patches).

Attention is :func:`torch.nn.functional.scaled_dot_product_attention` (SDPA) with a boolean key-padding
mask ``[B, 1, 1, T]``. Three properties matter for clinfuse and are handled here once:

* **Memory linear in T.** On CPU (torch 2.13) SDPA with a float32 input, a broadcast key-padding mask and
  ``dropout_p=0`` dispatches to its fused flash kernel, which keeps only the log-sum-exp per query for the
  backward pass: measured peak RSS for forward+backward at T=8,000 (B=2, 4 heads) is ~40 MB, where the
  T x T weights alone would be 2 GB. ``dropout_p > 0`` silently switches SDPA to the *math* kernel, which
  materialises T x T (measured 2 GB at T=4,000), and a mask expanded to ``[B, H, T, T]`` is itself
  quadratic (measured 0.5 GB at T=4,000). So attention-weight dropout is deliberately not offered (dropout
  acts on the block outputs) and the mask is always passed broadcast. ``query_chunk_size`` splits the
  queries into chunks (exact: every chunk sees all keys) and, when gradients are recorded, recomputes each
  chunk's attention in backward (a checkpoint), so peak memory stays linear in T even on a backend that
  falls back to the math kernel; with the flash kernel it is not needed (default None).
* **All-masked rows are finite.** A sample without the modality has no valid key; its mask row is
  replaced by all-True (attending to finite padding) and its outputs are zeroed, so no softmax over an
  empty set is ever taken and no NaN reaches values or gradients, whatever the backend does.
* **Padding never changes real tokens.** Masked keys get exactly zero weight, there is no cross-sample
  operation (no batch norm), and token-wise layers act per token.

``attention="latent"`` replaces token-to-token attention by induced-set attention (Set Transformer ISAB):
``n_latents`` learned latents first attend to the real tokens, then every token attends to the latents.
Time and memory are O(T * n_latents): the option for very long profiles (20,000 genes) when quadratic time
is too slow; the full mode is exact but its time grows as T^2.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

AttentionKind = Literal["full", "latent"]


def check_heads(d_model: int, n_heads: int, *, where: str) -> None:
    """Raise ``ValueError`` unless ``d_model`` is a positive multiple of ``n_heads``."""
    if not isinstance(d_model, int) or not isinstance(n_heads, int) or d_model < 1 or n_heads < 1:
        raise ValueError(f"{where}: d_model and n_heads must be positive integers, got {d_model!r}, {n_heads!r}")
    if d_model % n_heads:
        raise ValueError(f"{where}: d_model={d_model} is not divisible by n_heads={n_heads}")


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    *,
    query_chunk_size: int | None = None,
) -> torch.Tensor:
    """Multi-head attention of every query over the real keys.

    Args:
        q: ``[B, H, Tq, dh]``; k, v: ``[B, H, Tk, dh]``.
        key_mask: bool ``[B, Tk]``, True = real key, or None (all real).
        query_chunk_size: process at most this many queries per SDPA call (None = all at once).

    Returns:
        ``[B, H, Tq, dh]``; rows of a sample without any real key are exactly 0.
    """
    empty = None
    sdpa_mask = None
    if key_mask is not None:
        has_key = key_mask.any(dim=1)  # [B]
        # all-True stand-in for samples with no real key: a finite softmax whose result is zeroed below
        safe = key_mask | ~has_key[:, None]
        sdpa_mask = rearrange(safe, "b t -> b 1 1 t")  # broadcast, never expanded to [B, H, Tq, Tk]
        empty = ~has_key
    n_q = q.shape[2]
    if query_chunk_size is None or n_q <= query_chunk_size:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)
    else:
        use_ckpt = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        chunks = []
        for start in range(0, n_q, query_chunk_size):
            q_chunk = q[:, :, start : start + query_chunk_size]
            if use_ckpt:
                chunks.append(_RecomputedSDPA.apply(q_chunk, k, v, sdpa_mask))
            else:
                chunks.append(F.scaled_dot_product_attention(q_chunk, k, v, attn_mask=sdpa_mask))
        out = torch.cat(chunks, dim=2)
    if empty is not None and bool(empty.any()):
        out = out.masked_fill(rearrange(empty, "b -> b 1 1 1"), 0.0)
    return out


class _RecomputedSDPA(torch.autograd.Function):
    """SDPA of one query chunk that keeps only its inputs and recomputes the attention in backward.

    A hand-written checkpoint: ``torch.utils.checkpoint`` would do the same, but its first call imports
    torch._dynamo (tens of seconds on a loaded 2-core machine). The saved k, v are the same tensors for
    every chunk (no copies), so what is kept for backward is linear in T.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask):  # type: ignore[override]
        ctx.save_for_backward(q, k, v)
        ctx.mask = mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
            out = F.scaled_dot_product_attention(*inputs, attn_mask=ctx.mask)
            grads = torch.autograd.grad(out, inputs, grad_out)
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:3])), None)


class MultiHeadAttention(nn.Module):
    """Queries from ``x_q`` ``[B, Tq, d]`` attend to keys/values from ``x_kv`` ``[B, Tk, d]`` -> ``[B, Tq, d]``."""

    def __init__(self, *, d_model: int, n_heads: int, query_chunk_size: int | None = None) -> None:
        super().__init__()
        check_heads(d_model, n_heads, where="MultiHeadAttention")
        self.n_heads = n_heads
        self.query_chunk_size = query_chunk_size
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        q = rearrange(self.q_proj(x_q), "b t (h e) -> b h t e", h=self.n_heads)
        k, v = rearrange(self.kv_proj(x_kv), "b t (two h e) -> two b h t e", two=2, h=self.n_heads)
        out = masked_attention(q, k, v, key_mask, query_chunk_size=self.query_chunk_size)
        return self.out_proj(rearrange(out, "b h t e -> b t (h e)"))


class MaskedTransformerBlock(nn.Module):
    """Pre-norm transformer block over ``x`` ``[B, T, d]`` with key-padding ``mask`` ``[B, T]``.

    ``attention="full"``: tokens attend to all real tokens. ``attention="latent"``: ``n_latents`` learned
    latents attend to the real tokens, then the tokens attend to the latents (linear in T).
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        ffn_mult: int = 2,
        dropout: float = 0.0,
        attention: AttentionKind = "full",
        n_latents: int = 32,
        query_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_heads(d_model, n_heads, where="MaskedTransformerBlock")
        if attention not in ("full", "latent"):
            raise ValueError(f"attention must be 'full' or 'latent', got {attention!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if query_chunk_size is not None and query_chunk_size < 1:
            raise ValueError(f"query_chunk_size must be a positive integer or None, got {query_chunk_size!r}")
        if ffn_mult < 1:
            raise ValueError(f"ffn_mult must be >= 1, got {ffn_mult!r}")
        self.attention = attention
        self.norm_attn = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model=d_model, n_heads=n_heads, query_chunk_size=query_chunk_size)
        if attention == "latent":
            if n_latents < 1:
                raise ValueError(f"n_latents must be >= 1, got {n_latents!r}")
            self.latents = nn.Parameter(torch.randn(n_latents, d_model) * d_model**-0.5)
            self.attn_back = MultiHeadAttention(d_model=d_model, n_heads=n_heads, query_chunk_size=query_chunk_size)
            self.norm_latent = nn.LayerNorm(d_model)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Linear(ffn_mult * d_model, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, T, d]``, ``mask`` bool ``[B, T]`` -> ``[B, T, d]``."""
        h = self.norm_attn(x)
        if self.attention == "full":
            a = self.attn(h, h, mask)
        else:
            lat = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
            lat = lat + self.attn(lat, h, mask)  # [B, m, d]: summary of the real tokens only
            a = self.attn_back(h, self.norm_latent(lat), None)
        x = x + self.drop(a)
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class MaskedTransformer(nn.Module):
    """``n_layers`` :class:`MaskedTransformerBlock` s and a final LayerNorm; padding rows are zeroed.

    Args (keyword-only): as :class:`MaskedTransformerBlock`, plus ``n_layers`` (0 = only the final norm).
    ``forward(x [B, T, d], mask [B, T]) -> [B, T, d]``.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        n_layers: int,
        ffn_mult: int = 2,
        dropout: float = 0.0,
        attention: AttentionKind = "full",
        n_latents: int = 32,
        query_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_heads(d_model, n_heads, where="MaskedTransformer")
        if not isinstance(n_layers, int) or n_layers < 0:
            raise ValueError(f"n_layers must be a non-negative integer, got {n_layers!r}")
        self.layers = nn.ModuleList(
            MaskedTransformerBlock(
                d_model=d_model, n_heads=n_heads, ffn_mult=ffn_mult, dropout=dropout, attention=attention,
                n_latents=n_latents, query_chunk_size=query_chunk_size,
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        # zero padding rows so that nothing downstream can pick up their (finite, meaningless) content
        return self.norm(x).masked_fill(~mask.unsqueeze(-1), 0.0)
