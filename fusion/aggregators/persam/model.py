"""``persam``: the personalised MIL aggregator (after Takagi et al., arXiv 2206.03003).

Tokens (B samples, d = ``d_model``): the instances ``h_l`` (``instance_modality``: patches by default, else
genes / gene sets or events), ``[B, N, d]``, masked; the clinical tokens ``u_k`` ``[B, K, d]`` (K = 0 or all
masked when absent); every other modality as a context group; C learned class tokens ``t_c`` (classes,
discrete time bins, or 1 risk token for a Cox head) and ``n_latents`` learned latents.

Encoder: :class:`~.encoder.GroupBalancedEncoder` over the clinical, context, class and latent tokens. By
default the instances do not enter it (``encode_instances=False``): the scores read the instance and clinical
tokens as the modality encoders made them (plus a group embedding), and the class tokens take the encoder's
output through a learned gate ``g`` that starts at 0 (ReZero): ``t_c = t_c^in + g * (encoder(t)_c - t_c^in)``.
The class route then opens gradually, and the instance side costs no encoder work (linear in N).
``encode_instances=True`` is the encoded variant (the scores read the encoder's outputs; needed for
``full_patch_attention_below``).

Scores (``e = d_attn``; every ``W`` a learned ``Linear(d, e, bias=False)``; means over the sample's real
clinical tokens, s_psi = s_phi = 0 without any)::

    s_a[c, l]  = <W_qa t_c, W_ka h_l> / sqrt(e)                        class-wise   [B, C, N]
    s_psi[l]   = log mean_k exp(<W_qp u_k, W_kp h_l> / sqrt(e))        exploratory  [B, N]
    s_phi[c]   = log mean_k exp(<W_qf t_c, W_kf u_k> / sqrt(e))        class-record [B, C]
    a = exp(s_a - max_l s_a), psi = exp(s_psi - max_l s_psi), phi = exp(s_phi - max_c s_phi)   in (0, 1]
    explanatory a'[c, l] = a[c, l] * phi[c] * psi[l]

Exported values normalise each over the real instances; the explanatory one is computed in log space,
``softmax_l(s_a + s_psi)`` (phi cancels), so it never underflows, while ``raw`` keeps the product. Without
clinical data psi = phi = 1 and explanatory == class-wise. Pooling (``[B, C, d]``, class c scored from its
own vector by the head)::

    pooled[c] = g * phi[c] * (sum_l explanatory[c, l] * h_l - r_c) + t_c

``r_c``: the running mean of the weighted bag (``center_evidence``); ``g``: a gate that starts at 0 under an
L1 penalty (``instance_gate_penalty``); both on by default, see :mod:`.evidence` for why.

phi gates the instance evidence by its relevance to the clinical record (so it is trained, not only
exported); ``t_c`` carries the clinical and context modalities. With ``modality_logits`` (default) a linear
term per non-instance modality is added to the outputs (:mod:`.reference`). The records are listed in
:mod:`.explanation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ....datasets.batch import MODALITIES, TOKEN_KIND
from ....encoders.common import check_int, check_positive_int
from ....encoders.tokens import Tokens
from ...base import AGGREGATORS, Aggregator, AggregatorOutput, check_common_args
from ...records import AttentionRecord, masked_normalise
from .encoder import GroupBalancedEncoder, GroupLayout
from .evidence import centred, check_nonnegative
from .explanation import PersAMState, exp_shifted, log_mean_exp, modality_in_logits, persam_records
from .reference import logit_terms, make_readouts, register_references, resize_references

INSTANCE_MODALITIES: tuple[str, ...] = ("images", "genomics", "events")


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
        ffn_mult: hidden width of the instance/context feed-forward in the encoder, multiple of d (0 = none;
            the small groups use 4 x d).
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
            (default; :mod:`.reference`), so that they reach the prediction directly.
        center_evidence: subtract the running mean of the attention-weighted bag from each sample's (see the
            module docstring; default). Saved models that predate it load with False, their behaviour.
        instance_gate_penalty: the instance evidence enters the pooled vectors through a scalar gate ``g``
            that starts at 0 (closed) and costs ``instance_gate_penalty * |g|`` in the training loss
            (:meth:`penalty_loss`), so the instance modality opens only when its evidence lowers the loss
            by more than that; None: no gate (the evidence enters directly; saved models that predate the
            gate load with None).
    """

    shared_keywords = frozenset({"n_heads", "n_layers", "dropout", "ffn_mult"})

    attention_kinds = frozenset(
        {"class_wise", "exploratory", "explanatory", "phi", "patch", "gene", "event", "feature", "modality"}
    )  # the union over configurations; each instance narrows it to what it actually exports
    own_kinds = ("class_wise", "exploratory", "explanatory", "phi")
    sample_figure = "persam"

    def __init__(
        self,
        *,
        d_model: int,
        modalities: Sequence[str],
        n_outputs: int,
        class_names: Sequence[str] | None = None,
        instance_modality: str | None = None,
        n_layers: int = 1,
        n_heads: int = 4,
        n_latents: int = 4,
        d_attn: int | None = None,
        full_patch_attention_below: int = 0,
        ffn_mult: int = 1,
        dropout: float = 0.1,
        checkpoint_above: int | None = 8192,
        private_instances: bool = True,
        encode_instances: bool = False,
        gate_class_route: bool = True,
        modality_logits: bool = True,
        center_evidence: bool = True,
        instance_gate_penalty: float | None = 0.01,
    ) -> None:
        super().__init__()
        check_common_args(owner="persam", d_model=d_model, modalities=modalities, n_outputs=n_outputs,
                          n_heads=n_heads, dropout=dropout)
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"persam: unknown modalities {unknown}; expected a subset of {MODALITIES}")
        self.modalities = [m for m in MODALITIES if m in modalities]
        self.instance_modality = _choose_instance(instance_modality, self.modalities)
        self.has_clinical = "clinical" in self.modalities
        self.context_modalities = [m for m in self.modalities
                                   if m not in (self.instance_modality, "clinical")]
        self.class_names = _class_names(class_names, n_outputs)
        for name, value in (("n_layers", n_layers), ("n_latents", n_latents), ("ffn_mult", ffn_mult),
                            ("full_patch_attention_below", full_patch_attention_below)):
            check_int(value, name, owner="persam", minimum=0)
        if d_attn is not None:
            check_positive_int(d_attn, "d_attn", owner="persam")

        self.d_model, self.n_outputs, self.n_heads = d_model, n_outputs, n_heads
        self.full_below = full_patch_attention_below
        for name, value in (("private_instances", private_instances), ("encode_instances", encode_instances),
                            ("gate_class_route", gate_class_route), ("modality_logits", modality_logits),
                            ("center_evidence", center_evidence)):
            if not isinstance(value, bool):
                raise TypeError(f"persam: {name} must be a bool, got {value!r}")
        if not encode_instances and (not private_instances or full_patch_attention_below > 0):
            raise ValueError("persam: private_instances=False and full_patch_attention_below > 0 act on the "
                             "instances inside the encoder; pass encode_instances=True with them")
        self.private_instances, self.encode_instances = private_instances, encode_instances
        self.layout = GroupLayout(n_context=len(self.context_modalities), private_instances=private_instances)
        self.encoder = GroupBalancedEncoder(
            d_model=d_model, n_heads=n_heads, n_layers=n_layers, layout=self.layout, dropout=float(dropout),
            ffn_mult=ffn_mult, checkpoint_above=checkpoint_above,
        ) if n_layers > 0 else None
        # ReZero-style gate on the encoder's update of the class tokens (0 = the class tokens are constants)
        self.class_route_gate = nn.Parameter(torch.zeros(())) if gate_class_route and n_layers > 0 else None
        # The modality logit terms (row c of modality m's readout reads m's tokens) and their reference tokens
        self.readouts = None
        if modality_logits and (self.has_clinical or self.context_modalities):
            self.readouts = make_readouts([m for m in self.modalities if m != self.instance_modality],
                                          d_model=d_model, n_outputs=n_outputs)
            register_references(self, list(self.readouts), d_model=d_model)
        if instance_gate_penalty is not None:
            check_nonnegative(instance_gate_penalty, "instance_gate_penalty")
        self.center_evidence = center_evidence
        self.instance_gate_penalty = None if instance_gate_penalty is None else float(instance_gate_penalty)
        self.instance_gate = nn.Parameter(torch.zeros(())) if instance_gate_penalty is not None else None
        if center_evidence:  # the running mean of the weighted bag, and the batches it has seen
            self.register_buffer("reference_evidence", torch.zeros(n_outputs, d_model))
            self.register_buffer("reference_evidence_batches", torch.zeros((), dtype=torch.long))
        self.group_embed = nn.Parameter(torch.randn(self.layout.n_query, d_model) * 0.02)
        self.class_tokens = nn.Parameter(torch.randn(n_outputs, d_model) * 0.02)
        self.latent_tokens = nn.Parameter(torch.randn(n_latents, d_model) * 0.02)
        e = d_attn or d_model
        self.score_scale = e ** -0.5

        def lin() -> nn.Linear:
            return nn.Linear(d_model, e, bias=False)

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

    def forward(self, tokens: Mapping[str, Tokens]) -> AggregatorOutput:
        """``tokens``: modality -> :class:`Tokens` ``[B, T_m, d]`` (a modality left out = absent for all).

        Returns pooled ``[B, C, d]``, the modality logit terms as ``offsets`` ``[B, C]`` and the records of
        :mod:`.explanation`; ``extras["persam"]`` holds the :class:`PersAMState` that :meth:`explain` reads.
        """
        tokens = self._check_tokens(tokens)
        inst = tokens[self.instance_modality]
        B, N, d = inst.values.shape
        dev, dt = inst.values.device, inst.values.dtype
        lay = self.layout

        # Outside the encoder the instances are only read linearly (scores, weighted mean), so their group
        # embedding e is applied to those results, h . q + e . q and sum_l p_l h_l + (sum_l p_l) e, instead
        # of to every one of the N tokens (a [B, N, d] tensor as large as the bag's projection).
        fold = not self.encode_instances
        e_inst = self.group_embed[lay.instances].to(dt)

        def group(modality: str | None, g: int) -> tuple[torch.Tensor, torch.Tensor]:
            if modality is None:
                return inst.values.new_zeros(B, 0, d), torch.zeros(B, 0, dtype=torch.bool, device=dev)
            tok = tokens[modality]
            if fold and g == lay.instances:
                return tok.values, tok.mask
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
                enc_xs[lay.instances] = xs[lay.instances][:, :0]
                enc_masks[lay.instances] = masks[lay.instances][:, :0]
            enc_xs, class_w, class_clin = self.encoder(enc_xs, enc_masks, full_ok)
            if self.encode_instances:
                h, u = enc_xs[lay.instances], enc_xs[lay.clinical]
            t_enc = enc_xs[lay.cls]
            t = t_enc if self.class_route_gate is None else t + self.class_route_gate * (t_enc - t)
        m_inst, m_clin = masks[lay.instances], masks[lay.clinical]

        # every score read of the instances in ONE product (the bag is read once, and in training its
        # gradient is one product too): the C class rows, then the K clinical rows of the exploratory scores
        C = self.n_outputs
        queries = self.q_class(t) @ self.k_class.weight  # [B, C, d]
        if u.shape[1] > 0:
            queries = torch.cat([queries, self.q_psi(u) @ self.k_psi.weight], dim=1)  # [B, C + K, d]
        scores = torch.bmm(queries, h.transpose(1, 2))  # [B, C + K, N]
        if fold:  # fresh from the product, which keeps no output for backward: shifted in place
            scores = scores.add_((queries @ e_inst)[..., None])
        scores = scores.mul_(self.score_scale)
        s_a = scores[:, :C]
        s_psi = torch.zeros(B, N, device=dev, dtype=dt)
        s_phi = torch.zeros(B, self.n_outputs, device=dev, dtype=dt)
        s_phi_k = None
        if u.shape[1] > 0:
            s_psi_k = scores[:, C:]
            s_psi = log_mean_exp(s_psi_k, m_clin[:, :, None], dim=1)  # [B, N]
            s_phi_k = torch.einsum("bce,bke->bck", self.q_phi(t), self.k_phi(u)) * self.score_scale
            s_phi = log_mean_exp(s_phi_k, m_clin[:, None, :], dim=2)  # [B, C]

        mask3 = m_inst[:, None, :]
        a_raw = exp_shifted(s_a, mask3)
        phi_raw = exp_shifted(s_phi, torch.ones_like(s_phi, dtype=torch.bool))  # [B, C]
        if s_phi_k is None:  # no clinical tokens: s_psi = 0, so psi is the mask and a' is a normalised
            # (the same values as the general branch, without its passes over [B, C, N])
            psi_raw = mask3.to(dt)
            explanatory = a_raw / a_raw.sum(-1, keepdim=True).clamp_min(torch.finfo(dt).tiny)
        else:
            psi_raw = exp_shifted(s_psi[:, None, :], mask3)
            explanatory = masked_normalise(s_a + s_psi[:, None, :], mask3)  # == normalise(a * phi * psi)

        weighted = torch.bmm(explanatory, h)  # [B, C, d]
        if fold:
            weighted = weighted + explanatory.sum(-1, keepdim=True) * e_inst
        if self.center_evidence:
            weighted = centred(self, weighted, m_inst.any(dim=1))
        evidence = phi_raw[..., None] * weighted
        if self.instance_gate is not None:
            evidence = self.instance_gate * evidence
        pooled = evidence + t
        offsets, shares = None, {}
        if self.readouts is not None:
            offsets, shares = logit_terms(self, self.readouts, tokens)
        state = PersAMState(tokens=tokens, s_a=s_a, s_psi=s_psi, s_phi=s_phi, s_phi_k=s_phi_k, a_raw=a_raw,
                            psi_raw=psi_raw, phi_raw=phi_raw, explanatory=explanatory, class_w=class_w,
                            class_clin=class_clin, shares=shares, evidence=evidence, route=t - xs[lay.cls])
        records = persam_records(self, state) if self.wants_records else []
        return AggregatorOutput(pooled=pooled, records=records, offsets=offsets,
                                extras={"persam": state})

    def explain(self, output: AggregatorOutput, head: nn.Module) -> list[AttentionRecord]:
        """The records, with the ``modality`` record measured in the head's logits when the head splits its
        scores exactly (``head.part_scores``: no hidden layer) and the model has encoder layers."""
        state = output.extras.get("persam")
        split = getattr(head, "part_scores", None)
        if not isinstance(state, PersAMState) or state.class_w is None or split is None:
            return output.records
        scores = split(output.pooled, {"instances": state.evidence, "route": state.route})
        if scores is None:
            return output.records
        return [r for r in output.records if r.kind != "modality"] + [modality_in_logits(self, state, scores)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.readouts is not None:  # the references' size is only known once trained
            resize_references(self, list(self.readouts), state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def penalty_loss(self) -> torch.Tensor | None:
        """``instance_gate_penalty * |g|`` (added to the training loss), None without the gate."""
        if self.instance_gate is None:
            return None
        return self.instance_gate_penalty * self.instance_gate.abs()

    def _check_tokens(self, tokens: Mapping[str, Tokens]) -> dict[str, Tokens]:
        """Validate ``tokens``; a modality of the model missing from the mapping is absent for all samples."""
        if not isinstance(tokens, Mapping):
            raise TypeError(f"persam: tokens must be a mapping modality -> Tokens, "
                            f"got {type(tokens).__name__}")
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
                raise ValueError(f"persam: {m} tokens have width {tok.d_model}, "
                                 f"expected d_model={self.d_model}")
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

