"""Leakage-free preprocessing: every statistic is fitted on the training cohort only, then applied anywhere.

:class:`Preprocessor` learns, from the cohort given to :meth:`Preprocessor.fit` (the training samples):

- clinical: mean / std of each numeric column over its observed values, and each categorical column's
  vocabulary (``0`` = missing, ``1`` = unknown category, ``2..`` = vocabulary index + 2);
- genomics: an optional transform (``log1p`` or ``cpm_log1p``), the ``top_genes`` most variable genes after
  it, and their mean / std; gene sets are restricted to the kept genes;
- events: the code vocabulary (codes seen fewer than ``min_code_count`` times become unknown = 1) and a
  mean / std of the values of each code;
- images: the feature dimension or the pixel shape; the task: its type and classes.

It saves as JSON only (:meth:`to_json`, :meth:`from_json`) so that a saved model carries its data schema
without pickle, and :meth:`check_compatible` says what differs when new data does not match it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import write_text_atomic
from .batch import MODALITIES

NOT_FITTED = "Preprocessor is not fitted yet, call fit first"
GENE_TRANSFORMS = (None, "log1p", "cpm_log1p")
FORMAT = "clinfuse.Preprocessor"
_CHUNK = 2048  # genes per chunk when ranking variances, so a 60k-gene matrix is never densified at once


class NotFittedError(ValueError, AttributeError):
    """Raised when a preprocessor is used before :meth:`Preprocessor.fit` (a ``ValueError``; also an
    ``AttributeError`` so that ``hasattr(p, "schema_")`` is False before fitting, as in scikit-learn)."""


def category_key(value: Any) -> str | None:
    """Canonical string of a category value, ``None`` when missing (so 2, 2.0 and "2" are one category)."""
    if value is None or (not isinstance(value, str) and bool(np.ndim(value) == 0 and pd.isna(value))):
        return None
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _natural(key: str) -> tuple[int, float, str]:
    """Sort numeric-looking categories numerically ("2" < "10"), then the rest alphabetically."""
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def _jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _stats(values: np.ndarray) -> tuple[float, float]:
    """(mean, std) of the finite values; (0, 1) when there are none, std 1 when constant."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    mean, std = float(values.mean()), float(values.std())
    return mean, (std if std > 1e-12 else 1.0)


def _rows(matrix: Any, rows: np.ndarray | slice, cols: np.ndarray | slice = slice(None)) -> np.ndarray:
    """Dense float64 block of a dense or scipy-sparse matrix."""
    block = matrix[rows][:, cols]
    block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
    return block.astype(np.float64, copy=False)


class Preprocessor:
    """Fits scalers, vocabularies and gene selection on training samples; turns cohorts into model inputs.

    Args:
        top_genes: keep this many most variable genes (after ``gene_transform``); ``None`` keeps all, and
            all are kept when the cohort has fewer.
        gene_transform: ``None``, ``"log1p"`` (log(1 + x)) or ``"cpm_log1p"`` (counts per million, then log1p).
        scale_genes: standardise each kept gene with its training mean / std.
        min_code_count: event codes seen fewer times than this in training map to the unknown code (1).
        max_events: keep at most this many most recent events per sample (the rest are counted in ``n_cut``).
        event_value_scaling: standardise event values per code with training mean / std.
        clinical_types: column -> ``"numeric"`` | ``"categorical"``, overriding the cohort's detected types.
    """

    def __init__(self, *, top_genes: int | None = 2000, gene_transform: str | None = None,
                 scale_genes: bool = True, min_code_count: int = 1, max_events: int = 8192,
                 event_value_scaling: bool = True, clinical_types: dict[str, str] | None = None) -> None:
        if top_genes is not None and (not isinstance(top_genes, int | np.integer) or top_genes < 1):
            raise ValueError(f"top_genes must be a positive int or None, got {top_genes!r}")
        if gene_transform not in GENE_TRANSFORMS:
            raise ValueError(f"gene_transform must be one of {GENE_TRANSFORMS}, got {gene_transform!r}")
        if not isinstance(min_code_count, int | np.integer) or min_code_count < 1:
            raise ValueError(f"min_code_count must be an int >= 1, got {min_code_count!r}")
        if not isinstance(max_events, int | np.integer) or max_events < 1:
            raise ValueError(f"max_events must be an int >= 1, got {max_events!r}")
        bad = {c: t for c, t in (clinical_types or {}).items() if t not in ("numeric", "categorical")}
        if bad:
            raise ValueError(f"clinical_types values must be 'numeric' or 'categorical'; got {bad}")
        self.top_genes = None if top_genes is None else int(top_genes)
        self.gene_transform = gene_transform
        self.scale_genes = bool(scale_genes)
        self.min_code_count = int(min_code_count)
        self.max_events = int(max_events)
        self.event_value_scaling = bool(event_value_scaling)
        self.clinical_types = None if clinical_types is None else {str(k): v for k, v in clinical_types.items()}

    def get_params(self, deep: bool = True) -> dict[str, Any]:  # deep: scikit-learn signature
        return {"top_genes": self.top_genes, "gene_transform": self.gene_transform, "scale_genes": self.scale_genes,
                "min_code_count": self.min_code_count, "max_events": self.max_events,
                "event_value_scaling": self.event_value_scaling, "clinical_types": self.clinical_types}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"Preprocessor({params})"

    @property
    def is_fitted(self) -> bool:
        return "_schema" in self.__dict__

    @property
    def schema_(self) -> dict[str, Any]:
        """The fitted data schema (format in :mod:`clinfuse.datasets.batch`), read by the encoders."""
        self._check_fitted()
        return self._schema

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(NOT_FITTED)

    # ------------------------------------------------------------------ fit
    def fit(self, cohort: Any) -> Preprocessor:
        """Learn every statistic from ``cohort`` (pass the training samples only). Returns ``self``."""
        if len(cohort.sample_ids) == 0:
            raise ValueError("Preprocessor.fit: the cohort has no samples")
        self.modalities_ = [m for m in MODALITIES if m in cohort.modalities]
        if "clinical" in self.modalities_:
            self._fit_clinical(cohort)
        if "genomics" in self.modalities_:
            self._fit_genomics(cohort)
        if "events" in self.modalities_:
            self._fit_events(cohort)
        if "images" in self.modalities_:
            images = cohort.images
            if images.kind == "features":
                self.image_schema_ = {"kind": "features", "feature_dim": int(images.feature_dim)}
            else:
                c, h, w = (int(v) for v in images.pixel_shape)
                self.image_schema_ = {"kind": "pixels", "channels": c, "height": h, "width": w}
        task = getattr(cohort, "task", None)
        if task == "classification":
            self.task_ = {"type": "classification", "classes": [_jsonable(c) for c in cohort.classes]}
        elif task == "survival":
            self.task_ = {"type": "survival"}
        else:
            self.task_ = None
        self._schema = self._build_schema()
        return self

    def _fit_clinical(self, cohort: Any) -> None:
        frame = cohort.clinical
        columns = [str(c) for c in frame.columns]
        types = {str(k): v for k, v in (cohort.clinical_types or {}).items()}
        unknown = sorted(set(self.clinical_types or {}) - set(columns))
        if unknown:
            raise ValueError(f"clinical_types names column(s) {unknown} that the clinical table lacks; "
                             f"its columns are {columns}")
        types.update(self.clinical_types or {})
        lookup = dict(zip(columns, frame.columns, strict=True))
        self.numeric_columns_ = [c for c in columns if types.get(c, "numeric") == "numeric"]
        self.numeric_mean_, self.numeric_std_ = [], []
        for col in self.numeric_columns_:
            mean, std = _stats(_numeric_column(frame[lookup[col]], col))
            self.numeric_mean_.append(mean)
            self.numeric_std_.append(std)
        self.categories_ = {}
        for col in columns:
            if types.get(col, "numeric") == "categorical":
                keys = {category_key(v) for v in frame[lookup[col]].tolist()} - {None}
                self.categories_[col] = sorted(keys, key=_natural)

    def _fit_genomics(self, cohort: Any) -> None:
        adata = cohort.genomics
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
        stats = [_stats(block[:, j]) for j in range(block.shape[1])]
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

    def _fit_events(self, cohort: Any) -> None:
        events = cohort.events
        codes = events["code"].astype(str)
        counts = codes.value_counts()
        vocab = [c for c, n in counts.items() if n >= self.min_code_count]
        self.code_vocab_ = sorted(vocab, key=lambda c: (-int(counts[c]), c))  # frequent first, then by name
        self.n_rare_codes_ = int(len(counts) - len(vocab))
        values = events["value"].to_numpy(dtype=np.float64) if "value" in events else np.full(len(events), np.nan)
        has = np.isfinite(values)
        self.events_have_values_ = bool(has.any())
        self.event_default_stats_ = list(_stats(values))
        observed = pd.Series(values[has], index=codes.to_numpy()[has])
        observed = observed[observed.index.isin(self.code_vocab_)].groupby(level=0, sort=True)
        means, stds = observed.mean(), observed.std(ddof=0)
        stds = stds.where(stds > 1e-12, 1.0)  # constant (or single-value) codes: std 1, as in _stats
        self.event_value_stats_ = {str(c): [float(means[c]), float(stds[c])] for c in means.index}

    def _build_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if "clinical" in self.modalities_:
            schema["clinical"] = {"numeric": list(self.numeric_columns_),
                                  "categorical": {c: list(v) for c, v in self.categories_.items()}}
        if "genomics" in self.modalities_:
            sets = None if self.gene_sets_ is None else {s: list(m) for s, m in self.gene_sets_.items()}
            schema["genomics"] = {"genes": list(self.genes_), "gene_sets": sets}
        if "images" in self.modalities_:
            schema["images"] = dict(self.image_schema_)
        if "events" in self.modalities_:
            schema["events"] = {"vocab": list(self.code_vocab_), "max_events": self.max_events,
                                "has_values": self.events_have_values_}
        schema["task"] = None if self.task_ is None else dict(self.task_)
        return schema

    # ------------------------------------------------------------------ transforms
    def transform_clinical(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Rows of ``frame`` -> ``numeric`` float32 ``[n, Kn]`` (0.0 where missing), ``numeric_missing``
        bool ``[n, Kn]`` and ``categorical`` int64 ``[n, Kc]`` (0 missing, 1 unknown, 2.. vocabulary)."""
        self._check_fitted()
        lookup = {str(c): c for c in frame.columns}
        missing = [c for c in [*self.numeric_columns_, *self.categories_] if c not in lookup]
        if missing:
            raise ValueError(f"clinical: the table lacks column(s) {missing} seen at fit time")
        n = len(frame)
        numeric = np.zeros((n, len(self.numeric_columns_)), dtype=np.float32)
        absent = np.zeros((n, len(self.numeric_columns_)), dtype=bool)
        for j, col in enumerate(self.numeric_columns_):
            raw = _numeric_column(frame[lookup[col]], col)
            absent[:, j] = ~np.isfinite(raw)
            scaled = (raw - self.numeric_mean_[j]) / self.numeric_std_[j]
            numeric[:, j] = np.where(absent[:, j], 0.0, scaled)
        categorical = np.zeros((n, len(self.categories_)), dtype=np.int64)
        for j, (col, vocab) in enumerate(self.categories_.items()):
            index = {key: i + 2 for i, key in enumerate(vocab)}
            keys = [category_key(v) for v in frame[lookup[col]].tolist()]
            categorical[:, j] = [0 if k is None else index.get(k, 1) for k in keys]
        return {"numeric": numeric, "numeric_missing": absent, "categorical": categorical}

    def transform_genomics(self, adata: Any) -> np.ndarray:
        """AnnData -> float32 ``[n_obs, G]`` over the kept genes, transformed and scaled (NaN -> 0 = mean)."""
        self._check_fitted()
        index = pd.Index([str(g) for g in adata.var_names]).get_indexer(self.genes_)
        if (index < 0).any():
            lost = [g for g, i in zip(self.genes_, index, strict=True) if i < 0]
            raise ValueError(f"genomics: {len(lost)} of {len(self.genes_)} fitted gene(s) are missing, "
                             f"e.g. {lost[:5]}")
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
                             f"sample(s) {empty[:5]} have total expression <= 0")
        return total

    def _transform_block(self, block: np.ndarray, library: np.ndarray | None, samples: list[str]) -> np.ndarray:
        if self.gene_transform is None:
            return block
        with np.errstate(invalid="ignore"):
            negative = np.nanmin(np.where(np.isnan(block), 0.0, block), axis=1) < 0 if block.size else []
        bad = [s for s, neg in zip(samples, negative, strict=True) if neg]
        if bad:
            raise ValueError(f"genomics: gene_transform={self.gene_transform!r} needs non-negative expression; "
                             f"sample(s) {bad[:5]} have negative values (already log-scaled? use None)")
        if library is not None:
            block = block / library[:, None] * 1e6
        return np.log1p(block)

    def transform_events(self, events: pd.DataFrame, index_time: pd.Series) -> dict[str, dict[str, Any]]:
        """Long event table -> per sample, the most recent ``max_events`` events, most recent first:
        ``codes`` int64, ``values`` float32, ``has_value`` bool, ``times`` float32 (days before the
        sample's ``index_time``), ``segments`` int64, ``code`` (raw codes), ``n_cut`` (events cut)."""
        self._check_fitted()
        # integer ids for samples and codes: sorting and grouping 10^6 events on strings would take seconds
        sample_of, sample_names = pd.factorize(events["sample_id"].astype(str).to_numpy())
        code_of, code_names = pd.factorize(events["code"].astype(str).to_numpy(), sort=True)  # id order = name order
        index_time = pd.Series(np.asarray(index_time, dtype=np.float64), index=index_time.index.astype(str))
        unknown = sorted(set(sample_names) - set(index_time.index))
        if unknown:
            raise ValueError(f"events: no index_time for sample(s) {unknown[:5]}")
        times = index_time.reindex(sample_names).to_numpy()[sample_of] - events["time"].to_numpy(dtype=np.float64)
        late = sorted(sample_names[np.unique(sample_of[times < 0])])
        if late:
            raise ValueError(f"events: sample(s) {late[:5]} have events after their index_time "
                             "(the Cohort excludes those; pass a Cohort)")
        unique_codes = pd.Series(code_names)
        vocab = {c: i + 2 for i, c in enumerate(self.code_vocab_)}
        code_idx = unique_codes.map(vocab).fillna(1).to_numpy(dtype=np.int64)[code_of]  # unknown / rare -> 1
        values = events["value"].to_numpy(dtype=np.float64) if "value" in events else np.full(len(code_of), np.nan)
        has = np.isfinite(values)
        if self.event_value_scaling:
            mean, std = self.event_default_stats_  # for codes without training values
            means = unique_codes.map({c: m for c, (m, _) in self.event_value_stats_.items()}).fillna(mean)
            stds = unique_codes.map({c: sd for c, (_, sd) in self.event_value_stats_.items()}).fillna(std)
            values = (values - means.to_numpy(dtype=np.float64)[code_of]) / stds.to_numpy(dtype=np.float64)[code_of]
        values = np.where(has, values, 0.0)
        segments = (events["segment"].to_numpy(dtype=np.int64) if "segment" in events
                    else np.zeros(len(code_of), dtype=np.int64))
        # most recent first, ties broken by code so the order never depends on the input row order
        order = np.lexsort((code_of, times, sample_of))
        out: dict[str, dict[str, Any]] = {}
        bounds = np.flatnonzero(np.diff(sample_of[order])) + 1
        for rows in np.split(order, bounds) if len(order) else []:
            kept = rows[: self.max_events]
            out[str(sample_names[sample_of[rows[0]]])] = {
                "codes": code_idx[kept], "values": values[kept].astype(np.float32), "has_value": has[kept],
                "times": times[kept].astype(np.float32), "segments": segments[kept],
                "code": code_names[code_of[kept]].tolist(), "n_cut": int(len(rows) - len(kept))}
        return out

    def label_index(self, label: Any) -> int:
        """Class index of one label into ``schema_["task"]["classes"]`` (ValueError if unseen)."""
        self._check_fitted()
        if self.task_ is None or self.task_["type"] != "classification":
            raise ValueError("label_index: the preprocessor was not fitted on a classification cohort")
        classes = self.task_["classes"]
        for i, c in enumerate(classes):
            if c == _jsonable(label) or category_key(c) == category_key(label):
                return i
        raise ValueError(f"label {label!r} was not seen at fit time; known classes are {classes}")

    # ------------------------------------------------------------------ compatibility
    def check_compatible(self, cohort: Any) -> None:
        """Raise ``ValueError`` naming every way ``cohort`` differs from the fitted schema."""
        self._check_fitted()
        problems = []
        unseen = [m for m in cohort.modalities if m not in self.modalities_]
        if unseen:
            problems.append(f"modality {unseen} not seen at fit time (fitted on {self.modalities_})")
        if "clinical" in self.modalities_ and cohort.clinical is not None:
            have = {str(c) for c in cohort.clinical.columns}
            lost = [c for c in [*self.numeric_columns_, *self.categories_] if c not in have]
            if lost:
                problems.append(f"clinical: missing column(s) {lost}")
        if "genomics" in self.modalities_ and cohort.genomics is not None:
            have = {str(g) for g in cohort.genomics.var_names}
            lost = [g for g in self.genes_ if g not in have]
            if lost:
                problems.append(f"genomics: {len(lost)} of {len(self.genes_)} fitted gene(s) missing, e.g. {lost[:5]}")
        if "images" in self.modalities_ and cohort.images is not None:
            images, want = cohort.images, self.image_schema_
            if images.kind != want["kind"]:
                problems.append(f"images: kind {images.kind!r}, fitted on {want['kind']!r}")
            elif want["kind"] == "features" and int(images.feature_dim) != want["feature_dim"]:
                problems.append(f"images: feature dim {images.feature_dim}, fitted on {want['feature_dim']}")
            elif want["kind"] == "pixels":
                shape, fitted = tuple(int(v) for v in images.pixel_shape), (want["channels"], want["height"],
                                                                          want["width"])
                if shape != fitted:
                    problems.append(f"images: pixel shape (C, H, W) {shape}, fitted on {fitted}")
        problems.extend(self._task_problems(cohort))
        if problems:
            raise ValueError("cohort is not compatible with the fitted preprocessor: " + "; ".join(problems))

    def _task_problems(self, cohort: Any) -> list[str]:
        task = getattr(cohort, "task", None)
        if task is None or self.task_ is None:
            return []
        if task != self.task_["type"]:
            return [f"task: cohort has {task!r} targets, fitted on {self.task_['type']!r}"]
        if task == "classification":
            known = {category_key(c) for c in self.task_["classes"]}
            unseen = [str(s) for s, v in cohort.labels.items() if category_key(v) not in known]
            if unseen:
                known_classes = self.task_["classes"]
                return [f"labels: sample(s) {unseen[:5]} have classes not seen at fit time (known: {known_classes})"]
        return []

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: constructor parameters plus, when fitted, every fitted statistic."""
        state: dict[str, Any] = {"format": FORMAT, "version": 1, "params": self.get_params(), "fitted": None}
        if not self.is_fitted:
            return state
        fitted: dict[str, Any] = {"modalities": list(self.modalities_), "task": self.task_}
        if "clinical" in self.modalities_:
            fitted["clinical"] = {"numeric": list(self.numeric_columns_), "mean": list(self.numeric_mean_),
                                  "std": list(self.numeric_std_), "categories": dict(self.categories_)}
        if "genomics" in self.modalities_:
            fitted["genomics"] = {"genes": list(self.genes_), "mean": list(self.gene_mean_), "std": list(self.gene_std_),
                                  "gene_sets": self.gene_sets_, "dropped_gene_sets": list(self.dropped_gene_sets_),
                                  "n_genes_in": self.n_genes_in_}
        if "events" in self.modalities_:
            fitted["events"] = {"vocab": list(self.code_vocab_), "value_stats": dict(self.event_value_stats_),
                                "default_stats": list(self.event_default_stats_),
                                "has_values": self.events_have_values_, "n_rare_codes": self.n_rare_codes_}
        if "images" in self.modalities_:
            fitted["images"] = dict(self.image_schema_)
        state["fitted"] = fitted
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Preprocessor:
        """Rebuild a preprocessor from :meth:`to_dict` output (transforms are identical)."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"not a saved Preprocessor (expected 'format': {FORMAT!r})")
        self = cls(**state["params"])
        fitted = state.get("fitted")
        if fitted is None:
            return self
        self.modalities_ = list(fitted["modalities"])
        self.task_ = fitted["task"]
        if "clinical" in fitted:
            c = fitted["clinical"]
            self.numeric_columns_, self.numeric_mean_, self.numeric_std_ = c["numeric"], c["mean"], c["std"]
            self.categories_ = {k: list(v) for k, v in c["categories"].items()}
        if "genomics" in fitted:
            g = fitted["genomics"]
            self.genes_, self.gene_mean_, self.gene_std_ = g["genes"], g["mean"], g["std"]
            self.gene_sets_, self.dropped_gene_sets_, self.n_genes_in_ = (g["gene_sets"], g["dropped_gene_sets"],
                                                                          g["n_genes_in"])
        if "events" in fitted:
            e = fitted["events"]
            self.code_vocab_, self.event_value_stats_ = e["vocab"], e["value_stats"]
            self.event_default_stats_, self.events_have_values_ = e["default_stats"], e["has_values"]
            self.n_rare_codes_ = e["n_rare_codes"]
        if "images" in fitted:
            self.image_schema_ = dict(fitted["images"])
        self._schema = self._build_schema()
        return self

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON atomically (temp file + ``os.replace``); returns the path."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)  # strict JSON: a NaN statistic is a bug
        return write_text_atomic(path, text)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Preprocessor:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _numeric_column(series: pd.Series, name: str) -> np.ndarray:
    """Float64 values of a numeric clinical column; text that is not a number is an error, not NaN."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = series[np.isnan(values) & series.notna().to_numpy()]
    if len(bad):
        raise ValueError(f"clinical column {name!r} is numeric but sample(s) {[str(s) for s in bad.index[:5]]} "
                         f"hold non-numeric values {bad.tolist()[:5]}; declare it categorical via clinical_types")
    return values


__all__ = ["GENE_TRANSFORMS", "NOT_FITTED", "NotFittedError", "Preprocessor", "category_key"]
