"""Clinical-table encoders: ``feature_tokens`` (one token per variable, default) and ``mlp`` (one token).

Input (see :mod:`clinfuse.datasets.batch`): ``numeric [B, Kn]`` standardised, 0.0 where missing;
``numeric_missing [B, Kn]`` bool; ``categorical [B, Kc]`` int64 with 0 = missing, 1 = unknown category,
2.. = vocabulary index + 2. Tokens are numeric columns first, then categorical, in schema order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..datasets.batch import ModalityBatch
from .base import ENCODERS, ModalityEncoder
from .common import check_modality, check_positive_int, check_probability, init_trunc_normal, require_tensor
from .tokens import Tokens


def clinical_columns(numeric: Sequence[str], categorical: Mapping[str, Sequence[str]], owner: str,
                     ) -> tuple[list[str], dict[str, list[str]]]:
    """Validated copies of the schema's column lists."""
    if isinstance(numeric, str) or not isinstance(numeric, Sequence):
        raise TypeError(f"{owner}: numeric must be a list of column names, got {type(numeric).__name__}")
    if not isinstance(categorical, Mapping):
        raise TypeError(f"{owner}: categorical must map column -> list of categories, "
                        f"got {type(categorical).__name__}")
    num, cat = [str(c) for c in numeric], {str(k): [str(v) for v in vs] for k, vs in categorical.items()}
    if not num and not cat:
        raise ValueError(f"{owner}: the clinical schema has no columns")
    dup = sorted(set(num) & set(cat))
    if dup or len(set(num)) != len(num):
        raise ValueError(f"{owner}: clinical columns must be unique, repeated: {dup or num}")
    return num, cat


def clinical_inputs(batch: ModalityBatch, numeric: list[str], categorical: dict[str, list[str]], owner: str,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(numeric [B, Kn] float, missing [B, Kn] bool, categorical [B, Kc] long)``, checked against the
    schema.

    An index beyond a column's table (> len(categories) + 1) or below 0 is a ValueError naming the column:
    the preprocessor maps unseen categories to 1, so a larger index means batch and encoder disagree.
    """
    check_modality(batch, "clinical", owner=owner)
    B = batch.batch_size
    kn, kc = len(numeric), len(categorical)
    x = (batch.tensors.get("numeric", torch.zeros(B, 0)) if kn == 0
         else require_tensor(batch, "numeric", owner=owner))
    miss = (batch.tensors.get("numeric_missing", torch.zeros(B, 0, dtype=torch.bool)) if kn == 0
            else require_tensor(batch, "numeric_missing", owner=owner))
    cat = (batch.tensors.get("categorical", torch.zeros(B, 0, dtype=torch.long)) if kc == 0
           else require_tensor(batch, "categorical", owner=owner))
    if tuple(x.shape) != (B, kn) or tuple(miss.shape) != (B, kn):
        raise ValueError(f"{owner}: clinical 'numeric'/'numeric_missing' must be [B, {kn}] for columns "
                         f"{numeric}, got {tuple(x.shape)} / {tuple(miss.shape)}")
    if tuple(cat.shape) != (B, kc):
        raise ValueError(f"{owner}: clinical 'categorical' must be [B, {kc}] for columns "
                         f"{list(categorical)}, got {tuple(cat.shape)}")
    if cat.dtype.is_floating_point or cat.dtype == torch.bool:
        raise TypeError(f"{owner}: clinical 'categorical' must hold integer codes, got {cat.dtype}")
    if kc and B:
        sizes = torch.tensor([len(v) + 2 for v in categorical.values()], device=cat.device)
        bad = ((cat < 0) | (cat >= sizes)).any(dim=0)
        if bool(bad.any()):
            cols = [c for c, f in zip(categorical, bad.tolist()) if f]
            raise ValueError(f"{owner}: clinical categorical code out of range for column(s) {cols}: codes "
                             "must be 0 (missing), 1 (unknown) or 2..len(categories)+1; the batch was made "
                             "with a different vocabulary than the encoder's schema")
    return x.float(), miss.bool(), cat.long()


def category_offsets(sizes: list[int]) -> torch.Tensor:
    """Where each categorical column's rows start in one embedding table of all columns (``sizes`` rows
    each)."""
    return torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0)[: len(sizes)]


@ENCODERS.register("feature_tokens", modalities=("clinical",))
class FeatureTokensEncoder(ModalityEncoder):
    """One token per clinical variable, so attention is per variable (an FT-Transformer-style tokenizer).

    - numeric column k: ``value * w_k + b_k`` (per-variable vectors); a missing value is the learned
      per-variable embedding ``m_k`` instead (never a zero vector, never an imputed value);
    - categorical column j: its own embedding table with rows for missing (0), unknown (1) and each category.

    Args:
        numeric: numeric column names (``schema["clinical"]["numeric"]``).
        categorical: column -> categories (``schema["clinical"]["categorical"]``).
        d_model: token width. dropout: on the tokens.

    Output: ``Tokens [B, Kn + Kc, d]``, names = the columns (the batch's names), rows of absent samples 0.
    """

    shared_keywords = frozenset({"dropout"})

    def __init__(self, *, numeric: Sequence[str], categorical: Mapping[str, Sequence[str]], d_model: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.numeric, self.categorical = clinical_columns(numeric, categorical, "feature_tokens")
        self.d_model = check_positive_int(d_model, "d_model", owner="feature_tokens")
        check_probability(dropout, "dropout", owner="feature_tokens")
        kn = len(self.numeric)
        self.num_weight = nn.Parameter(torch.empty(kn, d_model))
        self.num_bias = nn.Parameter(torch.empty(kn, d_model))
        self.num_missing = nn.Parameter(torch.empty(kn, d_model))
        for p in (self.num_weight, self.num_bias, self.num_missing):
            init_trunc_normal(p, std=d_model ** -0.5)
        sizes = [len(v) + 2 for v in self.categorical.values()]
        # one table for all columns; column j's rows start at offsets[j]
        self.register_buffer("offsets", category_offsets(sizes), persistent=False)
        self.cat_table = nn.Embedding(max(sum(sizes), 1), d_model)
        init_trunc_normal(self.cat_table.weight, std=d_model ** -0.5)
        self.drop = nn.Dropout(dropout)

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int, **kwargs: Any) -> FeatureTokensEncoder:
        """Build from ``schema["clinical"]`` = ``{"numeric": [...], "categorical": {col: [...]}}``."""
        return cls(numeric=schema["numeric"], categorical=schema["categorical"], d_model=d_model, **kwargs)

    def forward(self, batch: ModalityBatch) -> Tokens:
        """``numeric [B, Kn]``, ``numeric_missing [B, Kn]``, ``categorical [B, Kc]`` ->
        ``Tokens [B, Kn+Kc, d]``."""
        x, miss, cat = clinical_inputs(batch, self.numeric, self.categorical, "feature_tokens")
        num = x[..., None] * self.num_weight + self.num_bias  # [B, Kn, d]
        num = torch.where(miss[..., None], self.num_missing.expand_as(num), num)
        tok = torch.cat([num, self.cat_table(cat + self.offsets)], dim=1) if self.categorical else num
        if batch.mask.shape != tok.shape[:2]:
            raise ValueError(f"feature_tokens: clinical mask is {tuple(batch.mask.shape)}, expected "
                             f"{tuple(tok.shape[:2])} (one token per column)")
        tok = self.drop(tok) * batch.mask[..., None]
        return Tokens(values=tok, mask=batch.mask, names=batch.names, modality=batch.modality,
                      present=batch.present)


@ENCODERS.register("mlp", modalities=("clinical",))
class ClinicalMLPEncoder(ModalityEncoder):
    """One token ``"clinical"`` from an MLP over the whole record.

    The MLP input is ``[numeric (0 where missing), missing indicators, embedded categoricals]``
    (``[B, 2*Kn + Kc*cat_dim]``): missingness is an explicit input, not an imputed value.

    Args:
        numeric, categorical: the schema's columns. d_model: token width.
        hidden: hidden layer widths. cat_dim: embedding width of each categorical column.
        dropout: between the layers.

    Output: ``Tokens [B, 1, d]`` named ``"clinical"`` ("" and mask False for absent samples).
    """

    shared_keywords = frozenset({"dropout"})

    def __init__(self, *, numeric: Sequence[str], categorical: Mapping[str, Sequence[str]], d_model: int,
                 hidden: Sequence[int] = (64,), cat_dim: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.numeric, self.categorical = clinical_columns(numeric, categorical, "mlp")
        self.d_model = check_positive_int(d_model, "d_model", owner="mlp")
        check_positive_int(cat_dim, "cat_dim", owner="mlp")
        check_probability(dropout, "dropout", owner="mlp")
        sizes = [len(v) + 2 for v in self.categorical.values()]
        self.register_buffer("offsets", category_offsets(sizes), persistent=False)
        self.cat_table = nn.Embedding(max(sum(sizes), 1), cat_dim)
        layers: list[nn.Module] = []
        width = 2 * len(self.numeric) + cat_dim * len(sizes)
        for h in hidden:
            layers += [nn.Linear(width, check_positive_int(int(h), "hidden", owner="mlp")), nn.GELU(),
                       nn.Dropout(dropout)]
            width = int(h)
        layers += [nn.Linear(width, d_model), nn.LayerNorm(d_model)]
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int, **kwargs: Any) -> ClinicalMLPEncoder:
        """Build from ``schema["clinical"]``."""
        return cls(numeric=schema["numeric"], categorical=schema["categorical"], d_model=d_model, **kwargs)

    def forward(self, batch: ModalityBatch) -> Tokens:
        """clinical tensors -> ``Tokens [B, 1, d]``."""
        x, miss, cat = clinical_inputs(batch, self.numeric, self.categorical, "mlp")
        parts = [x.masked_fill(miss, 0.0), miss.float()]
        if self.categorical:
            parts.append(self.cat_table(cat + self.offsets).flatten(1))
        present = batch.present
        out = self.net(torch.cat(parts, dim=1))[:, None, :] * present[:, None, None]
        names = [["clinical"] if p else [""] for p in present.tolist()]
        return Tokens(values=out, mask=present[:, None].clone(), names=names, modality=batch.modality,
                      present=present)
