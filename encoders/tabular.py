"""pytorch-tabular backbones as clinical encoders: ``tabular_ft_transformer``, ``tabular_category_embedding``.

pytorch-tabular builds a model as embedding layer + backbone + head from an OmegaConf ``DictConfig``, and
its ``BaseModel`` is a LightningModule that also wants a data config, an optimizer and a loss. We embed only
the two ``nn.Module`` pieces, built the way its models build them:

- ``FTTransformerBackbone(config)`` and ``backbone._build_embedding_layer()`` (an ``Embedding2dLayer``),
- ``CategoryEmbeddingBackbone(config)`` and its ``Embedding1dLayer``,

from a ``DictConfig`` holding exactly the keys those constructors read (pytorch-tabular's own config
dataclasses need a full trainer/data setup, so we do not use them). They become ordinary submodules, so
they train end to end with the rest of the model and are saved in its state dict.

Missing values: pytorch-tabular has no notion of them (its data module imputes before the model sees
anything). We feed the standardised numeric values (0.0 where missing) AND one missing indicator per numeric
column as extra continuous columns (``continuous_dim = 2 * Kn``); categorical codes go in unchanged (their
table has rows for missing = 0 and unknown = 1; pytorch-tabular's shared embeddings keep row 0 at zero, so a
missing category is represented by the column's shared embedding part only).

pytorch-tabular is imported lazily (it pulls in Lightning and takes seconds to import).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..datasets.batch import ModalityBatch
from .base import ENCODERS, ModalityEncoder
from .clinical import clinical_columns, clinical_inputs
from .common import check_heads, check_positive_int, check_probability
from .tokens import Tokens


def _continuous(x: torch.Tensor, miss: torch.Tensor) -> torch.Tensor:
    """``[B, Kn]`` values and missing flags -> ``[B, 2 * Kn]`` continuous input (values, then indicators)."""
    return torch.cat([x.masked_fill(miss, 0.0), miss.float()], dim=1)


@ENCODERS.register("tabular_ft_transformer", modalities=("clinical",))
class TabularFTTransformerEncoder(ModalityEncoder):
    """pytorch-tabular's FT-Transformer (``FTTransformerBackbone`` + ``Embedding2dLayer``) as a clinical
    encoder.

    Args:
        numeric, categorical: the schema's columns. d_model: token width (= the backbone's
            ``input_embed_dim``).
        n_heads, n_layers: attention heads (d_model % n_heads == 0) and blocks (``num_attn_blocks``).
        ffn_mult, activation: the backbone's position-wise feed-forward (GEGLU by default).
        dropout: used for its attention, feed-forward and add-norm dropouts.
        output: ``"tokens"`` (default): one token per clinical variable, taken from the backbone's transformer
            outputs; a numeric variable's token is the sum of its value token and its missing-indicator token.
            ``"cls"``: one token ``"clinical"``, the backbone's own output (its CLS token).

    Output: ``Tokens [B, Kn + Kc, d]`` named by column, or ``[B, 1, d]``; rows of absent samples are 0.
    Cost: the backbone attends over all ``2 * Kn + Kc + 1`` columns (no key padding is needed: every column of
    a present sample is a real token).
    """

    shared_keywords = frozenset({"n_heads", "n_layers", "dropout", "ffn_mult"})

    def __init__(self, *, numeric: Sequence[str], categorical: Mapping[str, Sequence[str]], d_model: int,
                 n_heads: int = 4, n_layers: int = 2, ffn_mult: int = 2, activation: str = "GEGLU",
                 dropout: float = 0.1, output: str = "tokens") -> None:
        super().__init__()
        owner = "tabular_ft_transformer"
        self.numeric, self.categorical = clinical_columns(numeric, categorical, owner)
        self.d_model = check_positive_int(d_model, "d_model", owner=owner)
        check_heads(d_model, n_heads, owner=owner)
        check_positive_int(n_layers, "n_layers", owner=owner)
        check_positive_int(ffn_mult, "ffn_mult", owner=owner)
        check_probability(dropout, "dropout", owner=owner)
        if output not in ("tokens", "cls"):
            raise ValueError(f"{owner}: output must be 'tokens' or 'cls', got {output!r}")
        self.output = output
        from omegaconf import OmegaConf
        from pytorch_tabular.models.ft_transformer.ft_transformer import FTTransformerBackbone

        kn = len(self.numeric)
        config = OmegaConf.create({
            "continuous_dim": 2 * kn,
            "categorical_cardinality": [len(v) + 2 for v in self.categorical.values()],
            "input_embed_dim": d_model, "embedding_initialization": "kaiming_uniform", "embedding_bias": True,
            "share_embedding_strategy": "fraction", "shared_embedding_fraction": 0.25,
            "embedding_dropout": 0.0,
            "num_heads": n_heads, "num_attn_blocks": n_layers, "transformer_head_dim": None,
            "attn_dropout": dropout, "add_norm_dropout": dropout, "ff_dropout": dropout,
            "ff_hidden_multiplier": ffn_mult, "transformer_activation": activation,
            "attn_feature_importance": False, "batch_norm_continuous_input": False,
            "virtual_batch_size": None,
        })
        self.backbone = FTTransformerBackbone(config)
        self.embedding = self.backbone._build_embedding_layer()

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int,
                    **kwargs: Any) -> TabularFTTransformerEncoder:
        """Build from ``schema["clinical"]``."""
        return cls(numeric=schema["numeric"], categorical=schema["categorical"], d_model=d_model, **kwargs)

    def _inputs(self, batch: ModalityBatch) -> dict[str, torch.Tensor]:
        x, miss, cat = clinical_inputs(batch, self.numeric, self.categorical, "tabular_ft_transformer")
        return {"continuous": _continuous(x, miss), "categorical": cat}

    def forward(self, batch: ModalityBatch) -> Tokens:
        """clinical tensors -> ``Tokens [B, Kn + Kc, d]`` (``output="tokens"``) or ``[B, 1, d]``
        (``"cls"``)."""
        emb = self.embedding(self._inputs(batch))  # [B, 2*Kn + Kc, d]
        present = batch.present
        if self.output == "cls":
            out = self.backbone(emb)[:, None, :] * present[:, None, None]
            names = [["clinical"] if p else [""] for p in present.tolist()]
            return Tokens(values=out, mask=present[:, None].clone(), names=names, modality=batch.modality,
                          present=present)
        # the backbone's forward keeps only its CLS output; run its own blocks to keep every column's output
        h = self.backbone.add_cls(emb)
        for block in self.backbone.transformer_blocks:
            h = block(h)
        kn = len(self.numeric)
        tok = torch.cat([h[:, :kn] + h[:, kn:2 * kn], h[:, 2 * kn:-1]], dim=1)  # [B, Kn + Kc, d]
        if batch.mask.shape != tok.shape[:2]:
            raise ValueError(f"tabular_ft_transformer: clinical mask is {tuple(batch.mask.shape)}, expected "
                             f"{tuple(tok.shape[:2])} (one token per column)")
        tok = tok * batch.mask[..., None]
        return Tokens(values=tok, mask=batch.mask, names=batch.names, modality=batch.modality,
                      present=present)


@ENCODERS.register("tabular_category_embedding", modalities=("clinical",))
class TabularCategoryEmbeddingEncoder(ModalityEncoder):
    """pytorch-tabular's category-embedding MLP (``CategoryEmbeddingBackbone`` + ``Embedding1dLayer``).

    Args:
        numeric, categorical: the schema's columns. d_model: token width.
        layers: the backbone's hidden widths, pytorch-tabular style ``"64-32"``.
        cat_dim: embedding width per categorical column (default: pytorch-tabular's rule
            min(50, (card+1)//2)).
        activation, dropout, use_batch_norm: passed to the backbone (batch norm off by default: it makes a
            sample's output depend on the rest of its batch in training).

    Output: ``Tokens [B, 1, d]`` named ``"clinical"`` (Linear(backbone output, d) + LayerNorm); 0 for absent
    samples.
    """

    shared_keywords = frozenset({"dropout"})

    def __init__(self, *, numeric: Sequence[str], categorical: Mapping[str, Sequence[str]], d_model: int,
                 layers: str = "64-32", cat_dim: int | None = None, activation: str = "ReLU",
                 dropout: float = 0.1, use_batch_norm: bool = False) -> None:
        super().__init__()
        owner = "tabular_category_embedding"
        self.numeric, self.categorical = clinical_columns(numeric, categorical, owner)
        self.d_model = check_positive_int(d_model, "d_model", owner=owner)
        check_probability(dropout, "dropout", owner=owner)
        if not isinstance(layers, str) or not all(p.isdigit() and int(p) > 0 for p in layers.split("-")):
            raise ValueError(f"{owner}: layers must look like '64-32' (positive widths joined by '-'), "
                             f"got {layers!r}")
        if not hasattr(nn, str(activation)):
            raise ValueError(f"{owner}: activation must name a torch.nn activation, got {activation!r}")
        if cat_dim is not None:
            check_positive_int(cat_dim, "cat_dim", owner=owner)
        from omegaconf import OmegaConf
        from pytorch_tabular.models.category_embedding.category_embedding_model import (
            CategoryEmbeddingBackbone,
        )

        cards = [len(v) + 2 for v in self.categorical.values()]
        dims = [(c, cat_dim or min(50, (c + 1) // 2)) for c in cards]
        config = OmegaConf.create({
            "continuous_dim": 2 * len(self.numeric), "embedding_dims": [list(d) for d in dims],
            "embedded_cat_dim": sum(d for _, d in dims), "layers": layers, "activation": activation,
            "initialization": "kaiming", "use_batch_norm": use_batch_norm, "dropout": dropout,
            "embedding_dropout": 0.0, "batch_norm_continuous_input": False, "virtual_batch_size": None,
        })
        self.backbone = CategoryEmbeddingBackbone(config)
        self.embedding = self.backbone._build_embedding_layer()
        self.proj = nn.Sequential(nn.Linear(self.backbone.output_dim, d_model), nn.LayerNorm(d_model))

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int,
                    **kwargs: Any) -> TabularCategoryEmbeddingEncoder:
        """Build from ``schema["clinical"]``."""
        return cls(numeric=schema["numeric"], categorical=schema["categorical"], d_model=d_model, **kwargs)

    def forward(self, batch: ModalityBatch) -> Tokens:
        """clinical tensors -> ``Tokens [B, 1, d]``."""
        x, miss, cat = clinical_inputs(batch, self.numeric, self.categorical, "tabular_category_embedding")
        h = self.backbone(self.embedding({"continuous": _continuous(x, miss), "categorical": cat}))
        present = batch.present
        out = self.proj(h)[:, None, :] * present[:, None, None]
        names = [["clinical"] if p else [""] for p in present.tolist()]
        return Tokens(values=out, mask=present[:, None].clone(), names=names, modality=batch.modality,
                      present=present)
