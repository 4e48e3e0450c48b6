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
optional full instance-to-instance attention (PersAM's ``full_patch_attention_below``) is quadratic and is
used only for samples whose bag has fewer real instances than that (decided per sample, so a sample's
output never depends on the other samples of its batch).

Patch-side work and memory: the scores are bilinear, so the queries and keys of large groups are never
materialised (``q_l . k_j = h_l . (W_q^T k_j) + b_q . k_j`` is computed with ``W_q^T k_j`` on the small side,
and likewise for the keys and values that small queries read); per layer a large group costs its
LayerNorm, one value projection, the output projection and a narrow feed-forward (``ffn_mult``,
default 1 x d, instead of 4 x d). No dropout is applied to large groups. In training with a big batch
(``checkpoint_above``) the large groups are updated in chunks of ``chunk_size`` tokens that are recomputed
in the backward pass, so the stored activations per layer are a few ``[N, d]`` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ....encoders.layers import FeedForward, attention_weights, checkpointed, masked_normalise


@dataclass(frozen=True)
class GroupLayout:
    """Indices of the token groups. Query groups are ``0 .. n_query - 1``; key groups add ``self``.

    ``private_instances``: the small groups (clinical, class, latents) do not read the instance group, so
    instance content reaches the rest of the model only through the aggregator's attention pooling (the
    exported attention is then the only path of the instance evidence, see ``persam.PersAM``). Instances
    still read the small groups (they are personalised by the clinical tokens).
    """

    n_context: int

    instances: int = 0
    clinical: int = 1
    private_instances: bool = False

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
            if self.private_instances:
                allowed[g, self.instances] = False
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
        ffn_mult: hidden width of the feed-forward of instance/context tokens, as a multiple of d
            (0 = no feed-forward on them). Small groups use 4 x d.
    """

    def __init__(self, *, d_model: int, n_heads: int, layout: GroupLayout, dropout: float,
                 ffn_mult: int) -> None:
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
        # (the pre-norm ``norm2`` is shared by every group; the output dropout is applied in ``_finish``)
        self.ffn_small = FeedForward(d_model=d_model, ffn_mult=4, dropout=dropout)
        self.ffn_large = FeedForward(d_model=d_model, ffn_mult=ffn_mult) if ffn_mult > 0 else None
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        xs: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        full_ok: torch.Tensor | None,
        chunk: int | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Update every group's tokens.

        Args:
            xs: per query group, float ``[B, L_g, d]`` (``L_g`` may be 0 for an unused group).
            masks: per query group, bool ``[B, L_g]``, True = real token.
            full_ok: bool ``[B]``: samples whose instances also attend to each other (or None: none do).
            chunk: if given, large groups are updated in chunks of this many tokens, each recomputed in the
                backward pass (:func:`~clinfuse.encoders.layers.checkpointed`): same result, memory of one
                chunk.

        Returns:
            The updated ``xs``, the class queries' group weights ``[B, H, C, n_key]`` and the norm of what
            each clinical token adds to each class token ``[B, C, K]`` (None without clinical tokens; see
            ``_contribution_norms``), both for export.
        """
        lay, H, d = self.layout, self.n_heads, self.d_model
        avail = torch.stack([m.any(dim=1) for m in masks], dim=1)  # [B, n_query]
        avail = torch.cat([avail, torch.ones_like(avail[:, :1])], dim=1)  # self is always there
        w_q, w_k, w_v = self.qkv.weight.view(3, H, d // H, d).unbind(0)  # each [H, dh, d]
        b_q, b_k, b_v = self.qkv.bias.view(3, H, d // H).unbind(0)  # each [H, dh]
        present = [g for g, x in enumerate(xs) if x.shape[1] > 0]
        h = {g: self.norm1(xs[g]) for g in present}
        q, k, v = {}, {}, {}
        for g in present:
            if g not in lay.large:
                q[g], k[g], v[g] = rearrange(self.qkv(h[g]), "b l (three h e) -> three b h l e", three=3, h=H)
        new_xs = list(xs)

        # Small queries (clinical, class, latents) read every group. Large groups never materialise their
        # keys or values ([N, d] each): both are folded into the small side (the scores are bilinear), and
        # all small queries read a large group in ONE pair of einsums (each use of h costs an [N, d] grad).
        small = [g for g in present if g not in lay.large]
        ws = {g: self._group_weights(g, h[g], avail, None) for g in small}
        class_weights = ws.get(lay.cls)
        atts = {g: ws[g][..., lay.self_group, None] * v[g] for g in small}
        sizes = [q[g].shape[2] for g in small]
        q_all = torch.cat([q[g] for g in small], dim=2)  # [B, H, Q, dh]
        for kg in present:
            if kg not in lay.large:
                continue
            w_all = torch.cat([ws[g][..., kg] * self.allowed[g, kg] for g in small], dim=2)  # [B, H, Q]
            s = torch.einsum("bhqd,bld->bhql", torch.einsum("bhqe,hed->bhqd", q_all, w_k), h[kg])
            s = s + torch.einsum("bhqe,he->bhq", q_all, b_k)[..., None]
            p = masked_normalise(s * self.scale, masks[kg][:, None, None, :]) * w_all[..., None]
            read = torch.einsum("bhql,bld->bhqd", p, h[kg])  # sum_l p v_l = (sum_l p h_l) W_v^T + (sum p) b_v
            read = torch.einsum("bhqd,hed->bhqe", read, w_v) + p.sum(-1, keepdim=True) * b_v[:, None]
            for g, part in zip(small, read.split(sizes, dim=2)):
                atts[g] = atts[g] + part
        class_clinical = None
        for g in small:
            probs, values = [], []
            for kg in small:
                if bool(self.allowed[g, kg]):
                    prob = attention_weights(q[g], k[kg], masks[kg]) * ws[g][..., kg, None]
                    if g == lay.cls and kg == lay.clinical:
                        class_clinical = self._contribution_norms(prob, v[kg])
                    probs.append(prob)
                    values.append(v[kg])
            att = atts[g] + torch.cat(probs, dim=-1) @ torch.cat(values, dim=-2)
            new_xs[g] = self._finish(xs[g], att, large=False)

        # Large queries (instances, context) read only the small groups and themselves: independent per
        # token, so they can be updated chunk by chunk.
        folded = {kg: (torch.einsum("bhke,hed->bhkd", k[kg], w_q), torch.einsum("bhke,he->bhk", k[kg], b_q))
                  for kg in small}
        for g in present:
            if g not in lay.large:
                continue
            full = None
            if g == lay.instances and full_ok is not None and bool(full_ok.any()):
                full = self._full_instances(h[g], masks[g], full_ok)

            def update(x, full_part, g=g):
                return self._large_update(g, x, full_part, folded, v, masks, avail, full_ok)

            if chunk is not None and xs[g].shape[1] > chunk:
                parts = [checkpointed(update, x, None if full is None else fp)
                         for x, fp in zip(xs[g].split(chunk, dim=1),
                                          full.split(chunk, dim=2) if full is not None else
                                          [None] * -(-xs[g].shape[1] // chunk))]
                new_xs[g] = torch.cat(parts, dim=1)
            else:
                new_xs[g] = update(xs[g], full)
        assert class_weights is not None, "the class group is never empty"
        return new_xs, class_weights, class_clinical

    def _contribution_norms(self, prob: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``[B, C, K]``: the norm of what key token k adds to query c,
        ``|| sum_h p_h[c, k] W_o^h v_h[k] ||``.

        ``prob`` ``[B, H, C, K]`` (group weight included), ``values`` ``[B, H, K, dh]``. Attention weights
        alone ignore how large the value each token brings is; weighting by the norm of the transformed value
        is the norm-based analysis of Kobayashi et al. (EMNLP 2020, "Attention is not only a weight").
        """
        w_out = rearrange(self.out.weight, "d (h e) -> h e d", h=self.n_heads)
        per_token = torch.einsum("bhke,hed->bhkd", values, w_out)  # [B, H, K, d]
        return torch.einsum("bhck,bhkd->bckd", prob, per_token).norm(dim=-1)

    def _group_weights(self, g: int, hx: torch.Tensor, avail: torch.Tensor,
                       full_ok: torch.Tensor | None) -> torch.Tensor:
        """``[B, H, L, n_key]`` mixing weights of query group g; exactly 0 for unusable groups."""
        lay = self.layout
        logits = rearrange(self.gate(hx), "b l (h k) -> b h l k", h=self.n_heads)
        logits = logits + self.group_bias[g][None, :, None, :]
        usable = avail[:, None, None, :] & self.allowed[g][None, None, None, :]
        if g == lay.instances and full_ok is not None:
            usable = usable.clone()
            usable[:, 0, 0, lay.instances] = full_ok & avail[:, lay.instances]
        return masked_normalise(logits, usable)

    def _large_update(self, g, x, full, folded, v, masks, avail, full_ok) -> torch.Tensor:
        """New tokens ``[B, L, d]`` of large group g (any slice of its tokens) from the small groups."""
        lay, d = self.layout, self.d_model
        hx = self.norm1(x)
        w = self._group_weights(g, hx, avail, full_ok)
        v_self = rearrange(F.linear(hx, self.qkv.weight[2 * d:], self.qkv.bias[2 * d:]),
                           "b l (h e) -> b h l e", h=self.n_heads)
        att = w[..., lay.self_group, None] * v_self
        probs, values = [], []
        for kg, (wq_k, bq_k) in folded.items():  # q_l . k_j = h_l . (W_q^T k_j) + b_q . k_j
            if not bool(self.allowed[g, kg]):
                continue
            s = torch.einsum("bld,bhkd->bhlk", hx, wq_k) + bq_k[:, :, None, :]
            probs.append(masked_normalise(s * self.scale, masks[kg][:, None, None, :]) * w[..., kg, None])
            values.append(v[kg])
        att = att + torch.cat(probs, dim=-1) @ torch.cat(values, dim=-2)
        if full is not None:
            att = att + w[..., lay.instances, None] * full
        return self._finish(x, att, large=True)

    def _finish(self, x: torch.Tensor, att: torch.Tensor, *, large: bool) -> torch.Tensor:
        """Output projection, residual and feed-forward (none / narrow for large groups)."""
        # No dropout on instance/context tokens: a Bernoulli mask over 100k x d costs more than the layer.
        drop = nn.Identity() if large else self.drop
        x = x + drop(self.out(rearrange(att, "b h l e -> b l (h e)")))
        ffn = self.ffn_large if large else self.ffn_small
        return x + drop(ffn(self.norm2(x))) if ffn is not None else x

    def _full_instances(self, h, mask, full_ok) -> torch.Tensor:
        """Unweighted instance-to-instance attention ``[B, H, N, dh]`` for the samples in ``full_ok`` (zeros
        for the others). Quadratic, so only for small bags."""
        d, H = self.d_model, self.n_heads
        idx = full_ok.nonzero().squeeze(1)
        sub_mask = mask[idx]
        last = int(sub_mask.any(0).nonzero().max()) + 1  # keys/queries beyond the last real one are padding
        q, k, v = rearrange(self.qkv(h[idx, :last]), "b l (three h e) -> three b h l e", three=3, h=H)
        o = F.pad(attention_weights(q, k, sub_mask[:, :last]) @ v, (0, 0, 0, h.shape[1] - last))
        return h.new_zeros(h.shape[0], H, h.shape[1], d // H).index_add(0, idx, o)


class GroupBalancedEncoder(nn.Module):
    """``n_layers`` :class:`GroupBalancedLayer` and a final LayerNorm.

    Args:
        checkpoint_above: during training, when the batch holds more than this many instance and context
            tokens, they are updated in chunks of ``chunk_size`` that are recomputed in the backward pass
            (:func:`~clinfuse.encoders.layers.checkpointed`), so the memory of a 100,000-patch bag is a few
            ``[N, d]`` tensors per layer instead of all activations. Same result; None = never.
    """

    def __init__(self, *, d_model: int, n_heads: int, n_layers: int, layout: GroupLayout, dropout: float,
                 ffn_mult: int, checkpoint_above: int | None, chunk_size: int = 8192) -> None:
        super().__init__()
        self.chunk_size, self.layout = chunk_size, layout
        self.layers = nn.ModuleList(
            GroupBalancedLayer(d_model=d_model, n_heads=n_heads, layout=layout, dropout=dropout,
                               ffn_mult=ffn_mult)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.checkpoint_above = checkpoint_above

    def forward(self, xs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                full_ok: torch.Tensor | None
                ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """Returns the normalised group outputs, the last layer's class-query group weights
        ``[B, H, C, n_key]`` and the norms of the clinical tokens' contributions to the class tokens
        ``[B, C, K]`` (None when ``n_layers == 0`` or without clinical tokens)."""
        n_large = sum(xs[g].shape[0] * xs[g].shape[1] for g in self.layout.large)
        use_ckpt = (self.training and torch.is_grad_enabled() and self.checkpoint_above is not None
                    and n_large > self.checkpoint_above)
        xs, class_weights, class_clinical = list(xs), None, None
        for layer in self.layers:
            chunk = self.chunk_size if use_ckpt else None
            xs, class_weights, class_clinical = layer(xs, masks, full_ok, chunk)
        return [self.norm(x) for x in xs], class_weights, class_clinical
