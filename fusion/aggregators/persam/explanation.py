"""PersAM's exported attention: the records of one batch, and the modality weights measured in logits.

Records (T = that modality's tokens; N the instances, C the class tokens, M the modalities):

=============== ============ ============ ==========================================================
kind            modality     value        meaning
=============== ============ ============ ==========================================================
class_wise      instance     [B, C, N]    a, normalised over instances
exploratory     instance     [B, 1, N]    psi, normalised over instances
explanatory     instance     [B, C, N]    a', normalised over instances
phi             clinical     [B, C, 1]    phi, normalised over the classes (``normalised_over="classes"``;
                                          one token, "clinical", per sample; uniform without clinical data)
patch/gene/event instance    [B, 1, N]    class average of explanatory (raw == value: already sums to 1)
feature         clinical     [B, C, K]    with modality logits (default): |<r_c, u_k - ref_k>|, token k's
                                          share of output c's clinical term against the reference (raw =
                                          |share|, in logits; uniform while all are 0). Without them: how much
                                          token k
                                          moves class token c in the last encoder layer,
                                          || sum_h p_h[c, k] W_o^h v_h[k] || (attention weighted by the norm
                                          of what the token brings, Kobayashi et al. 2020; raw = that norm
                                          times |g|, so a closed class route shows as raw ~ 0); without
                                          encoder layers, softmax_k of the s_phi scores
gene/event      context      [B, C, T]    modality logits only: |its logit term's share per token against
                                          the reference| (the mean's 1/T included); raw = |share| in logits
modality        all          [B, 1, M]    see below
=============== ============ ============ ==========================================================

``modality``: from the aggregator alone, the weights in pooled[c]: instance phi / (phi + |g|), the rest by the
class tokens' group weights (the logit terms are not in this fallback). :meth:`PersAM.explain` replaces it,
given a head that splits its scores exactly (``head.part_scores``: no hidden layer), by each modality's
|share of output c| in logits: the instance evidence's, the class route's split by group weights, and each
other modality's logit term against the reference; class mean, normalised over the present modalities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ....datasets.batch import TOKEN_KIND
from ....encoders.tokens import Tokens
from ...records import AttentionRecord, masked_normalise, normalise_nonnegative
from ..pooling import record_meta

if TYPE_CHECKING:
    from .model import PersAM


@dataclass
class PersAMState:
    """What PersAM's forward computed for one batch, kept for its records and :meth:`PersAM.explain`.

    Shapes: ``s_a``, ``a_raw``, ``explanatory`` ``[B, C, N]``; ``s_psi`` ``[B, N]``; ``psi_raw``
    ``[B, 1, N]``; ``s_phi``, ``phi_raw`` ``[B, C]``; ``s_phi_k`` ``[B, C, K]`` or None; ``class_w`` the class
    tokens' last-layer group weights ``[B, H, C, n_key]`` (None without encoder); ``class_clin``
    ``[B, C, K]`` or None; ``shares`` modality -> ``[B, C, T]``; ``evidence`` and ``route`` ``[B, C, d]``,
    the additive parts of the pooled vectors (instance evidence, class-route update).
    """

    tokens: dict[str, Tokens]
    s_a: torch.Tensor
    s_psi: torch.Tensor
    s_phi: torch.Tensor
    s_phi_k: torch.Tensor | None
    a_raw: torch.Tensor
    psi_raw: torch.Tensor
    phi_raw: torch.Tensor
    explanatory: torch.Tensor
    class_w: torch.Tensor | None
    class_clin: torch.Tensor | None
    shares: dict[str, torch.Tensor]
    evidence: torch.Tensor
    route: torch.Tensor


def persam_records(model: PersAM, st: PersAMState) -> list[AttentionRecord]:
    """The records of the module docstring, from the aggregator alone."""
    tokens, im = st.tokens, model.instance_modality
    inst = tokens[im]
    B = st.s_a.shape[0]
    mask3 = inst.mask[:, None, :]
    meta = record_meta(inst)

    def rec(kind, value, raw, class_names, modality=im, tok=inst, meta=meta) -> AttentionRecord:
        return AttentionRecord(kind=kind, modality=modality, value=value, raw=raw, mask=tok.mask,
                               names=tok.names, class_names=class_names, meta=meta)

    out = [
        # without clinical tokens (s_phi_k None) s_psi = 0 and the explanatory attention is the class-wise
        rec("class_wise", st.explanatory if st.s_phi_k is None else masked_normalise(st.s_a, mask3), st.a_raw,
            model.class_names),
        rec("exploratory", masked_normalise(st.s_psi[:, None, :], mask3), st.psi_raw, None),
        rec("explanatory", st.explanatory, st.a_raw * st.phi_raw[..., None] * st.psi_raw, model.class_names),
    ]
    mean_expl = st.explanatory.mean(dim=1, keepdim=True)
    out.append(rec(TOKEN_KIND[im], mean_expl, mean_expl, None))
    # every sample has a phi value (uniform over the classes without clinical data): one token per sample
    one = torch.ones(B, 1, dtype=torch.bool, device=st.s_a.device)
    phi = torch.softmax(st.s_phi, dim=1)[..., None]
    out.append(AttentionRecord(kind="phi", modality="clinical", value=phi, raw=st.phi_raw[..., None],
                               mask=one, names=[["clinical"]] * B, class_names=model.class_names,
                               normalised_over="classes"))
    # |g|: the weight with which the encoder's update reaches the class tokens (1 without the gate)
    gate = model.class_route_gate
    route_weight = gate.abs() if gate is not None else st.phi_raw.new_ones(())
    if model.has_clinical:
        clin = tokens["clinical"]
        cm = clin.mask[:, None, :]
        if "clinical" in st.shares:
            value, raw = _share_weights(st.shares["clinical"], cm)
        elif st.class_clin is not None:
            # The route the clinical record takes to the prediction: how much each clinical token moves
            # each class token in the last encoder layer (attention x value norm), normalised to sum 1.
            # raw is what actually reaches the class tokens: a closed route (g ~ 0) shows as raw ~ 0.
            value = normalise_nonnegative(st.class_clin, cm)
            raw = st.class_clin.masked_fill(~cm, 0.0) * route_weight
        else:  # no encoder layer: the class-record scores behind phi are the only clinical reading
            s_phi_k = st.s_phi_k
            if s_phi_k is None:  # no clinical token slots at all: nothing to weigh
                s_phi_k = clin.values.new_zeros(B, model.n_outputs, clin.values.shape[1])
            value, raw = masked_normalise(s_phi_k, cm), exp_shifted(s_phi_k, cm)
        out.append(rec("feature", value, raw, model.class_names, modality="clinical", tok=clin, meta={}))
    for m in model.context_modalities:  # genes / events: their logit term's per-token shares
        if m in st.shares:
            tok = tokens[m]
            value, raw = _share_weights(st.shares[m], tok.mask[:, None, :])
            out.append(rec(TOKEN_KIND[m], value, raw, model.class_names, modality=m, tok=tok,
                           meta=record_meta(tok)))
    if st.class_w is not None:
        idx, present, i_inst = modality_columns(model, tokens)
        share = st.class_w.mean(dim=1)[:, :, idx]  # [B, C, M] head mean
        if model.private_instances:
            # The class tokens never read the instances; class c gets them as phi[c] * evidence next to
            # the encoder's update of its own state, which enters with weight w = |g| (the class-route
            # gate; 1 without one). So the instance modality's share is phi / (phi + w) and the other
            # modalities split the rest by the class token's group weights: a closed route (g ~ 0) gives
            # them ~0, as their tokens then barely move the output. A sample without instances has no
            # evidence term: its class token's state is all there is, split by the group weights.
            phi_raw = st.phi_raw
            has_inst = present[:, i_inst, None].to(phi_raw.dtype)  # [B, 1]
            tiny = torch.finfo(phi_raw.dtype).tiny
            inst_share = has_inst * phi_raw / (phi_raw + route_weight).clamp_min(tiny)
            inst_share = inst_share[..., None]  # [B, C, 1]
            share = share * (1.0 - inst_share)
            share[..., i_inst] = inst_share[..., 0]
        share = share.mean(dim=1)  # [B, M] class mean
        out.append(AttentionRecord(
            kind="modality", modality="all", value=normalise_nonnegative(share, present)[:, None, :],
            raw=share[:, None, :], mask=present, names=[list(model.modalities)] * B, class_names=None))
    return out


def modality_in_logits(model: PersAM, st: PersAMState, scores: dict[str, torch.Tensor]) -> AttentionRecord:
    """The ``modality`` record measured on the outputs: each modality's |share| of output c, in logits.

    ``scores``: the head's exact shares ``[B, C]`` of the instance evidence ``phi[c] * sum_l a'[c, l] h_l``
    and of the class route's update ``t_c - t_c^in`` (``head.part_scores``). The instance modality gets
    |evidence share|; the route's |share| is split over the modalities by the class tokens' last-layer
    group weights (the instance group only if the class tokens read the instances); every other
    modality adds |its logit term| (the sum of its token shares). Class mean, normalised over present
    modalities (uniform when all are 0, e.g. untrained); raw = the class mean in logits.
    """
    assert st.class_w is not None, "modality weights need the encoder's group weights"
    idx, present, i_inst = modality_columns(model, st.tokens)
    route = st.class_w.mean(dim=1)[:, :, idx] * present[:, None, :]  # [B, C, M]
    if model.private_instances:
        route[..., i_inst] = 0.0
    tiny = torch.finfo(route.dtype).tiny
    weight = scores["route"].abs()[..., None] * route / route.sum(-1, keepdim=True).clamp_min(tiny)
    weight[..., i_inst] += scores["instances"].abs() * present[:, i_inst, None]
    for m, share in st.shares.items():
        weight[..., model.modalities.index(m)] += share.sum(-1).abs()
    raw = weight.mean(dim=1)  # [B, M]
    value = _normalise_or_uniform(raw, present)
    B = raw.shape[0]
    return AttentionRecord(kind="modality", modality="all", value=value[:, None, :], raw=raw[:, None, :],
                           mask=present, names=[list(model.modalities)] * B, class_names=None)


def modality_columns(model: PersAM, tokens: Mapping[str, Tokens]) -> tuple[list[int], torch.Tensor, int]:
    """For the modality records: each modality's encoder group (in ``model.modalities`` order), which
    modalities each sample has ``[B, M]``, and the instance modality's column."""
    lay = model.layout
    groups = {model.instance_modality: lay.instances, "clinical": lay.clinical}
    groups.update(zip(model.context_modalities, lay.context))
    present = torch.stack([tokens[m].mask.any(1) for m in model.modalities], dim=1)
    return [groups[m] for m in model.modalities], present, model.modalities.index(model.instance_modality)


def exp_shifted(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``exp(s - max_real s)`` along the last dim: in (0, 1], max 1, exactly 0 on padding."""
    peak = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).amax(-1, keepdim=True).detach()
    # in place on the fresh difference: the same values as exp((s - peak).masked_fill(..)), one tensor
    return (scores - peak).masked_fill_(~mask, float("-inf")).exp_()


def _share_weights(shares: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A logit term's per-token shares ``[B, C, T]`` -> (|share| normalised over real tokens, |share|).

    An all-zero term (untrained) weighs the real tokens alike, so that the values still sum to 1.
    """
    raw = shares.abs().masked_fill(~mask, 0.0)
    return _normalise_or_uniform(raw, mask), raw


def _normalise_or_uniform(raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Non-negative ``raw`` normalised over the real entries (last dim); all 0 -> the real entries alike."""
    uniform = mask.to(raw.dtype).expand_as(raw)
    return normalise_nonnegative(torch.where(raw.sum(-1, keepdim=True) > 0, raw, uniform), mask)


def log_mean_exp(scores: torch.Tensor, mask: torch.Tensor, *, dim: int) -> torch.Tensor:
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
