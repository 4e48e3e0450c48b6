"""``persam``: the personalised MIL aggregator (after Takagi et al., arXiv 2206.03003; DESIGN.md "PersAM").

Tokens (B samples, d = ``d_model``)
-----------------------------------
- instances ``h_l``, l = 1..N: the tokens of ``instance_modality`` (patches by default; genes / gene sets or
  events when a cohort has no images), ``[B, N, d]``, any N, masked;
- clinical ``u_k``, k = 1..K: the clinical encoder's tokens ``[B, K, d]`` (absent: K = 0 or mask all False);
- context: the tokens of every other modality (neither instance nor clinical), read as extra groups;
- class ``t_c``, c = 1..C: learned (``n_outputs`` of them: classes, discrete time bins, or 1 risk token
  for a Cox head); plus ``n_latents`` learned latent tokens.

Encoder: :class:`~.persam_encoder.GroupBalancedEncoder` (attention within each token group, mixed by learned
per-query group weights; see that module) over the clinical, context, class and latent tokens. By default the
instances do not enter it (``encode_instances=False``): the scores below read the instance and clinical tokens
as the modality encoders made them (plus a group embedding), and only the class tokens take the encoder's
output, through a gate ``g`` (a learned scalar, 0 at the start: ReZero)::

    t_c = t_c^in + g * (encoder(t)_c - t_c^in)

Why: on the planted-rule cohort (``benchmarks/bench_faithfulness.py``, which runs both variants) the encoded
variant let the class tokens carry the clinical record to the head, a route the model fits first; its
attention then learned the rule on some seeds only, with a lower held-out AUC. Scoring the encoders' own
tokens and opening the class route gradually learned the rule far more reliably, and the instance side costs
no encoder work at all (linear in N with a small constant). ``encode_instances=True`` restores the encoded
variant (instances read the clinical, class and latent tokens in the encoder and ``h_l, u_k`` below are the
encoder's outputs; needed for ``full_patch_attention_below``). Below, ``h_l, u_k, t_c`` are the tokens the
scores use.

Scores and attention (``e = d_attn``; every ``W`` is a learned ``Linear(d, e, bias=False)``)
------------------------------------------------------------------------------------------------
::

    s_a[c, l]   = <W_qa t_c, W_ka h_l> / sqrt(e)                           class-wise score   [B, C, N]
    s_psi[l]    = log mean_k exp(<W_qp u_k, W_kp h_l> / sqrt(e))           exploratory score  [B, N]
    s_phi[c]    = log mean_k exp(<W_qf t_c, W_kf u_k> / sqrt(e))           class-record score [B, C]
    (means over the sample's real clinical tokens; s_psi = s_phi = 0 when the sample has none)

    raw class_wise   a[c, l]   = exp(s_a[c, l] - max_l' s_a[c, l'])    in (0, 1]  (0 on padding)
    raw exploratory  psi[l]    = exp(s_psi[l] - max_l' s_psi[l'])      in (0, 1]
    raw phi          phi[c]    = exp(s_phi[c] - max_c' s_phi[c'])      in (0, 1]
    raw explanatory  a'[c, l]  = a[c, l] * phi[c] * psi[l]

Exported ``value`` = each raw score normalised over the sample's real instances (sum 1, exactly 0 on
padding); ``phi`` is normalised over the C classes instead. The normalised explanatory attention is
computed in log space, ``softmax_l(s_a[c, l] + s_psi[l])``, which equals ``normalise_l(a * phi * psi)``
(phi[c] is constant over l and cancels) but never underflows; ``raw`` keeps the product itself so the
identity can be checked (it can underflow to 0 for extreme scores, the normalised value cannot).
Without clinical data psi = phi = 1 and explanatory == class-wise: class-wise attention MIL.

Pooling (``pooled`` ``[B, C, d]``, class c scored from its own vector by the head)::

    pooled[c] = phi[c] * sum_l explanatory[c, l] * h_l + t_c

phi[c] (raw, max 1) gates the instance evidence for class c by its relevance to the clinical record (so phi
is trained, not only exported); the class token's own encoder state ``t_c`` carries the clinical and context
modalities and, with the modality logit terms below, is the only evidence for a sample without instances. Survival: the class tokens are the
discrete time bins and the head's risk is ``-sum_k S(t_k)`` (higher = worse, as MCAT does); Cox: C = 1.

Modality logits (``modality_logits=True``, the default)
-------------------------------------------------------
A linear term per non-instance modality m (clinical, context) is added to the head's C outputs
(``AggregatorOutput.offsets``)::

    output[c] = head(pooled[c]) + sum_k <r_c, u_k> + sum_m mean_j <r^m_c, z^m_j>

(u_k: the clinical tokens as the network gives them, i.e. the encoder's tokens plus the token-type embedding,
not the group-embedded ones the scores use; summed over the variables. z^m_j: modality m's tokens, averaged
because their number varies. Padding and absent modalities count 0; a missing value inside a record is its
learned missing-value token.) With the ``feature_tokens`` clinical encoder each token is affine in its
variable's standardised value, so the clinical term is a per-class linear model of the record: a "wide" part
next to the attention (the ``mlp`` clinical encoder gives one nonlinear token instead). Every ``r`` starts at 0 and is fitted with the rest. Why: a clinical variable, gene or event
that moves the outcome on its own (``biomarker_level`` on the synthetic cohort) otherwise has to reach the
head through the class route, which stays nearly closed, or through phi; the model then did not use it
(|SHAP| ~ 1e-3 on 3 of 5 seeds, ``benchmarks/bench_faithfulness.py``), and with the term it did on 5 of 5
without losing the planted-patch attention. The rule variable still acts through psi and phi: the terms
cannot read the instances, so they cannot stand in for the rule.

The exported per-token shares are ``<r_c, u_k - ref_k>``: measured against a reference token, the running mean
of the training tokens (per clinical variable and per gene / gene set; one for events; buffers ``reference_<m>``,
updated in training only, never used by the outputs). A variable at its training average then weighs ~0
instead of the constant ``<r_c, b_k>`` its token carries. Before any training the reference is empty and
the shares are those of the term itself.

Exported records (``AttentionRecord``; T = that modality's tokens)
-----------------------------------------------------------------
=============== ============ ============ ==========================================================
kind            modality     value        meaning
=============== ============ ============ ==========================================================
class_wise      instance     [B, C, N]    a, normalised over instances
exploratory     instance     [B, 1, N]    psi, normalised over instances
explanatory     instance     [B, C, N]    a', normalised over instances
phi             clinical     [B, C, 1]    phi, normalised over classes (uniform without clinical data)
patch/gene/event instance    [B, 1, N]    class average of explanatory (raw == value: already sums to 1)
feature         clinical     [B, C, K]    with modality logits (default): |<r_c, u_k - ref_k>|, token k's share
                                          of output c's clinical term against the reference (normalised; raw
                                          = |share|, in logits; uniform while all are 0). Without them: how
                                          much token k moves class token c in the last encoder layer,
                                          || sum_h p_h[c, k] W_o^h v_h[k] || (attention weighted by the norm
                                          of what the token brings, Kobayashi et al. 2020; raw = that norm
                                          times |g|, so a closed class route shows as raw ~ 0); without
                                          encoder layers, softmax_k of the s_phi scores. Either way the
                                          record's effect through psi and phi is in those kinds, not here
gene/event      context      [B, C, T]    modality logits only, for a context modality: |its logit term's
                                          share per token against the reference| (the mean's 1/T
                                          included), normalised; raw = |share| in logits
modality        all          [B, 1, M]    in a FusionNetwork (evaluation, head without a hidden layer): each
                                          modality's |share of output c| in logits, class mean, normalised
                                          over present modalities: the instance modality |head share of the
                                          evidence phi * sum a' h|; the class route's |head share of
                                          t_c - t_c^in| split by the class tokens' last-layer group weights;
                                          each other modality plus |its logit term - the reference's|
                                          (``head.part_scores``, exact because LayerNorm is linear once its
                                          scale is fixed).
                                          Standalone (no head): the weights in pooled[c] instead, instance
                                          phi / (phi + |g|), the rest by group weights (the logit terms are
                                          not in this fallback)
=============== ============ ============ ==========================================================
``feature`` exists only when ``clinical`` is a modality; gene/event of a context modality only with modality
logits; ``modality`` only when ``n_layers >= 1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from ...datasets.batch import MODALITIES, TOKEN_KIND
from ...encoders.tokens import Tokens
from ..base import AGGREGATORS, Aggregator, AggregatorOutput, check_common_args
from ..records import AttentionRecord, masked_normalise, normalise_nonnegative
from .persam_encoder import GroupBalancedEncoder, GroupLayout
from .pooling import record_meta

INSTANCE_MODALITIES: tuple[str, ...] = ("images", "genomics", "events")
# The encoded variant: the bag passes through the encoder and the class route has no gate (the default of
# clinfuse 0.1.0; saved models of that format are rebuilt with it, and the benchmarks compare against it).
ENCODED_VARIANT_KWARGS: dict[str, bool] = {"encode_instances": True, "gate_class_route": False,
                                           "modality_logits": False}
# The default of saved-model format 2: the gated variant without the modality logit terms.
GATED_VARIANT_KWARGS: dict[str, bool] = {"modality_logits": False}


@AGGREGATORS.register("persam")
class PersAM(Aggregator):
    """Personalised MIL: class-wise, exploratory (clinical-guided) and explanatory attention over instances.

    Args:
        d_model: token width d (every modality's tokens are ``[B, T, d]``).
        modalities: the schema's modalities; each one must be a key of the ``tokens`` given to forward.
        n_outputs: C, the number of class tokens (classes, time bins, or 1 for a Cox risk).
        class_names: C names (default ``"0" .. "C-1"``, ``"risk"`` when C = 1).
        instance_modality: the modality whose tokens are the instances; default ``"images"`` if present,
            else the first of ``"genomics"``, ``"events"``.
        n_layers: group-balanced encoder layers (0 = no encoder: the class tokens are learned constants and
            the clinical record acts only through the exploratory and phi attention and the logit terms).
        n_heads: encoder attention heads (d divisible by it).
        n_latents: learned latent tokens (a small summary group every token can read).
        d_attn: width e of the aggregation scores (default d).
        full_patch_attention_below: if > 0, instances also attend to each other for samples with fewer
            real instances than this (quadratic; off by default; needs ``encode_instances=True``).
        instance_ffn_mult: hidden width of the instance/context feed-forward, multiple of d (0 = none).
        dropout: dropout in the encoder.
        checkpoint_above: when a training batch holds more encoded instance/context tokens than this, they
            are updated in chunks recomputed in the backward pass (same result, a few ``[N, d]``
            tensors of memory per layer on huge bags; None = never).
        private_instances: the clinical, class and latent tokens do not read the instances in the encoder,
            so the instance evidence reaches the head only through the explanatory pooling and the exported
            attention is its only path (default). With False, class tokens also read the bag through the
            encoder's own attention, a second, unexported route the model can learn to rely on instead
            (needs ``encode_instances=True``).
        encode_instances: pass the instances through the encoder and score the encoder's outputs (see the
            module docstring; off by default: the encoders' tokens are scored directly).
        gate_class_route: the class tokens take the encoder's output through a learned gate that starts at
            0 (default), instead of directly.
        modality_logits: add a linear term per non-instance modality (clinical, context) to the C outputs
            (default; module docstring "Modality logits"), so that they reach the prediction directly.
    """

    attention_kinds = frozenset(
        {"class_wise", "exploratory", "explanatory", "phi", "patch", "gene", "event", "feature", "modality"}
    )  # the union over configurations; each instance narrows it to what it actually exports

    def __init__(
        self,
        *,
        d_model: int,
        modalities: Sequence[str],
        n_outputs: int,
        class_names: Sequence[str] | None = None,
        instance_modality: str | None = None,
        n_layers: int = 2,
        n_heads: int = 4,
        n_latents: int = 4,
        d_attn: int | None = None,
        full_patch_attention_below: int = 0,
        instance_ffn_mult: int = 1,
        dropout: float = 0.1,
        checkpoint_above: int | None = 8192,
        private_instances: bool = True,
        encode_instances: bool = False,
        gate_class_route: bool = True,
        modality_logits: bool = True,
    ) -> None:
        super().__init__()
        check_common_args(d_model=d_model, modalities=modalities, n_outputs=n_outputs, n_heads=n_heads)
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"persam: unknown modalities {unknown}; expected a subset of {MODALITIES}")
        self.modalities = [m for m in MODALITIES if m in modalities]
        self.instance_modality = _choose_instance(instance_modality, self.modalities)
        self.has_clinical = "clinical" in self.modalities
        self.context_modalities = [m for m in self.modalities if m not in (self.instance_modality, "clinical")]
        self.class_names = _class_names(class_names, n_outputs)
        for name, value, low in (("n_layers", n_layers, 0), ("n_latents", n_latents, 0),
                                 ("full_patch_attention_below", full_patch_attention_below, 0),
                                 ("instance_ffn_mult", instance_ffn_mult, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"persam: {name} must be an int >= {low}, got {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"persam: dropout must be in [0, 1), got {dropout!r}")
        if d_attn is not None and (not isinstance(d_attn, int) or d_attn <= 0):
            raise ValueError(f"persam: d_attn must be a positive int or None, got {d_attn!r}")

        self.d_model, self.n_outputs, self.n_heads = d_model, n_outputs, n_heads
        self.full_below = full_patch_attention_below
        for name, value in (("private_instances", private_instances), ("encode_instances", encode_instances),
                            ("gate_class_route", gate_class_route), ("modality_logits", modality_logits)):
            if not isinstance(value, bool):
                raise TypeError(f"persam: {name} must be a bool, got {value!r}")
        if not encode_instances and (not private_instances or full_patch_attention_below > 0):
            raise ValueError("persam: private_instances=False and full_patch_attention_below > 0 act on the "
                             "instances inside the encoder; pass encode_instances=True with them")
        self.private_instances, self.encode_instances = private_instances, encode_instances
        self.layout = GroupLayout(n_context=len(self.context_modalities), private_instances=private_instances)
        self.encoder = GroupBalancedEncoder(
            d_model=d_model, n_heads=n_heads, n_layers=n_layers, layout=self.layout, dropout=float(dropout),
            large_ffn_mult=instance_ffn_mult, checkpoint_above=checkpoint_above,
        ) if n_layers > 0 else None
        # ReZero-style gate on the encoder's update of the class tokens (0 = the class tokens are constants)
        self.class_route_gate = nn.Parameter(torch.zeros(())) if gate_class_route and n_layers > 0 else None
        # The modality logit terms: row c of modality m's readout reads m's tokens (0 at the start)
        self.readouts = None
        if modality_logits and (self.has_clinical or self.context_modalities):
            self.readouts = nn.ModuleDict({m: nn.Linear(d_model, n_outputs, bias=False) for m in self.modalities
                                           if m != self.instance_modality})
            for readout in self.readouts.values():
                nn.init.zeros_(readout.weight)
        # The exported shares are measured against a reference token per modality (per slot for clinical and
        # genomics, [K, d]; one for events, [1, d]): the running mean of the training tokens, so that a variable at
        # its average contributes ~0 instead of the constant <r_c, b_k> of its token. Empty until trained.
        for m in (self.readouts or {}):
            self.register_buffer(f"reference_{m}", torch.zeros(0, d_model))
        self.group_embed = nn.Parameter(torch.randn(self.layout.n_query, d_model) * 0.02)
        self.class_tokens = nn.Parameter(torch.randn(n_outputs, d_model) * 0.02)
        self.latent_tokens = nn.Parameter(torch.randn(n_latents, d_model) * 0.02)
        e = d_attn or d_model
        self.score_scale = e ** -0.5
        lin = lambda: nn.Linear(d_model, e, bias=False)
        self.q_class, self.k_class = lin(), lin()  # class-wise:  class token  x instance
        self.q_psi, self.k_psi = lin(), lin()      # exploratory: clinical     x instance
        self.q_phi, self.k_phi = lin(), lin()      # phi:         class token  x clinical

        kinds = {"class_wise", "exploratory", "explanatory", "phi", TOKEN_KIND[self.instance_modality]}
        if self.readouts is not None:
            kinds.update(TOKEN_KIND[m] for m in self.context_modalities)
        if self.has_clinical:
            kinds.add("feature")
        if n_layers > 0:
            kinds.add("modality")
        self.attention_kinds = frozenset(kinds)

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: Mapping[str, Tokens]) -> AggregatorOutput:
        """``tokens``: modality -> :class:`Tokens` ``[B, T_m, d]`` (a modality left out = absent for all).

        Returns pooled ``[B, C, d]`` and the records listed in the module docstring.
        """
        tokens = self._check_tokens(tokens)
        inst = tokens[self.instance_modality]
        B, N, d = inst.values.shape
        dev, dt = inst.values.device, inst.values.dtype
        lay = self.layout

        def group(modality: str | None, g: int) -> tuple[torch.Tensor, torch.Tensor]:
            if modality is None:
                return inst.values.new_zeros(B, 0, d), torch.zeros(B, 0, dtype=torch.bool, device=dev)
            tok = tokens[modality]
            return tok.values + self.group_embed[g], tok.mask

        pairs = [group(self.instance_modality, lay.instances),
                 group("clinical" if self.has_clinical else None, lay.clinical)]
        pairs += [group(m, g) for m, g in zip(self.context_modalities, lay.context)]
        for param, g in ((self.class_tokens, lay.cls), (self.latent_tokens, lay.latents)):
            pairs.append(((param + self.group_embed[g]).expand(B, -1, -1).to(dt),
                          torch.ones(B, param.shape[0], dtype=torch.bool, device=dev)))
        xs, masks = [p[0] for p in pairs], [p[1] for p in pairs]

        class_w = class_clin = None
        h, u, t = xs[lay.instances], xs[lay.clinical], xs[lay.cls]
        if self.encoder is not None:
            full_ok = None
            if self.full_below > 0:
                full_ok = masks[lay.instances].sum(1) < self.full_below
            enc_xs, enc_masks = list(xs), list(masks)
            if not self.encode_instances:  # an empty instance group: the encoder never touches the bag
                enc_xs[lay.instances], enc_masks[lay.instances] = xs[lay.instances][:, :0], masks[lay.instances][:, :0]
            enc_xs, class_w, class_clin = self.encoder(enc_xs, enc_masks, full_ok)
            if self.encode_instances:
                h, u = enc_xs[lay.instances], enc_xs[lay.clinical]
            t_enc = enc_xs[lay.cls]
            t = t_enc if self.class_route_gate is None else t + self.class_route_gate * (t_enc - t)
        m_inst, m_clin = masks[lay.instances], masks[lay.clinical]

        s_a = torch.einsum("bnd,bcd->bcn", h, self.q_class(t) @ self.k_class.weight) * self.score_scale
        s_psi = torch.zeros(B, N, device=dev, dtype=dt)
        s_phi = torch.zeros(B, self.n_outputs, device=dev, dtype=dt)
        s_phi_k = None
        if u.shape[1] > 0:
            s_psi_k = torch.einsum("bnd,bkd->bkn", h, self.q_psi(u) @ self.k_psi.weight) * self.score_scale
            s_psi = _log_mean_exp(s_psi_k, m_clin[:, :, None], dim=1)  # [B, N]
            s_phi_k = torch.einsum("bce,bke->bck", self.q_phi(t), self.k_phi(u)) * self.score_scale
            s_phi = _log_mean_exp(s_phi_k, m_clin[:, None, :], dim=2)  # [B, C]

        mask3 = m_inst[:, None, :]
        a_raw = _exp_shifted(s_a, mask3)
        psi_raw = _exp_shifted(s_psi[:, None, :], mask3)
        phi_raw = _exp_shifted(s_phi, torch.ones_like(s_phi, dtype=torch.bool))  # [B, C]
        explanatory = masked_normalise(s_a + s_psi[:, None, :], mask3)  # == normalise(a * phi * psi)

        evidence = phi_raw[..., None] * torch.einsum("bcn,bnd->bcd", explanatory, h)
        pooled = evidence + t
        offsets = None
        shares: dict[str, torch.Tensor] = {}  # modality -> [B, C, T]: token k's share of output c vs the reference
        for m, readout in (self.readouts or {}).items():
            tok = tokens[m]
            if self.training:
                self._update_reference(m, tok)
            weight = tok.mask.to(dt)  # clinical: a sum over the variables; others: a mean over their tokens
            if m != "clinical":
                weight = weight / weight.sum(1, keepdim=True).clamp_min(1.0)
            term = torch.einsum("btd,cd->bc", tok.values * weight[..., None], readout.weight)
            offsets = term if offsets is None else offsets + term
            reference = getattr(self, f"reference_{m}")
            if reference.shape[0] not in (1, tok.values.shape[1]):  # not fitted yet: the shares of the term itself
                reference = tok.values.new_zeros(1, d)
            shares[m] = torch.einsum("btd,cd->bct", (tok.values - reference.to(dt)) * weight[..., None],
                                     readout.weight)
        records = self._records(tokens, inst, s_a, s_psi, s_phi, s_phi_k, a_raw, psi_raw, phi_raw,
                                explanatory, class_w, class_clin, shares, masks)
        score_parts = finish = None
        if class_w is not None:  # modality weights in logits, once the head has scored these parts
            score_parts = {"instances": evidence, "route": t - xs[lay.cls]}
            finish = partial(self._modality_in_logits, tokens=tokens, class_w=class_w, shares=shares)
        return AggregatorOutput(pooled=pooled, records=records, offsets=offsets, score_parts=score_parts,
                                finish_records=finish)

    @torch.no_grad()
    def _update_reference(self, modality: str, tok: Tokens, momentum: float = 0.1) -> None:
        """Running mean of the modality's real training tokens: per slot for clinical variables and genes / gene
        sets (a fixed token per slot), pooled over the tokens for events (a sequence)."""
        values, mask = tok.values.detach().float(), tok.mask
        if modality in ("clinical", "genomics"):
            count = mask.sum(0)  # [K]
            mean = (values * mask[..., None]).sum(0) / count.clamp_min(1)[:, None]  # [K, d]
        else:
            count = mask.sum().reshape(1)
            mean = ((values * mask[..., None]).sum((0, 1)) / count.clamp_min(1))[None]  # [1, d]
        if not bool(count.any()):
            return
        name = f"reference_{modality}"
        old = getattr(self, name)
        if old.shape != mean.shape:  # first batch (or the token count changed): start from this batch
            setattr(self, name, torch.where(count[:, None] > 0, mean, 0.0).to(old))
            return
        blend = old + momentum * (mean.to(old) - old)
        setattr(self, name, torch.where(count[:, None] > 0, blend, old))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for m in (self.readouts or {}):  # the references' size is only known once trained
            key = f"{prefix}reference_{m}"
            if key in state_dict:
                setattr(self, f"reference_{m}", torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _modality_in_logits(self, scores: dict[str, torch.Tensor], *, tokens: Mapping[str, Tokens],
                            class_w: torch.Tensor, shares: dict[str, torch.Tensor]) -> list[AttentionRecord]:
        """The ``modality`` record measured on the outputs: each modality's |share| of output c, in logits.

        ``scores``: the head's exact shares ``[B, C]`` of the instance evidence ``phi[c] * sum_l a'[c, l] h_l``
        and of the class route's update ``t_c - t_c^in`` (``head.part_scores``). The instance modality gets
        |evidence share|; the route's |share| is split over the modalities by the class tokens' last-layer
        group weights (the instance group only if the class tokens read the instances); every other
        modality adds |its logit term| (the sum of its token shares). Class mean, normalised over present
        modalities (uniform when all are 0, e.g. untrained); raw = the class mean in logits.
        """
        idx, present, i_inst = self._modality_columns(tokens)
        route = class_w.mean(dim=1)[:, :, idx] * present[:, None, :]  # [B, C, M]
        if self.private_instances:
            route[..., i_inst] = 0.0
        tiny = torch.finfo(route.dtype).tiny
        weight = scores["route"].abs()[..., None] * route / route.sum(-1, keepdim=True).clamp_min(tiny)
        weight[..., i_inst] += scores["instances"].abs() * present[:, i_inst, None]
        for m, share in shares.items():
            weight[..., self.modalities.index(m)] += share.sum(-1).abs()
        raw = weight.mean(dim=1)  # [B, M]
        value = _normalise_or_uniform(raw, present)
        B = raw.shape[0]
        return [AttentionRecord(kind="modality", modality="all", value=value[:, None, :], raw=raw[:, None, :],
                                mask=present, names=[list(self.modalities)] * B, class_names=None)]

    # ------------------------------------------------------------------ helpers
    def _modality_columns(self, tokens: Mapping[str, Tokens]) -> tuple[list[int], torch.Tensor, int]:
        """For the modality records: each modality's encoder group (in ``self.modalities`` order), which
        modalities each sample has ``[B, M]``, and the instance modality's column."""
        lay = self.layout
        groups = {self.instance_modality: lay.instances, "clinical": lay.clinical}
        groups.update(zip(self.context_modalities, lay.context))
        present = torch.stack([tokens[m].mask.any(1) for m in self.modalities], dim=1)
        return [groups[m] for m in self.modalities], present, self.modalities.index(self.instance_modality)

    def _check_tokens(self, tokens: Mapping[str, Tokens]) -> dict[str, Tokens]:
        """Validate ``tokens``; a modality of the model missing from the mapping is absent for every sample."""
        if not isinstance(tokens, Mapping):
            raise TypeError(f"persam: tokens must be a mapping modality -> Tokens, got {type(tokens).__name__}")
        extra = [m for m in tokens if m not in self.modalities]
        if extra:
            raise ValueError(f"persam: got tokens for {extra}, which the model was not built for "
                             f"({self.modalities})")
        if not tokens:
            raise ValueError("persam needs the tokens of at least one modality, got an empty mapping")
        sizes = {m: int(t.values.shape[0]) for m, t in tokens.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"persam: every modality must hold the same samples (batch size), got {sizes}")
        for m, tok in tokens.items():
            if not isinstance(tok, Tokens):
                raise TypeError(f"persam: tokens[{m!r}] must be Tokens, got {type(tok).__name__}")
            if tok.d_model != self.d_model:
                raise ValueError(f"persam: {m} tokens have width {tok.d_model}, expected d_model={self.d_model}")
        like = next(iter(tokens.values())).values
        B = like.shape[0]
        full = dict(tokens)
        for m in self.modalities:
            if m not in full:  # one all-padding slot keeps every shape non-empty
                full[m] = Tokens(values=like.new_zeros(B, 1, self.d_model),
                                 mask=torch.zeros(B, 1, dtype=torch.bool, device=like.device),
                                 names=[[""] for _ in range(B)], modality=m,
                                 present=torch.zeros(B, dtype=torch.bool, device=like.device))
        return full

    def _records(self, tokens, inst, s_a, s_psi, s_phi, s_phi_k, a_raw, psi_raw, phi_raw, explanatory,
                 class_w, class_clin, shares, masks) -> list[AttentionRecord]:
        B = s_a.shape[0]
        mask3 = inst.mask[:, None, :]
        meta = record_meta(inst)
        im = self.instance_modality

        def rec(kind, value, raw, class_names, modality=im, tok=inst, meta=meta) -> AttentionRecord:
            return AttentionRecord(kind=kind, modality=modality, value=value, raw=raw, mask=tok.mask,
                                   names=tok.names, class_names=class_names, meta=meta)

        out = [
            rec("class_wise", masked_normalise(s_a, mask3), a_raw, self.class_names),
            rec("exploratory", masked_normalise(s_psi[:, None, :], mask3), psi_raw, None),
            rec("explanatory", explanatory, a_raw * phi_raw[..., None] * psi_raw, self.class_names),
        ]
        mean_expl = explanatory.mean(dim=1, keepdim=True)
        out.append(rec(TOKEN_KIND[im], mean_expl, mean_expl, None))
        phi_mask = torch.ones(B, 1, dtype=torch.bool, device=s_a.device)
        out.append(AttentionRecord(kind="phi", modality="clinical", value=torch.softmax(s_phi, dim=1)[..., None],
                                   raw=phi_raw[..., None], mask=phi_mask, names=[["clinical"]] * B,
                                   class_names=self.class_names))
        # |g|: the weight with which the encoder's update reaches the class tokens (1 without the gate)
        route_weight = self.class_route_gate.abs() if self.class_route_gate is not None else phi_raw.new_ones(())
        if self.has_clinical:
            clin = tokens["clinical"]
            cm = clin.mask[:, None, :]
            if "clinical" in shares:
                value, raw = _share_weights(shares["clinical"], cm)
            elif class_clin is not None:
                # The route the clinical record takes to the prediction: how much each clinical token moves
                # each class token in the last encoder layer (attention x value norm), normalised to sum 1.
                # raw is what actually reaches the class tokens: a closed route (g ~ 0) shows as raw ~ 0.
                value = normalise_nonnegative(class_clin, cm)
                raw = class_clin.masked_fill(~cm, 0.0) * route_weight
            else:  # no encoder layer: the class-record scores behind phi are the only clinical reading
                if s_phi_k is None:  # no clinical token slots at all: nothing to weigh
                    s_phi_k = clin.values.new_zeros(B, self.n_outputs, clin.values.shape[1])
                value, raw = masked_normalise(s_phi_k, cm), _exp_shifted(s_phi_k, cm)
            out.append(rec("feature", value, raw, self.class_names, modality="clinical", tok=clin, meta={}))
        for m in self.context_modalities:  # genes / events: their logit term's per-token shares
            if m in shares:
                tok = tokens[m]
                value, raw = _share_weights(shares[m], tok.mask[:, None, :])
                out.append(rec(TOKEN_KIND[m], value, raw, self.class_names, modality=m, tok=tok,
                               meta=record_meta(tok)))
        if class_w is not None:
            idx, present, i_inst = self._modality_columns(tokens)
            share = class_w.mean(dim=1)[:, :, idx]  # [B, C, M] head mean
            if self.private_instances:
                # The class tokens never read the instances; class c gets them as phi[c] * evidence next to
                # the encoder's update of its own state, which enters with weight w = |g| (the class-route
                # gate; 1 without one). So the instance modality's share is phi / (phi + w) and the other
                # modalities split the rest by the class token's group weights: a closed route (g ~ 0) gives
                # them ~0, as their tokens then barely move the output. A sample without instances has no
                # evidence term: its class token's state is all there is, split by the group weights.
                has_inst = present[:, i_inst, None].to(phi_raw.dtype)  # [B, 1]
                tiny = torch.finfo(phi_raw.dtype).tiny
                gate = (has_inst * phi_raw / (phi_raw + route_weight).clamp_min(tiny))[..., None]  # [B, C, 1]
                share = share * (1.0 - gate)
                share[..., i_inst] = gate[..., 0]
            share = share.mean(dim=1)  # [B, M] class mean
            out.append(AttentionRecord(
                kind="modality", modality="all", value=normalise_nonnegative(share, present)[:, None, :],
                raw=share[:, None, :], mask=present, names=[list(self.modalities)] * B, class_names=None))
        return out


def _choose_instance(instance_modality: str | None, modalities: list[str]) -> str:
    if instance_modality is None:
        for m in INSTANCE_MODALITIES:
            if m in modalities:
                return m
        raise ValueError(f"persam needs an instance modality (one of {INSTANCE_MODALITIES}); the model's "
                         f"modalities are {modalities}: use another aggregator (e.g. 'concat') for them")
    if instance_modality not in INSTANCE_MODALITIES:
        raise ValueError(f"persam: instance_modality must be one of {INSTANCE_MODALITIES}, got "
                         f"{instance_modality!r}")
    if instance_modality not in modalities:
        raise ValueError(f"persam: instance_modality {instance_modality!r} is not among the model's "
                         f"modalities {modalities}")
    return instance_modality


def _class_names(class_names: Sequence[Any] | None, n_outputs: int) -> list[str]:
    if class_names is None:
        return ["risk"] if n_outputs == 1 else [str(i) for i in range(n_outputs)]
    if isinstance(class_names, str):
        raise TypeError(f"persam: class_names must be a sequence of names, got the string {class_names!r}")
    names = [str(c) for c in class_names]
    if len(names) != n_outputs:
        raise ValueError(f"persam: {len(names)} class_names {names} for n_outputs={n_outputs}")
    return names


def _share_weights(shares: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A logit term's per-token shares ``[B, C, T]`` -> (value: |share| normalised over real tokens, raw: |share|).

    An all-zero term (untrained) weighs the real tokens alike, so that the values still sum to 1.
    """
    raw = shares.abs().masked_fill(~mask, 0.0)
    return _normalise_or_uniform(raw, mask), raw


def _normalise_or_uniform(raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Non-negative ``raw`` normalised over the real entries (last dim); all 0 -> the real entries alike."""
    uniform = mask.to(raw.dtype).expand_as(raw)
    return normalise_nonnegative(torch.where(raw.sum(-1, keepdim=True) > 0, raw, uniform), mask)


def _exp_shifted(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``exp(s - max_real s)`` along the last dim: in (0, 1], max 1, exactly 0 on padding."""
    peak = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).amax(-1, keepdim=True).detach()
    return torch.exp((scores - peak).masked_fill(~mask, float("-inf")))


def _log_mean_exp(scores: torch.Tensor, mask: torch.Tensor, *, dim: int) -> torch.Tensor:
    """``log mean exp`` of ``scores`` over the real entries along ``dim``; 0 where there are none.

    Padding is filled with -inf *after* the shift, so neither the value nor the gradient sees it.
    """
    mask = mask.expand_as(scores)
    has = mask.any(dim)
    peak = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).amax(dim, keepdim=True).detach()
    peak = torch.where(has.unsqueeze(dim), peak, torch.zeros_like(peak))
    total = torch.exp((scores - peak).masked_fill(~mask, float("-inf"))).sum(dim)
    count = mask.sum(dim).clamp_min(1).to(scores.dtype)
    value = torch.log(total.clamp_min(torch.finfo(scores.dtype).tiny)) + peak.squeeze(dim) - torch.log(count)
    return torch.where(has, value, torch.zeros_like(value))
