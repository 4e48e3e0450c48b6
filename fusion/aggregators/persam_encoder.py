"""PersAM's group-balanced encoder: attention taken within each token group, then mixed by learned weights.

Token groups (fixed order, see :class:`GroupLayout`)::

    instances | clinical | context_1 .. context_m | class | latents | (self)

``instances`` are the bag (patches, or gene / event tokens), ``clinical`` the clinical encoder's tokens,
``context_j`` every other modality, ``class`` the C learned class (or time-bin) tokens and ``latents`` a few
learned tokens. ``self`` is a key group of one token: the query's own value.

For a query token q of group g and every key group h it may read, the layer computes an ordinary masked,
max-subtracted softmax over the real keys of h only, ``p_h(q, .)``, and then mixes the groups with
``w_h(q) = softmax_h(gate(q) + bias[g, h])`` taken over the groups that hold at least one real token for that
sample (an absent modality gets exactly 0). The attention of q is ``sum_h w_h(q) sum_{k in h} p_h(q, k) v_k``,
so 10,000 patches share one group weight with 20 clinical tokens instead of drowning them.

Cost is linear in the bag size N: instance (and context) queries read only the small groups (clinical,
class, latents) and themselves; the small groups' queries read every group, which is O(N) per query. The
optional full instance-to-instance attention (``full_below``) is quadratic and is used only for samples
whose bag has fewer than ``full_below`` real instances (decided per sample, so a sample's output never
depends on the other samples of its batch). Instance and context tokens get a narrow feed-forward
(``large_ffn_mult``, default 1 x d) instead of the usual 4 x d.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..records import masked_normalise


@dataclass(frozen=True)
class GroupLayout:
    """Indices of the token groups. Query groups are ``0 .. n_query - 1``; key groups add ``self``."""

    n_context: int

    instances: int = 0
    clinical: int = 1

    @property
    def context(self) -> list[int]:
        return [2 + j for j in range(self.n_context)]

    @property
    def cls(self) -> int:
        return 2 + self.n_context

    @property
    def latents(self) -> int:
        return 3 + self.n_context

    @property
    def self_group(self) -> int:
        return 4 + self.n_context

    @property
    def n_query(self) -> int:
        return 4 + self.n_context

    @property
    def n_key(self) -> int:
        return 5 + self.n_context

    @property
    def large(self) -> list[int]:
        """Groups whose size is data-dependent and possibly huge (instances, context modalities)."""
        return [self.instances, *self.context]

    @property
    def small(self) -> list[int]:
        return [self.clinical, self.cls, self.latents]

    def allowed(self) -> torch.Tensor:
        """bool ``[n_query, n_key]``: which key groups each query group may read (before availability)."""
        allowed = torch.zeros(self.n_query, self.n_key, dtype=torch.bool)
        for g in self.small:
            allowed[g, : self.n_query] = True  # small queries read every group (O(N) per query)
        for g in self.large:
            allowed[g, self.small] = True
            allowed[g, self.self_group] = True  # plus themselves; never the other large tokens
        return allowed


class GroupBalancedLayer(nn.Module):
    """One pre-norm transformer layer with group-wise softmax and learned group mixing.

    Args:
        d_model: token width d.
        n_heads: attention heads (d divisible by it).
        layout: the group layout.
        dropout: dropout on the attention and feed-forward outputs of the small groups (clinical, class,
            latents); none on instance/context tokens, where it would cost more than the layer itself.
        large_ffn_mult: hidden width of the feed-forward of instance/context tokens, as a multiple of d
            (0 = no feed-forward on them). Small groups use 4 x d.
    """

    def __init__(self, *, d_model: int, n_heads: int, layout: GroupLayout, dropout: float,
                 large_ffn_mult: int) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.layout = d_model, n_heads, layout
        self.scale = (d_model // n_heads) ** -0.5
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        # Query-dependent group logits; zero-initialised so training starts from equal group shares.
        self.gate = nn.Linear(d_model, n_heads * layout.n_key)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.group_bias = nn.Parameter(torch.zeros(layout.n_query, n_heads, layout.n_key))
        self.register_buffer("allowed", layout.allowed(), persistent=False)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn_small = _ffn(d_model, 4, dropout)
        self.ffn_large = _ffn(d_model, large_ffn_mult, 0.0) if large_ffn_mult > 0 else None
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        xs: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        full_ok: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Update every group's tokens.

        Args:
            xs: per query group, float ``[B, L_g, d]`` (``L_g`` may be 0 for an unused group).
            masks: per query group, bool ``[B, L_g]``, True = real token.
            full_ok: bool ``[B]``: samples whose instances also attend to each other (or None: none do).

        Returns:
            The updated ``xs`` and the class queries' group weights ``[B, H, C, n_key]`` (for export).
        """
        lay, H = self.layout, self.n_heads
        avail = torch.stack([m.any(dim=1) for m in masks], dim=1)  # [B, n_query]
        avail = torch.cat([avail, torch.ones_like(avail[:, :1])], dim=1)  # self is always there
        d = self.d_model
        w_q, w_k, w_v = self.qkv.weight.view(3, H, d // H, d).unbind(0)  # each [H, dh, d]
        b_q, b_k, b_v = self.qkv.bias.view(3, H, d // H).unbind(0)  # each [H, dh]
        h: dict[int, torch.Tensor] = {}
        q: dict[int, torch.Tensor] = {}
        k: dict[int, torch.Tensor] = {}
        v: dict[int, torch.Tensor] = {}
        for g, x in enumerate(xs):
            if x.shape[1] == 0:
                continue
            h[g] = self.norm1(x)
            if g in lay.large:
                # Large groups never materialise their queries or keys ([N, d] each): both are folded into
                # the small side below (scores are bilinear), only the values are projected.
                v[g] = rearrange(F.linear(h[g], self.qkv.weight[2 * d:], self.qkv.bias[2 * d:]),
                                 "b l (h e) -> b h l e", h=H)
            else:
                q[g], k[g], v[g] = rearrange(self.qkv(h[g]), "b l (three h e) -> three b h l e", three=3, h=H)

        new_xs, class_weights = [], None
        for g, x in enumerate(xs):
            if x.shape[1] == 0:
                new_xs.append(x)
                continue
            large = g in lay.large
            logits = rearrange(self.gate(h[g]), "b l (h k) -> b h l k", h=H)
            logits = logits + self.group_bias[g][None, :, None, :]
            usable = avail[:, None, None, :] & self.allowed[g][None, None, None, :]
            if g == lay.instances and full_ok is not None:
                usable = usable.clone()
                usable[:, 0, 0, lay.instances] = full_ok & avail[:, lay.instances]
            w = masked_normalise(logits, usable)  # [B, H, L, n_key], 0 for unusable groups
            if g == lay.cls:
                class_weights = w
            # Group-wise softmax; each group's probabilities are scaled by its weight. Small key groups are
            # concatenated into one matmul; a large key group (only read by small queries) gets its own.
            probs, values = [], []
            att = w[..., lay.self_group, None] * v[g]
            for kg in range(lay.n_query):
                if not bool(self.allowed[g, kg]) or kg not in h:
                    continue
                if large:  # small keys; q_l . k_j = h_l . (W_q^T k_j) + b_q . k_j
                    folded = torch.einsum("bhke,hed->bhkd", k[kg], w_q)
                    s = torch.einsum("bld,bhkd->bhlk", h[g], folded)
                    s = s + torch.einsum("bhke,he->bhk", k[kg], b_q)[:, :, None, :]
                elif kg in lay.large:  # small queries over a large group: q_i . k_l = (W_k^T q_i) . h_l + ...
                    folded = torch.einsum("bhqe,hed->bhqd", q[g], w_k)
                    s = torch.einsum("bhqd,bld->bhql", folded, h[kg])
                    s = s + torch.einsum("bhqe,he->bhq", q[g], b_k)[..., None]
                else:
                    s = torch.einsum("bhqe,bhke->bhqk", q[g], k[kg])
                p = masked_normalise(s * self.scale, masks[kg][:, None, None, :]) * w[..., kg, None]
                if kg in lay.large:
                    att = att + p @ v[kg]
                else:
                    probs.append(p), values.append(v[kg])
            if probs:
                att = att + torch.cat(probs, dim=-1) @ torch.cat(values, dim=-2)
            if g == lay.instances and full_ok is not None and bool(full_ok.any()):
                att = att + self._full_instances(h[g], v[g], masks[g], full_ok, w[..., lay.instances])
            # No dropout on instance/context tokens: a Bernoulli mask over 100k x d costs more than the layer.
            drop = nn.Identity() if large else self.drop
            x = x + drop(self.out(rearrange(att, "b h l e -> b l (h e)")))
            ffn = self.ffn_large if large else self.ffn_small
            if ffn is not None:
                x = x + ffn(self.norm2(x))
            new_xs.append(x)
        assert class_weights is not None, "the class group is never empty"
        return new_xs, class_weights

    def _full_instances(self, h, v, mask, full_ok, w) -> torch.Tensor:
        """Instance-to-instance attention for the samples in ``full_ok`` only (quadratic: small bags)."""
        d = self.d_model
        idx = full_ok.nonzero().squeeze(1)
        sub_mask = mask[idx]
        last = int(sub_mask.any(0).nonzero().max()) + 1  # keys/queries beyond the last real one are padding
        hs, vs = h[idx, :last], v[idx, :, :last]
        q = rearrange(F.linear(hs, self.qkv.weight[:d], self.qkv.bias[:d]), "b l (h e) -> b h l e", h=self.n_heads)
        k = rearrange(F.linear(hs, self.qkv.weight[d:2 * d], self.qkv.bias[d:2 * d]), "b l (h e) -> b h l e",
                      h=self.n_heads)
        s = torch.einsum("bhqe,bhke->bhqk", q, k) * self.scale
        p = masked_normalise(s, sub_mask[:, None, None, :last]) * w[idx, :, :last, None]
        o = F.pad(p @ vs, (0, 0, 0, v.shape[2] - last))
        return torch.zeros_like(v).index_add(0, idx, o)


def _ffn(d_model: int, mult: int, dropout: float) -> nn.Sequential:
    # The pre-norm is applied by the caller (``norm2``), shared by every group.
    return nn.Sequential(
        nn.Linear(d_model, mult * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(mult * d_model, d_model),
        nn.Dropout(dropout),
    )


class GroupBalancedEncoder(nn.Module):
    """``n_layers`` :class:`GroupBalancedLayer` and a final LayerNorm.

    Args:
        checkpoint_above: during training, each layer is recomputed in the backward pass
            (``torch.utils.checkpoint``) when the batch holds more than this many instance tokens, so the
            memory of a 100,000-patch bag is a few ``[N, d]`` tensors per layer instead of all activations.
            The result is identical; only memory and time change. None = never.
    """

    def __init__(self, *, d_model: int, n_heads: int, n_layers: int, layout: GroupLayout, dropout: float,
                 large_ffn_mult: int, checkpoint_above: int | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GroupBalancedLayer(d_model=d_model, n_heads=n_heads, layout=layout, dropout=dropout,
                               large_ffn_mult=large_ffn_mult)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.checkpoint_above = checkpoint_above

    def forward(self, xs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                full_ok: torch.Tensor | None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Returns the normalised group outputs and the last layer's class-query group weights
        ``[B, H, C, n_key]`` (None when ``n_layers == 0``)."""
        n_inst = xs[0].shape[0] * xs[0].shape[1]
        use_ckpt = (self.training and torch.is_grad_enabled() and self.checkpoint_above is not None
                    and n_inst > self.checkpoint_above)
        xs, class_weights = list(xs), None
        for layer in self.layers:
            if use_ckpt:
                xs, class_weights = torch.utils.checkpoint.checkpoint(layer, xs, masks, full_ok,
                                                                      use_reentrant=False)
            else:
                xs, class_weights = layer(xs, masks, full_ok)
        return [self.norm(x) for x in xs], class_weights
