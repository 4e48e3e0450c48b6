"""``gene_transformer``: gene-expression profiles as gene tokens or gene-set (pathway) tokens.

Gene tokens (``use_gene_sets=False``): token g of sample b is
``gene_embedding[g] + values[b, g] * value_weight[g]`` (identity + a per-gene value projection), then
LayerNorm and masked transformer layers; token names are the genes.

Gene-set tokens (default when the schema has ``gene_sets``): as in pathway-token survival models
(SurvPath), each set s has its own small MLP over the values of its member genes,
``token_s = W2_s GELU(sum_{g in s} values[b, g] * w1_{s,g} + b1_s) + b2_s``, with a hidden width
``set_hidden``; the first layer is stored as one flat table over all (set, member) pairs, so sets of any
size cost only their own members. Token names are the set names. For attribution back to genes the
tokens carry, per set, the member genes and a gradient-free member weighting:

* ``meta["member_genes"]``: ``dict[set, list[gene]]``, the set's genes present in the schema, in schema order;
* ``meta["member_weights"]``: ``dict[set, Tensor [B, n_members]]``,
  ``|values[b, g]| * ||w1_{s,g}||`` normalised to sum 1 over the set's members (uniform when that sum is 0,
  e.g. for an absent sample), i.e. each member's share of the first layer's input magnitude. A set's
  attention times these weights spreads it over genes.

Cost: by default (``n_layers=None``) gene tokens do not attend to each other (0 layers): each token is
made from its own gene only (embedding + value projection, LayerNorm), so an epoch costs time linear in
the number of genes, and the aggregator (PersAM's instance attention) is where genes meet; the few
gene-set tokens keep one layer. Without layers, training dropout acts on the gene values ``[B, G]`` (a
dropped gene's token keeps its gene embedding) instead of on the ``[B, G, d]`` token features, d times
fewer random draws for the same kind of regularisation. With ``n_layers >= 1`` and ``attention="full"``
SDPA's fused CPU kernel keeps memory linear in the number of tokens (see :mod:`clinfuse.encoders.layers`),
but time grows as T^2; ``attention="latent"`` is linear in T.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..datasets.batch import ModalityBatch
from ..datasets.validation import format_ids
from .base import ENCODERS, ModalityEncoder
from .common import check_heads, check_modality, check_positive_int
from .layers import AttentionKind, MaskedTransformer
from .tokens import Tokens


class GeneSetTokenizer(nn.Module):
    """Per-set two-layer MLPs over member-gene values: ``values [B, G]`` -> set tokens ``[B, S, d]``.

    Args (keyword-only):
        members: per set, the indices of its member genes in ``[0, G)`` (each non-empty).
        d_model: token width; hidden: each set MLP's hidden width.
    """

    def __init__(self, *, members: Sequence[Sequence[int]], d_model: int, hidden: int) -> None:
        super().__init__()
        pair_set = [s for s, idx in enumerate(members) for _ in idx]
        pair_gene = [g for idx in members for g in idx]
        self.n_sets = len(members)
        self.sizes = [len(idx) for idx in members]
        self.register_buffer("pair_set", torch.tensor(pair_set, dtype=torch.long), persistent=False)
        self.register_buffer("pair_gene", torch.tensor(pair_gene, dtype=torch.long), persistent=False)
        # fan-in scaling per set, so large and small sets start with hidden units of similar size
        sizes = torch.tensor(self.sizes)
        scale = sizes.float().rsqrt().repeat_interleave(sizes)
        self.w1 = nn.Parameter(torch.randn(len(pair_gene), hidden) * scale.unsqueeze(1))
        self.b1 = nn.Parameter(torch.zeros(self.n_sets, hidden))
        self.w2 = nn.Parameter(torch.randn(self.n_sets, hidden, d_model) * hidden**-0.5)
        # b2 doubles as a set-identity embedding
        self.b2 = nn.Parameter(torch.randn(self.n_sets, d_model) * 0.02)
        self.act = nn.GELU()

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` ``[B, G]`` -> ``[B, S, d]``."""
        contrib = values[:, self.pair_gene].unsqueeze(-1) * self.w1  # [B, P, h]
        hidden = contrib.new_zeros(values.shape[0], self.n_sets, self.w1.shape[1])
        hidden = hidden.index_add(1, self.pair_set, contrib) + self.b1
        return torch.einsum("bsh,shd->bsd", self.act(hidden), self.w2) + self.b2

    @torch.no_grad()
    def member_weights(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per set, ``[B, n_members]``: ``|value| * ||w1||`` normalised to sum 1 (uniform when all are 0)."""
        share = values[:, self.pair_gene].abs() * self.w1.norm(dim=1)  # [B, P]
        out = []
        for part in torch.split(share, self.sizes, dim=1):
            total = part.sum(dim=1, keepdim=True)
            uniform = torch.full_like(part, 1.0 / part.shape[1])
            out.append(torch.where(total > 0, part / total.clamp_min(1e-30), uniform))
        return out


@ENCODERS.register("gene_transformer", modalities=("genomics",))
class GeneTransformer(ModalityEncoder):
    """Expression ``values [B, G]`` -> ``Tokens [B, G or S, d_model]`` (gene or gene-set tokens).

    Args (keyword-only):
        genes: the schema's genes, in the order of the batch's columns.
        gene_sets: set name -> member genes (genes outside ``genes`` are ignored; sets left empty are
            skipped with a warning and listed in ``skipped_gene_sets``).
        d_model, n_heads, n_layers, ffn_mult, dropout: transformer size (``d_model % n_heads == 0``);
            ``n_layers=None`` (default): 0 for gene tokens (no attention among them, cost linear in
            their number), 1 for gene-set tokens.
        use_gene_sets: tokens are gene sets (default: True when ``gene_sets`` has a non-empty set).
        set_hidden: hidden width of each set's MLP.
        attention: ``"full"`` (exact, O(T^2) time, O(T) memory) or ``"latent"`` (O(T * n_latents)).
        n_latents: latents per block when ``attention="latent"``.
        query_chunk_size: queries per SDPA call (see :mod:`~clinfuse.encoders.layers`); None = one call.
        max_tokens: raise ``ValueError`` when a batch has more tokens than this (None = no limit).
    """

    shared_keywords = frozenset({"n_heads", "n_layers", "dropout", "ffn_mult"})

    def __init__(
        self,
        *,
        genes: Sequence[str],
        gene_sets: Mapping[str, Sequence[str]] | None = None,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int | None = None,
        ffn_mult: int = 2,
        dropout: float = 0.1,
        use_gene_sets: bool | None = None,
        set_hidden: int = 32,
        attention: AttentionKind = "full",
        n_latents: int = 32,
        query_chunk_size: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model", owner="gene_transformer")
        check_heads(d_model, n_heads, owner="gene_transformer")
        self.genes = [str(g) for g in genes]
        if not self.genes:
            raise ValueError("gene_transformer (genomics): the schema has no genes")
        if len(set(self.genes)) != len(self.genes):
            raise ValueError("gene_transformer (genomics): duplicated gene names in the schema")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"gene_transformer (genomics): max_tokens must be positive or None, "
                             f"got {max_tokens!r}")
        index = {g: i for i, g in enumerate(self.genes)}
        self.set_names: list[str] = []
        self.member_genes: dict[str, list[str]] = {}
        self.skipped_gene_sets: list[str] = []
        members: list[list[int]] = []
        for name, set_genes in (gene_sets or {}).items():
            if isinstance(set_genes, str):
                raise TypeError(f"gene_transformer (genomics): gene set {name!r} must be a list of genes, "
                                "got a string")
            idx = sorted({index[g] for g in map(str, set_genes) if g in index})
            if not idx:
                self.skipped_gene_sets.append(str(name))
                continue
            self.set_names.append(str(name))
            self.member_genes[str(name)] = [self.genes[i] for i in idx]
            members.append(idx)
        if self.skipped_gene_sets:
            warnings.warn(f"gene_transformer (genomics): {len(self.skipped_gene_sets)} gene set(s) have no "
                          f"gene in the schema and are skipped: {format_ids(self.skipped_gene_sets)}",
                          stacklevel=2)
        if use_gene_sets is None:
            use_gene_sets = bool(members)
        if use_gene_sets and not members:
            raise ValueError("gene_transformer (genomics): use_gene_sets=True but no gene set has a gene in "
                             "the schema")
        self.use_gene_sets = bool(use_gene_sets)
        if n_layers is None:  # attention among G gene tokens costs G^2; among a few sets it is cheap
            n_layers = 1 if self.use_gene_sets else 0
        self.max_tokens = max_tokens
        if self.use_gene_sets:
            self.set_tokenizer = GeneSetTokenizer(members=members, d_model=d_model, hidden=set_hidden)
        else:
            n = len(self.genes)
            self.gene_embedding = nn.Parameter(torch.randn(n, d_model) * 0.02)
            self.value_weight = nn.Parameter(torch.randn(n, d_model) * d_model**-0.5)
        self.norm_in = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.transformer = MaskedTransformer(
            d_model=d_model, n_heads=n_heads, n_layers=n_layers, ffn_mult=ffn_mult, dropout=dropout,
            attention=attention, n_latents=n_latents, query_chunk_size=query_chunk_size,
        )

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int, **kwargs: Any) -> GeneTransformer:
        if "genes" not in schema:
            raise ValueError(f"gene_transformer needs a genomics schema with 'genes', "
                             f"got keys {sorted(schema)}")
        return cls(genes=schema["genes"], gene_sets=schema.get("gene_sets"), d_model=d_model, **kwargs)

    @property
    def token_names(self) -> list[str]:
        """The names of the tokens this encoder emits (genes or gene sets)."""
        return list(self.set_names) if self.use_gene_sets else list(self.genes)

    def _check(self, batch: ModalityBatch) -> torch.Tensor:
        check_modality(batch, "genomics", owner="gene_transformer")
        values = batch.tensors.get("values")
        if values is None:
            raise ValueError("gene_transformer (genomics): the batch has no 'values' tensor [B, G]")
        if values.dim() != 2 or values.shape[1] != len(self.genes):
            raise ValueError(f"gene_transformer (genomics): expected values [B, {len(self.genes)}] (the "
                             f"schema's genes), got {tuple(values.shape)}; was the batch made by a different "
                             "preprocessor?")
        n_tokens = len(self.set_names) if self.use_gene_sets else len(self.genes)
        if self.max_tokens is not None and n_tokens > self.max_tokens:
            raise ValueError(f"gene_transformer (genomics): {n_tokens} tokens exceed "
                             f"max_tokens={self.max_tokens}; select fewer genes (Preprocessor top_genes=), "
                             "use gene sets, or raise max_tokens")
        for row in batch.names:  # the first present sample's names must be the schema's genes, in order
            if any(row):
                if row != self.genes:
                    bad = next(i for i, (a, b) in enumerate(zip(row, self.genes)) if a != b)
                    raise ValueError(f"gene_transformer (genomics): batch gene {bad} is {row[bad]!r}, the "
                                     f"schema has {self.genes[bad]!r}; the batch's genes are not the "
                                     "schema's genes")
                break
        return values

    def forward(self, batch: ModalityBatch) -> Tokens:
        """``batch.tensors["values"]`` ``[B, G]`` -> ``Tokens`` ``[B, T, d_model]`` (T = G or the number of
        sets)."""
        values = self._check(batch)
        present = batch.present
        if not bool(present.all()):
            values = values.masked_fill(~present.unsqueeze(1), 0.0)  # absent rows: content is never used
        meta: dict[str, Any] = {}
        if self.use_gene_sets:
            x = self.set_tokenizer(values)
            mask = present.unsqueeze(1).expand(-1, len(self.set_names)).clone()
            names = [list(self.set_names) if p else [""] * len(self.set_names) for p in present.tolist()]
            meta["member_genes"] = {s: list(g) for s, g in self.member_genes.items()}
            meta["member_weights"] = dict(zip(self.set_names, self.set_tokenizer.member_weights(values)))
            x = self.drop(self.norm_in(x))
        else:
            per_gene = not self.transformer.layers  # no attention: drop gene values, not [B, G, d] features
            if per_gene:
                values = self.drop(values)
            x = self.norm_in(self.gene_embedding + values.unsqueeze(-1) * self.value_weight)  # [B, G, d]
            if not per_gene:
                x = self.drop(x)
            mask = batch.mask & present.unsqueeze(1)
            names = [list(r) for r in batch.names]
        x = self.transformer(x, mask)
        return Tokens(values=x, mask=mask, names=names, modality=batch.modality, present=present, meta=meta)
