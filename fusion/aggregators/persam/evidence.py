"""PersAM's instance evidence: centred on the average bag and gated, so an uninformative bag adds nothing.

The evidence of class c is ``g * phi[c] * (sum_l explanatory[c, l] h_l - r_c)``:

* ``r_c`` (``center_evidence``): a running mean over the training samples of the attention-weighted bag
  ``sum_l explanatory[c, l] h_l`` (buffer ``reference_evidence`` ``[C, d]``, updated in training only; the
  evidence is 0 for a sample without instances, not ``-r_c``). Without it the bare presence of a bag adds
  a near-constant vector that phi scales by the clinical record.
* ``g`` (``instance_gate_penalty``): a scalar gate that starts at 0 (the bag changes nothing at first) and
  costs ``instance_gate_penalty * |g|`` in the training loss, so it opens only when the instance evidence
  lowers the loss by more than that. Open from the start, the clinical-guided attention (psi, phi) learns
  to pick out of any rich bag, pure noise included, a weighted mean that encodes the clinical record.

Both are second routes for the clinical record through the instance modality; masking the bag takes them
away, so the exact modality contributions (:mod:`clinfuse.fusion.explain.contributions`) rightly credit
the bag with them. With both, a pure-noise bag gets about nothing (``benchmarks/README.md``, the
noise-modality benchmark).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MOMENTUM = 0.1
"""Weight of the current batch in the running mean of the weighted bag."""


def check_nonnegative(value: Any, name: str) -> None:
    """TypeError unless ``value`` is a real number, ValueError unless it is >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"persam: {name} must be a number >= 0 or None, got {value!r}")
    if not value >= 0:
        raise ValueError(f"persam: {name} must be >= 0 or None, got {value!r}")


def centred(module: nn.Module, weighted: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """``weighted`` ``[B, C, d]`` minus ``module.reference_evidence`` ``[C, d]``, 0 where ``has`` ``[B]`` is
    False. In training the reference is first moved towards the mean over the samples that have instances
    (the first batch sets it; buffer ``reference_evidence_batches`` counts the batches)."""
    if module.training and bool(has.any()):
        with torch.no_grad():
            mean = weighted.detach()[has].float().mean(dim=0).to(module.reference_evidence)
            if int(module.reference_evidence_batches) == 0:
                module.reference_evidence.copy_(mean)
            else:
                module.reference_evidence.add_(MOMENTUM * (mean - module.reference_evidence))
            module.reference_evidence_batches.add_(1)
    out = weighted - module.reference_evidence.to(weighted.dtype)
    return out * has[:, None, None].to(weighted.dtype)
