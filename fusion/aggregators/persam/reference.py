"""PersAM's modality logit terms, and the running-mean reference tokens their exported shares are measured on.

A linear term per non-instance modality m (clinical, context) is added to the head's C outputs (the
aggregator's ``offsets``)::

    output[c] = head(pooled[c]) + sum_k <r_c, u_k> + sum_m mean_j <r^m_c, z^m_j>

u_k: the clinical tokens as the network gives them (encoder tokens plus the token-type embedding, not the
group-embedded ones the scores use), summed over the variables; z^m_j: modality m's tokens, averaged because
their number varies. Padding and absent modalities count 0. With the ``feature_tokens`` clinical encoder each
token is affine in its variable's standardised value, so the clinical term is a per-class linear model of the
record, a "wide" part next to the attention. Every ``r`` starts at 0. The terms cannot read the instances, so
they cannot stand in for an instance rule.

The exported per-token shares are ``<r_c, u_k - ref_k>``: against a reference token, the running mean of the
training tokens (per slot for clinical variables and genes / gene sets; one for events; buffers
``reference_<m>``, updated in training only, never used by the outputs), so that a variable at its training
average weighs ~0 instead of the constant ``<r_c, b_k>`` its token carries. Before any training the
reference is empty and the shares are those of the term itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ....datasets.modalities import layout_of
from ....encoders.tokens import Tokens

# Modalities whose tokens are fixed slots (one per variable / gene): their reference is per slot, [K, d];
# the others (sequences) share one reference token, [1, d].
PER_SLOT = ("clinical", "genomics")


def make_readouts(modalities: list[str], *, d_model: int, n_outputs: int) -> nn.ModuleDict:
    """One ``Linear(d, C, bias=False)`` per modality, zero at the start (the terms begin at 0)."""
    readouts = nn.ModuleDict({m: nn.Linear(d_model, n_outputs, bias=False) for m in modalities})
    for readout in readouts.values():
        nn.init.zeros_(readout.weight)
    return readouts


def register_references(module: nn.Module, modalities: list[str], *, d_model: int) -> None:
    """Empty ``reference_<m>`` buffers on ``module``; their size is only known once trained."""
    for m in modalities:
        module.register_buffer(f"reference_{m}", torch.zeros(0, d_model))


def resize_references(module: nn.Module, modalities: list[str], state_dict: Mapping, prefix: str) -> None:
    """Before loading: give each reference buffer the saved shape (called from ``_load_from_state_dict``)."""
    for m in modalities:
        key = f"{prefix}reference_{m}"
        if key in state_dict:
            setattr(module, f"reference_{m}", torch.empty_like(state_dict[key]))


def logit_terms(module: nn.Module, readouts: nn.ModuleDict, tokens: Mapping[str, Tokens]
                ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """The summed terms ``[B, C]`` (None without readouts) and, per modality, each token's share of its term
    against the reference ``[B, C, T]``. In training the references are updated first."""
    offsets = None
    shares: dict[str, torch.Tensor] = {}
    for m, readout in readouts.items():
        tok = tokens[m]
        dt = tok.values.dtype
        if module.training:
            update_reference(module, m, tok)
        weight = tok.mask.to(dt)  # clinical: a sum over the variables; others: a mean over their tokens
        if m != "clinical":
            weight = weight / weight.sum(1, keepdim=True).clamp_min(1.0)
        term = torch.einsum("btd,cd->bc", tok.values * weight[..., None], readout.weight)
        offsets = term if offsets is None else offsets + term
        reference = getattr(module, f"reference_{m}")
        if reference.shape[0] not in (1, tok.values.shape[1]):  # not fitted yet: the term's own shares
            reference = tok.values.new_zeros(1, tok.values.shape[-1])
        shares[m] = torch.einsum("btd,cd->bct", (tok.values - reference.to(dt)) * weight[..., None],
                                 readout.weight)
    return offsets, shares


@torch.no_grad()
def update_reference(module: nn.Module, modality: str, tok: Tokens, momentum: float = 0.1) -> None:
    """Running mean of the modality's real training tokens: per slot for clinical variables and genes / gene
    sets (a fixed token per slot), pooled over the tokens for events (a sequence)."""
    values, mask = tok.values.detach().float(), tok.mask
    if layout_of(modality) in PER_SLOT:
        count = mask.sum(0)  # [K]
        mean = (values * mask[..., None]).sum(0) / count.clamp_min(1)[:, None]  # [K, d]
    else:
        count = mask.sum().reshape(1)
        mean = ((values * mask[..., None]).sum((0, 1)) / count.clamp_min(1))[None]  # [1, d]
    if not bool(count.any()):
        return
    name = f"reference_{modality}"
    old = getattr(module, name)
    if old.shape != mean.shape:  # first batch (or the token count changed): start from this batch
        setattr(module, name, torch.where(count[:, None] > 0, mean, 0.0).to(old))
        return
    blend = old + momentum * (mean.to(old) - old)
    setattr(module, name, torch.where(count[:, None] > 0, blend, old))
