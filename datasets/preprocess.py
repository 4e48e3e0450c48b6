"""Leakage-free preprocessing: every statistic is fitted on the training cohort only, then applied anywhere.

:class:`Preprocessor` composes one fitted :class:`~clinfuse.datasets.modalities.ModalityPreprocessor` per
modality the training cohort holds, as scikit-learn's ``ColumnTransformer`` composes transformers: each
modality module says what it learns (clinical scalers and vocabularies, the kept genes, the event code
vocabulary, the image format); the Preprocessor adds the task (its type and classes).

It saves as JSON only (:meth:`Preprocessor.to_json`, :meth:`Preprocessor.from_json`) so that a saved model
carries its data schema without pickle, and :meth:`Preprocessor.check_compatible` says what differs when new
data do not match it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import write_text_atomic
from .modalities import MODALITY_REGISTRY, NOT_FITTED, ModalityPreprocessor, NotFittedError, get_modality
from .modalities.genomics import GENE_TRANSFORMS
from .statistics import category_key, to_jsonable
from .validation import format_ids

FORMAT = "clinfuse.Preprocessor"


class Preprocessor:
    """Fits scalers, vocabularies and gene selection on training samples; turns cohorts into model inputs.

    Args:
        top_genes: keep this many most variable genes (after ``gene_transform``); ``None`` keeps all, and
            all are kept when the cohort has fewer.
        gene_transform: ``None``, ``"log1p"`` (log(1 + x)) or ``"cpm_log1p"`` (counts per million, then
            log1p).
        scale_genes: standardise each kept gene with its training mean / std.
        min_code_count: event codes seen fewer times than this in training map to the unknown code (1).
        max_events: keep at most this many most recent events per sample (the rest are counted in ``n_cut``).
        event_value_scaling: standardise event values per code with training mean / std.
        clinical_types: column -> ``"numeric"`` | ``"categorical"``, overriding the cohort's detected types.
        modality_params: modality -> keywords of its preprocessor, for a registered modality whose keywords
            are not among the above (``{"proteomics": {"scale": False}}``).

    Fitted attributes: ``modalities_``, ``task_``, ``preprocessors_`` (modality -> its fitted preprocessor)
    and, read through from those, each modality's own (``numeric_columns_``, ``genes_``, ``code_vocab_``,
    ...).
    """

    def __init__(self, *, top_genes: int | None = 2000, gene_transform: str | None = None,
                 scale_genes: bool = True, min_code_count: int = 1, max_events: int = 8192,
                 event_value_scaling: bool = True, clinical_types: dict[str, str] | None = None,
                 modality_params: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.top_genes = top_genes
        self.gene_transform = gene_transform
        self.scale_genes = scale_genes
        self.min_code_count = min_code_count
        self.max_events = max_events
        self.event_value_scaling = event_value_scaling
        self.clinical_types = clinical_types
        self.modality_params = (
            None if modality_params is None else {str(m): dict(p) for m, p in modality_params.items()}
        )
        for m in self.modality_params or {}:
            get_modality(m)
        # each modality's preprocessor validates (and normalises) its keywords now, as before fitting
        for modality in MODALITY_REGISTRY:
            part = self._make(modality.name)
            for name in part.params:
                if name in self._own_params():
                    setattr(self, name, getattr(part, name))

    @staticmethod
    def _own_params() -> tuple[str, ...]:
        return ("top_genes", "gene_transform", "scale_genes", "min_code_count", "max_events",
                "event_value_scaling", "clinical_types")

    def _make(self, modality: str) -> ModalityPreprocessor:
        """An unfitted preprocessor of ``modality`` with its keywords taken from this one."""
        m = get_modality(modality)
        own = {k: getattr(self, k) for k in m.preprocessor_class.params if k in self._own_params()}
        return m.make_preprocessor(**own, **(self.modality_params or {}).get(modality, {}))

    def get_params(self, deep: bool = True) -> dict[str, Any]:  # deep: scikit-learn signature
        params = {k: getattr(self, k) for k in self._own_params()}
        if self.modality_params is not None:  # only when used, so files saved without it stay identical
            params["modality_params"] = self.modality_params
        return params

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"Preprocessor({params})"

    def __getattr__(self, name: str) -> Any:
        # fitted attributes of the per-modality parts read through (``preprocessor.genes_``)
        if name.endswith("_") and not name.startswith("__"):
            if "_schema" not in self.__dict__:
                raise NotFittedError(NOT_FITTED)
            for part in self.__dict__.get("preprocessors_", {}).values():
                if name in vars(part):
                    return vars(part)[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
        self.modalities_ = [m for m in MODALITY_REGISTRY.names() if m in cohort.modalities]
        self.preprocessors_ = {m: self._make(m).fit(getattr(cohort, m), cohort) for m in self.modalities_}
        task = getattr(cohort, "task", None)
        if task == "classification":
            self.task_ = {"type": "classification", "classes": [to_jsonable(c) for c in cohort.classes]}
        elif task == "survival":
            self.task_ = {"type": "survival"}
        else:
            self.task_ = None
        self._schema = self._build_schema()
        return self

    def _build_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {m: self.preprocessors_[m].schema() for m in self.modalities_}
        schema["task"] = None if self.task_ is None else dict(self.task_)
        return schema

    # ------------------------------------------------------------------ transforms
    def transform(self, modality: str, data: Any, *context: Any) -> Any:
        """``modality``'s data -> its model inputs, by its fitted preprocessor (``context``: e.g. index
        times)."""
        self._check_fitted()
        if modality not in self.preprocessors_:
            raise ValueError(f"{modality}: not seen at fit time (fitted on {self.modalities_})")
        return self.preprocessors_[modality].transform(data, *context)

    def transform_clinical(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Rows of ``frame`` -> ``numeric`` float32 ``[n, Kn]`` (0.0 where missing), ``numeric_missing``
        bool ``[n, Kn]`` and ``categorical`` int64 ``[n, Kc]`` (0 missing, 1 unknown, 2.. vocabulary)."""
        return self.transform("clinical", frame)

    def transform_genomics(self, adata: Any) -> np.ndarray:
        """AnnData -> float32 ``[n_obs, G]`` over the kept genes, transformed and scaled (NaN -> 0 = mean)."""
        return self.transform("genomics", adata)

    def transform_events(self, events: pd.DataFrame, index_time: pd.Series) -> dict[str, dict[str, Any]]:
        """Long event table -> per sample, the most recent ``max_events`` events, most recent first (see
        :meth:`clinfuse.datasets.modalities.events.EventsPreprocessor.transform`)."""
        return self.transform("events", events, index_time)

    def label_index(self, label: Any) -> int:
        """Class index of one label into ``schema_["task"]["classes"]`` (ValueError if unseen)."""
        self._check_fitted()
        if self.task_ is None or self.task_["type"] != "classification":
            raise ValueError("label_index: the preprocessor was not fitted on a classification cohort")
        classes = self.task_["classes"]
        for i, c in enumerate(classes):
            if c == to_jsonable(label) or category_key(c) == category_key(label):
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
        for m in self.modalities_:
            data = getattr(cohort, m, None)
            if data is not None:
                problems.extend(self.preprocessors_[m].check_compatible(data))
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
                return [
                    (f"labels: sample(s) {format_ids(unseen)} have classes not seen at fit time (known: "
                    f"{known_classes})")
                ]
        return []

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: constructor parameters plus, when fitted, every fitted statistic (one entry per
        modality: its preprocessor's ``state()``)."""
        state: dict[str, Any] = {"format": FORMAT, "version": 1, "params": self.get_params(), "fitted": None}
        if not self.is_fitted:
            return state
        fitted: dict[str, Any] = {"modalities": list(self.modalities_), "task": self.task_}
        fitted.update({m: self.preprocessors_[m].state() for m in self.modalities_})
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
        self.preprocessors_ = {}
        for m in self.modalities_:
            part = self._make(m)
            self.preprocessors_[m] = type(part).from_state(fitted[m], **part.get_params())
        self._schema = self._build_schema()
        return self

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON atomically (temp file + ``os.replace``); returns the path."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)  # strict JSON: a NaN statistic is a bug
        return write_text_atomic(path, text)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Preprocessor:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


__all__ = ["GENE_TRANSFORMS", "NOT_FITTED", "NotFittedError", "Preprocessor", "category_key"]
