"""The "wide" part of a wide-and-deep network: a ridge-penalised linear term on the tabular inputs.

On small cohorts a linear model on standardised clinical variables (a penalised Cox, a logistic regression)
is hard to beat; the deep part then only has to learn what is left. :class:`WideLinear` scores the
preprocessed clinical table (standardised numeric values, their missing flags, one weight per category)
and gene values, and :class:`~clinfuse.fusion.network.FusionNetwork` adds that score to the head's
outputs. Its weights start at zero and are kept small by an explicit L2 penalty added to the training
loss (``penalty / 2 * ||w||^2``, not by the optimiser's weight decay), the usual ridge of a penalised
regression on standardised inputs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

from ..datasets.batch import Batch
from ..encoders.common import check_positive_int

WIDE_MODALITIES = ("clinical", "genomics")
"""The modalities whose preprocessed inputs are one fixed-width row per sample (what a linear term reads)."""


class WideLinear(nn.Module):
    """``Batch`` -> ``[B, n_outputs]``: a linear score of the clinical and genomic inputs.

    Args:
        n_outputs: scores per sample (1 for a risk shared by every output, C for class logits).
        n_numeric: clinical numeric columns (a weight for the value and one for its missing flag).
        categories: clinical categorical columns -> vocabulary size (a weight per category, plus one for
            "missing" and one for "unknown").
        n_genes: genes of the genomics modality (0: none).
        penalty: the L2 penalty of :meth:`penalty_loss` (>= 0).

    A sample without a modality gets no contribution from it (0, its weights' neutral value).
    """

    def __init__(self, *, n_outputs: int, n_numeric: int = 0, categories: Mapping[str, int] | None = None,
                 n_genes: int = 0, penalty: float = 0.1) -> None:
        super().__init__()
        check_positive_int(n_outputs, "n_outputs", owner="WideLinear")
        if not float(penalty) >= 0.0:
            raise ValueError(f"WideLinear: penalty must be >= 0, got {penalty!r}")
        self.n_outputs, self.penalty = int(n_outputs), float(penalty)
        self.numeric = nn.Parameter(torch.zeros(2 * int(n_numeric), self.n_outputs))
        self.categorical = nn.ModuleList(
            nn.Embedding(int(n) + 2, self.n_outputs, _weight=torch.zeros(int(n) + 2, self.n_outputs))
            for n in (categories or {}).values())
        self.genes = nn.Parameter(torch.zeros(int(n_genes), self.n_outputs))

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any], *, n_outputs: int, penalty: float) -> WideLinear:
        """Sized by a fitted preprocessor's ``schema_`` (the clinical columns and the kept genes)."""
        clinical = schema.get("clinical") or {}
        genomics = schema.get("genomics") or {}
        return cls(n_outputs=n_outputs, n_numeric=len(clinical.get("numeric", [])),
                   categories={c: len(v) for c, v in (clinical.get("categorical") or {}).items()},
                   n_genes=len(genomics.get("genes", [])), penalty=penalty)

    def forward(self, batch: Batch, *, modalities: Collection[str] | None = None) -> torch.Tensor:
        """``[B, n_outputs]``; zero for a sample without clinical or genomic data.

        ``modalities``: score only these modalities' inputs, the others counted as absent for every sample
        (what a modality masked in :mod:`clinfuse.fusion.explain.contributions` must contribute: nothing);
        None (the network's forward) scores every modality of the batch.
        """
        if isinstance(modalities, str):
            raise TypeError(f"WideLinear: modalities must be a collection of names, got the string "
                            f"{modalities!r}")
        like = self.numeric
        B = len(batch.sample_ids)
        out = like.new_zeros(B, self.n_outputs)
        clin = batch.modalities.get("clinical") if modalities is None or "clinical" in modalities else None
        if clin is not None and (self.numeric.numel() or len(self.categorical)):
            t = clin.tensors
            keep = clin.present.to(like.dtype).unsqueeze(1)
            if self.numeric.numel():
                x = torch.cat([t["numeric"].to(like.dtype), t["numeric_missing"].to(like.dtype)], dim=1)
                out = out + keep * (x @ self.numeric)
            for j, table in enumerate(self.categorical):
                out = out + keep * table(t["categorical"][:, j])
        genes = batch.modalities.get("genomics") if modalities is None or "genomics" in modalities else None
        if genes is not None and self.genes.numel():
            keep = genes.present.to(like.dtype).unsqueeze(1)
            out = out + keep * (genes.tensors["values"].to(like.dtype) @ self.genes)
        return out

    def penalty_loss(self) -> torch.Tensor:
        """``penalty / 2`` times the sum of the squared weights (added to the training loss)."""
        total = (self.numeric ** 2).sum() + (self.genes ** 2).sum()
        for table in self.categorical:
            total = total + (table.weight ** 2).sum()
        return 0.5 * self.penalty * total
