"""The genomics modality: an AnnData of samples x genes (dense or scipy-sparse expression).

Input: ``obs_names`` = sample ids, ``var_names`` = genes, NaN = not measured; ``genomics_layer`` picks a
layer instead of ``.X``; ``gene_sets`` groups genes (see :mod:`clinfuse.datasets.gene_sets`). Fitted: an
optional transform (``log1p`` or ``cpm_log1p``), the ``top_genes`` most variable genes after it and their
mean / std; gene sets are restricted to the kept genes. One token per kept gene.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..batch import ModalityBatch
from ..gene_sets import parse_gene_sets
from ..statistics import mean_std
from ..validation import check_unique, format_ids, str_ids
from .base import Modality, ModalityPreprocessor, Normalised, TableReader

GENE_TRANSFORMS = (None, "log1p", "cpm_log1p")
_CHUNK = 2048  # genes per chunk when ranking variances, so a 60k-gene matrix is never densified at once


def normalise_genomics(adata: Any, layer: str | None) -> Any:
    """A new AnnData with str obs/var names and ``layer`` (if given) as ``.X`` (dense or scipy sparse).

    NaN means "not measured" and is kept; non-numeric or infinite values raise, naming samples and genes.
    """
    import anndata as ad
    import scipy.sparse as sp

    if not isinstance(adata, ad.AnnData):
        raise TypeError(
            f"genomics: expected an anndata.AnnData (obs = samples, var = genes), got {type(adata).__name__}"
        )
    obs = str_ids(adata.obs_names, what="genomics obs_names")
    check_unique(obs, what="genomics obs_names")
    var = [str(v) for v in adata.var_names]
    if pd.Index(var).has_duplicates:
        dup = pd.Index(var)[pd.Index(var).duplicated()]
        raise ValueError(f"genomics: duplicated gene name(s) {format_ids(dict.fromkeys(dup))} in var_names")
    if layer is None:
        x = adata.X
    else:
        if layer not in adata.layers:
            raise ValueError(
                f"genomics: layer {layer!r} not found; available layers: {list(adata.layers)} "
                "(genomics_layer=None uses .X)"
            )
        x = adata.layers[layer]
    if x is None:
        raise ValueError("genomics: the AnnData has no .X; pass genomics_layer= naming a layer")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"genomics: the AnnData is empty ({adata.n_obs} samples x {adata.n_vars} genes)")
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        vals = x.data
    else:
        x = np.asarray(x)
        vals = x
    if vals.dtype == object and not sp.issparse(x):
        x = vals = _numeric_matrix(x, obs, var)
    if not (np.issubdtype(vals.dtype, np.number) or vals.dtype == np.bool_):
        raise TypeError(f"genomics: expression values have dtype {vals.dtype}; expected numbers")
    if vals.dtype == np.bool_ or np.issubdtype(vals.dtype, np.integer):
        vals = vals.astype(np.float32)
        if sp.issparse(x):
            x = sp.csr_matrix((vals, x.indices, x.indptr), shape=x.shape)
        else:
            x = vals
    if np.isinf(vals).any():
        if sp.issparse(x):
            coo = x.tocoo()
            hit = np.isinf(coo.data)
            rows, cols = coo.row[hit], coo.col[hit]
        else:
            rows, cols = np.nonzero(np.isinf(x))
        raise ValueError(
            "genomics: infinite expression value(s) for sample(s) "
            f"{format_ids(dict.fromkeys(obs[r] for r in rows))} "
            f"in gene(s) {format_ids(dict.fromkeys(var[c] for c in cols))}; expected finite numbers (NaN = "
            "missing)"
        )
    out = ad.AnnData(X=x, obs=pd.DataFrame(index=pd.Index(obs)), var=pd.DataFrame(index=pd.Index(var)))
    if adata.obs.shape[1]:
        out.obs = adata.obs.set_axis(pd.Index(obs), axis=0)
    if adata.var.shape[1]:
        out.var = adata.var.set_axis(pd.Index(var), axis=0)
    return out


def _numeric_matrix(x: np.ndarray, obs: list[str], var: list[str]) -> np.ndarray:
    """An object matrix as float64 when every cell is a number (or missing); else name the bad cells."""
    frame = pd.DataFrame(x)
    num = frame.apply(pd.to_numeric, errors="coerce")
    rows, cols = np.nonzero((frame.notna() & num.isna()).to_numpy())
    if len(rows):
        raise ValueError(
            f"genomics: non-numeric expression value(s) (e.g. {x[rows[0], cols[0]]!r}) for sample(s) "
            f"{format_ids(dict.fromkeys(obs[r] for r in rows))} in gene(s) "
            f"{format_ids(dict.fromkeys(var[c] for c in cols))}; expected numbers (NaN = missing)"
        )
    return num.to_numpy(dtype=np.float64)


def _rows(matrix: Any, rows: np.ndarray | slice, cols: np.ndarray | slice = slice(None)) -> np.ndarray:
    """Dense float64 block of a dense or scipy-sparse matrix."""
    block = matrix[rows][:, cols]
    block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
    return block.astype(np.float64, copy=False)


class GenomicsPreprocessor(ModalityPreprocessor):
    """Transforms expression, keeps the most variable genes and standardises them with training statistics.

    Args:
        top_genes: keep this many most variable genes (after ``gene_transform``); ``None`` keeps all, and
            all are kept when the cohort has fewer.
        gene_transform: ``None``, ``"log1p"`` (log(1 + x)) or ``"cpm_log1p"`` (counts per million, then
            log1p).
        scale_genes: standardise each kept gene with its training mean / std.
    """

    params = ("top_genes", "gene_transform", "scale_genes")

    def __init__(self, *, top_genes: int | None = 2000, gene_transform: str | None = None,
                 scale_genes: bool = True) -> None:
        if top_genes is not None and (not isinstance(top_genes, int | np.integer) or top_genes < 1):
            raise ValueError(f"top_genes must be a positive int or None, got {top_genes!r}")
        if gene_transform not in GENE_TRANSFORMS:
            raise ValueError(f"gene_transform must be one of {GENE_TRANSFORMS}, got {gene_transform!r}")
        self.top_genes = None if top_genes is None else int(top_genes)
        self.gene_transform = gene_transform
        self.scale_genes = bool(scale_genes)

    def _fit(self, adata: Any, cohort: Any) -> None:
        genes = [str(g) for g in adata.var_names]
        library = self._library_sizes(adata.X, list(adata.obs_names))
        variances = np.empty(len(genes))
        for start in range(0, len(genes), _CHUNK):
            cols = np.arange(start, min(start + _CHUNK, len(genes)))
            block = self._transform_block(_rows(adata.X, slice(None), cols), library, list(adata.obs_names))
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN genes are handled below
                variances[cols] = np.nanvar(block, axis=0)
        variances = np.where(np.isfinite(variances), variances, -np.inf)  # all-NaN genes rank last
        k = len(genes) if self.top_genes is None else min(self.top_genes, len(genes))
        keep = np.sort(np.argsort(-variances, kind="stable")[:k])  # keep the input's gene order
        block = self._transform_block(_rows(adata.X, slice(None), keep), library, list(adata.obs_names))
        stats = [mean_std(block[:, j]) for j in range(block.shape[1])]
        self.n_genes_in_ = len(genes)
        self.genes_ = [genes[j] for j in keep]
        self.gene_mean_ = [s[0] for s in stats]
        self.gene_std_ = [s[1] for s in stats]
        kept = set(self.genes_)
        sets = getattr(cohort, "gene_sets", None) or {}
        self.gene_sets_ = {str(s): [str(g) for g in members if str(g) in kept] for s, members in sets.items()}
        # a set without any kept gene cannot be a token; it is recorded, not dropped silently
        self.dropped_gene_sets_ = sorted(s for s, members in self.gene_sets_.items() if not members)
        self.gene_sets_ = {s: m for s, m in self.gene_sets_.items() if m} or None

    def transform(self, adata: Any) -> np.ndarray:
        """AnnData -> float32 ``[n_obs, G]`` over the kept genes, transformed and scaled (NaN -> 0 = mean)."""
        self._check_fitted()
        index = pd.Index([str(g) for g in adata.var_names]).get_indexer(self.genes_)
        if (index < 0).any():
            lost = [g for g, i in zip(self.genes_, index, strict=True) if i < 0]
            raise ValueError(f"genomics: {len(lost)} of {len(self.genes_)} fitted gene(s) are missing, "
                             f"e.g. {format_ids(lost)}")
        samples = [str(s) for s in adata.obs_names]
        library = self._library_sizes(adata.X, samples)
        block = self._transform_block(_rows(adata.X, slice(None), index), library, samples)
        if self.scale_genes:
            block = (block - np.asarray(self.gene_mean_)) / np.asarray(self.gene_std_)
            block = np.where(np.isfinite(block), block, 0.0)
        else:
            block = np.where(np.isfinite(block), block, np.asarray(self.gene_mean_))
        return block.astype(np.float32)

    def _library_sizes(self, matrix: Any, samples: list[str]) -> np.ndarray | None:
        if self.gene_transform != "cpm_log1p":
            return None
        if hasattr(matrix, "toarray"):
            total = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
        else:
            total = np.nansum(np.asarray(matrix, dtype=np.float64), axis=1)
        empty = [s for s, t in zip(samples, total, strict=True) if not t > 0]
        if empty:
            raise ValueError(f"genomics: gene_transform='cpm_log1p' needs a positive library size; "
                             f"sample(s) {format_ids(empty)} have total expression <= 0")
        return total

    def _transform_block(
        self, block: np.ndarray, library: np.ndarray | None, samples: list[str]
    ) -> np.ndarray:
        if self.gene_transform is None:
            return block
        with np.errstate(invalid="ignore"):
            negative = np.nanmin(np.where(np.isnan(block), 0.0, block), axis=1) < 0 if block.size else []
        bad = [s for s, neg in zip(samples, negative, strict=True) if neg]
        if bad:
            raise ValueError(
                f"genomics: gene_transform={self.gene_transform!r} needs non-negative expression; "
                f"sample(s) {format_ids(bad)} have negative values (already log-scaled? use None)"
            )
        if library is not None:
            block = block / library[:, None] * 1e6
        return np.log1p(block)

    def schema(self) -> dict[str, Any]:
        sets = None if self.gene_sets_ is None else {s: list(m) for s, m in self.gene_sets_.items()}
        return {"genes": list(self.genes_), "gene_sets": sets}

    def state(self) -> dict[str, Any]:
        return {"genes": list(self.genes_), "mean": list(self.gene_mean_), "std": list(self.gene_std_),
                "gene_sets": self.gene_sets_, "dropped_gene_sets": list(self.dropped_gene_sets_),
                "n_genes_in": self.n_genes_in_}

    def _load(self, state: dict[str, Any]) -> None:
        self.genes_, self.gene_mean_, self.gene_std_ = state["genes"], state["mean"], state["std"]
        self.gene_sets_, self.dropped_gene_sets_ = state["gene_sets"], state["dropped_gene_sets"]
        self.n_genes_in_ = state["n_genes_in"]

    def check_compatible(self, adata: Any) -> list[str]:
        have = {str(g) for g in adata.var_names}
        lost = [g for g in self.genes_ if g not in have]
        if lost:
            return [f"genomics: {len(lost)} of {len(self.genes_)} fitted gene(s) missing, "
                    f"e.g. {format_ids(lost)}"]
        return []


class GenomicsModality(Modality):
    """Gene expression: one token per kept gene (``meta["gene_sets"]`` groups them)."""

    name = "genomics"
    token_kind = "gene"
    preprocessor_class = GenomicsPreprocessor
    options = ("genomics_layer", "gene_sets")
    noun = "expression profile"
    data_keys: ClassVar[dict[str, str]] = {
        "genomics": "AnnData .h5ad file (obs_names = sample ids)",
        "genomics_layer": "AnnData layer to use instead of X",
        "gene_sets": "GMT file, or a mapping set -> genes",
    }

    def normalise(self, data: Any, options: Mapping[str, Any]) -> Normalised:
        adata = normalise_genomics(data, options.get("genomics_layer"))
        gene_sets, excluded = None, []
        if options.get("gene_sets") is not None:
            gene_sets, excluded = parse_gene_sets(options["gene_sets"], list(adata.var_names))
        return Normalised(adata, {"gene_sets": gene_sets}, excluded)

    def attribute_defaults(self) -> dict[str, Any]:
        return {"gene_sets": None}

    def check_options_without_data(self, options: Mapping[str, Any]) -> None:
        if options.get("gene_sets") is not None or options.get("genomics_layer") is not None:
            raise ValueError("genomics: gene_sets / genomics_layer given without genomics data")

    def sample_ids(self, data: Any) -> list[str]:
        return list(data.obs_names)

    def subset(self, data: Any, ids: list[str]) -> Any | None:
        return data[ids].copy() if ids else None

    def summary_lines(self, data: Any, cohort: Any) -> list[str]:
        gs = f", {len(cohort.gene_sets)} gene sets" if cohort.gene_sets else ""
        return [f"  genomics: {data.n_obs} samples x {data.n_vars} genes{gs}"]

    def shape(self, data: Any) -> list[int]:
        return list(data.shape)

    def default_encoder(self, schema_entry: Mapping[str, Any]) -> str:
        return "gene_transformer"

    def reader(self, data: Any, cohort: Any, preprocessor: GenomicsPreprocessor) -> TableReader:
        return TableReader({str(s): i for i, s in enumerate(data.obs_names)}, preprocessor.transform(data))

    def collate(self, items: Sequence[np.ndarray | None], schema_entry: Mapping[str, Any],
                present: torch.Tensor) -> ModalityBatch:
        genes = list(schema_entry["genes"])
        values = np.zeros((len(items), len(genes)), dtype=np.float32)
        for b, item in enumerate(items):
            if item is not None:
                values[b] = item
        mask = present[:, None].expand(len(items), len(genes)).clone()
        names = [list(genes) if p else [""] * len(genes) for p in present.tolist()]
        meta: dict[str, Any] = {}
        if schema_entry.get("gene_sets"):
            index = {g: i for i, g in enumerate(genes)}
            meta["gene_sets"] = {s: [index[g] for g in members if g in index]
                                 for s, members in schema_entry["gene_sets"].items()}
        return ModalityBatch(self.name, mask, present, {"values": torch.from_numpy(values)}, names, meta)

    # ------------------------------------------------------------------ files
    def read_files(self, source: Any) -> dict[str, Any]:
        import anndata

        path = source.path("genomics")
        if not path.is_file():
            raise FileNotFoundError(f"data.genomics: file {path} does not exist")
        gene_sets = source.spec.get("gene_sets")
        if isinstance(gene_sets, str):
            gene_sets = str(source.path("gene_sets"))
        return {"genomics": anndata.read_h5ad(path), "genomics_layer": source.spec.get("genomics_layer"),
                "gene_sets": gene_sets}

    def write_files(self, data: Any, cohort: Any, folder: Path) -> dict[str, Any]:
        data.write_h5ad(folder / "expression.h5ad")
        return {"genomics": "expression.h5ad"}
