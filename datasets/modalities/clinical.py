"""The clinical modality: a table of samples x variables (numeric and categorical columns).

Input: a DataFrame indexed by sample id, NaN = missing; ``clinical_types`` overrides the detected column
types. Fitted: the mean / std of each numeric column over its observed values and each categorical column's
vocabulary (``0`` = missing, ``1`` = unknown category, ``2..`` = vocabulary index + 2). One token per column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..batch import ModalityBatch
from ..statistics import category_key, mean_std, natural_key
from ..validation import format_ids, indexed_frame
from .base import Modality, ModalityPreprocessor, Normalised, TableReader
from .clinical_drift import clinical_warnings

CLINICAL_TYPES = ("numeric", "categorical")

CATEGORICAL_MAX_UNIQUE = 5
"""An object column whose values all parse as numbers is numeric only with more unique values than this."""


def normalise_clinical(
    clinical: Any, types: dict[str, str] | None
) -> tuple[pd.DataFrame, dict[str, str], list[dict[str, Any]]]:
    """Clinical table with str index, numeric columns as float64, and the detected column types.

    A column is categorical when its dtype is object/string/category/bool, unless all its values parse as
    numbers and it has more than :data:`CATEGORICAL_MAX_UNIQUE` distinct values; numeric dtypes are numeric.
    ``types`` overrides the detection per column. Rows with no value at all are dropped (the sample does not
    have clinical data) and recorded in the returned ``excluded`` list.
    """
    df = indexed_frame(clinical, what="clinical")
    if isinstance(df, pd.Series):
        df = df.to_frame()
    df.columns = [str(c) for c in df.columns]
    if pd.Index(df.columns).has_duplicates:
        raise ValueError(f"clinical: duplicated column(s) {format_ids(df.columns[df.columns.duplicated()])}")
    if df.shape[1] == 0:
        raise ValueError("clinical: the table has no column; expected at least one clinical variable")
    types = {str(k): v for k, v in (types or {}).items()}
    unknown = [c for c in types if c not in df.columns]
    if unknown:
        raise ValueError(f"clinical: clinical_types names unknown column(s) {format_ids(unknown)}")
    bad = {c: t for c, t in types.items() if t not in ("numeric", "categorical")}
    if bad:
        raise ValueError(f"clinical: clinical_types values must be 'numeric' or 'categorical', got {bad}")
    out_types: dict[str, str] = {}
    for col in df.columns:
        s = df[col]
        kind = types.get(col) or _detect(s)
        if kind == "numeric":
            if pd.api.types.is_bool_dtype(s):
                s = s.astype(float)
            num = pd.to_numeric(s, errors="coerce")
            bad_rows = s.index[num.isna() & s.notna()]
            if len(bad_rows):
                raise ValueError(
                    f"clinical: column {col!r} is numeric but sample(s) {format_ids(bad_rows)} hold "
                    "non-numbers "
                    f"(e.g. {s[bad_rows[0]]!r}); fix them or declare the column 'categorical'"
                )
            num = num.astype(np.float64)
            inf_rows = num.index[np.isinf(num.to_numpy())]
            if len(inf_rows):
                raise ValueError(
                    f"clinical: column {col!r} is infinite for sample(s) {format_ids(inf_rows)}; "
                    "expected finite numbers or NaN for missing"
                )
            df[col] = num
        else:
            df[col] = s.astype(object).where(s.notna(), np.nan)
        out_types[col] = kind
    empty = df.index[df.isna().all(axis=1)]
    excluded = []
    if len(empty):
        excluded.append(
            {
                "what": "clinical rows with no value",
                "modality": "clinical",
                "sample_id": None,
                "count": len(empty),
                "reason": f"all columns NaN, so these samples have no clinical data: {format_ids(empty)}",
            }
        )
        df = df.drop(index=empty)
    return df, out_types, excluded


def check_columns_have_values(frame: pd.DataFrame | None) -> None:
    """``ValueError`` naming the columns with no value at all: nothing to learn their statistics from. Checked
    when fitting only; in a cohort being predicted a blank column is missing data, the trained case."""
    all_nan = [] if frame is None else [c for c in frame.columns if frame[c].isna().all()]
    if all_nan:
        raise ValueError(
            f"clinical: column(s) {format_ids(all_nan)} have no value for any sample (all NaN); "
            "drop them or provide values"
        )


def _detect(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype):
        return "categorical"
    if pd.api.types.is_numeric_dtype(s):
        return "numeric"
    values = s.dropna()
    num = pd.to_numeric(values, errors="coerce")
    if num.notna().all() and values.nunique() > CATEGORICAL_MAX_UNIQUE:
        return "numeric"
    return "categorical"


def _numeric_column(series: pd.Series, name: str) -> np.ndarray:
    """Float64 values of a numeric clinical column; text that is not a number is an error, not NaN."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = series[np.isnan(values) & series.notna().to_numpy()]
    if len(bad):
        raise ValueError(
            f"clinical column {name!r} is numeric but sample(s) {format_ids(bad.index)} "
            f"hold non-numeric values {format_ids(bad.tolist())}; declare it categorical via "
            "clinical_types"
        )
    return values


class ClinicalPreprocessor(ModalityPreprocessor):
    """Standardises numeric columns and indexes categories with training statistics.

    Args:
        clinical_types: column -> ``"numeric"`` | ``"categorical"``, overriding the cohort's detected types.
    """

    params = ("clinical_types",)

    def __init__(self, *, clinical_types: Mapping[str, str] | None = None) -> None:
        bad = {c: t for c, t in (clinical_types or {}).items() if t not in CLINICAL_TYPES}
        if bad:
            raise ValueError(f"clinical_types values must be 'numeric' or 'categorical'; got {bad}")
        self.clinical_types = (
            None if clinical_types is None else {str(k): v for k, v in clinical_types.items()}
        )

    def _fit(self, frame: pd.DataFrame, cohort: Any) -> None:
        check_columns_have_values(frame)
        columns = [str(c) for c in frame.columns]
        types = {str(k): v for k, v in (getattr(cohort, "clinical_types", None) or {}).items()}
        unknown = sorted(set(self.clinical_types or {}) - set(columns))
        if unknown:
            raise ValueError(f"clinical_types names column(s) {unknown} that the clinical table lacks; "
                             f"its columns are {columns}")
        types.update(self.clinical_types or {})
        lookup = dict(zip(columns, frame.columns, strict=True))
        self.numeric_columns_ = [c for c in columns if types.get(c, "numeric") == "numeric"]
        self.numeric_mean_, self.numeric_std_ = [], []
        for col in self.numeric_columns_:
            mean, std = mean_std(_numeric_column(frame[lookup[col]], col))
            self.numeric_mean_.append(mean)
            self.numeric_std_.append(std)
        self.categories_ = {}
        for col in columns:
            if types.get(col, "numeric") == "categorical":
                keys = {category_key(v) for v in frame[lookup[col]].tolist()} - {None}
                self.categories_[col] = sorted(keys, key=natural_key)

    def transform(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Rows of ``frame`` -> ``numeric`` float32 ``[n, Kn]`` (0.0 where missing), ``numeric_missing``
        bool ``[n, Kn]`` and ``categorical`` int64 ``[n, Kc]`` (0 missing, 1 unknown, 2.. vocabulary)."""
        self._check_fitted()
        have = {str(c) for c in frame.columns}
        absent_columns = [c for c in [*self.numeric_columns_, *self.categories_] if c not in have]
        # a column the table lacks is missing for every sample (the trained case); data_warnings says so
        frame = frame.assign(**{c: np.nan for c in absent_columns}) if absent_columns else frame
        lookup = {str(c): c for c in frame.columns}
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

    def schema(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric_columns_),
            "categorical": {c: list(v) for c, v in self.categories_.items()},
        }

    def state(self) -> dict[str, Any]:
        return {"numeric": list(self.numeric_columns_), "mean": list(self.numeric_mean_),
                "std": list(self.numeric_std_), "categories": dict(self.categories_)}

    def _load(self, state: dict[str, Any]) -> None:
        self.numeric_columns_, self.numeric_mean_, self.numeric_std_ = (
            state["numeric"],
            state["mean"],
            state["std"],
        )
        self.categories_ = {k: list(v) for k, v in state["categories"].items()}

    def data_warnings(self, frame: pd.DataFrame, cohort: Any) -> list[str]:
        return clinical_warnings(self, frame)

    def missing_values(self, frame: pd.DataFrame) -> dict[str, list[str]]:
        """Sample -> the fitted columns it has no value of (NaN, or the table lacks the column)."""
        columns = [*self.numeric_columns_, *self.categories_]
        have = {str(c): c for c in frame.columns}
        blank = pd.DataFrame({c: frame[have[c]].isna().to_numpy() if c in have else True for c in columns},
                             index=frame.index.astype(str))
        return {s: [c for c, b in zip(columns, row, strict=True) if b]
                for s, row in zip(blank.index, blank.to_numpy(), strict=True) if row.any()}


class ClinicalModality(Modality):
    """Clinical variables: one token per column (numeric first, then categorical, in schema order)."""

    name = "clinical"
    token_kind = "feature"
    preprocessor_class = ClinicalPreprocessor
    options = ("clinical_types",)
    noun = "clinical row"
    holds_targets = True
    data_keys: ClassVar[dict[str, str]] = {
        "clinical": "clinical table (CSV, TSV or Parquet), one row per sample",
        "clinical_columns": "clinical columns to use (default: all but the id, target and group columns)",
        "drop_columns": "clinical columns not to use as features",
        "clinical_types": "mapping column -> numeric | categorical (overrides detection)",
    }

    def normalise(self, data: Any, options: Mapping[str, Any]) -> Normalised:
        frame, types, excluded = normalise_clinical(data, dict(options.get("clinical_types") or {}))
        return Normalised(frame, {"clinical_types": types}, excluded)

    def attribute_defaults(self) -> dict[str, Any]:
        return {"clinical_types": {}}

    def check_options_without_data(self, options: Mapping[str, Any]) -> None:
        if options.get("clinical_types"):
            raise ValueError("clinical: clinical_types given without a clinical table")

    def sample_ids(self, data: pd.DataFrame) -> list[str]:
        return list(data.index)

    def subset(self, data: pd.DataFrame, ids: list[str]) -> pd.DataFrame | None:
        return data.loc[ids] if ids else None

    def summary_lines(self, data: pd.DataFrame, cohort: Any) -> list[str]:
        types = cohort.clinical_types
        n_num = sum(t == "numeric" for t in types.values())
        lines = [(f"  clinical: {data.shape[1]} columns ({n_num} numeric, {data.shape[1] - n_num} "
                  "categorical); missing values per column:")]
        for col in data.columns:
            na = int(data[col].isna().sum())
            lines.append(f"    {col} [{types[col]}]: {na} / {len(data)} missing "
                         f"({100 * na / max(len(data), 1):.0f}%)")
        return lines

    def shape(self, data: pd.DataFrame) -> list[int]:
        return list(data.shape)

    def default_encoder(self, schema_entry: Mapping[str, Any]) -> str:
        return "feature_tokens"

    def reader(self, data: pd.DataFrame, cohort: Any, preprocessor: ClinicalPreprocessor) -> TableReader:
        return TableReader({str(s): i for i, s in enumerate(data.index)}, preprocessor.transform(data))

    def collate(self, items: Sequence[dict[str, np.ndarray] | None], schema_entry: Mapping[str, Any],
                present: torch.Tensor) -> ModalityBatch:
        columns = [*schema_entry["numeric"], *schema_entry["categorical"]]
        B, kn, kc = len(items), len(schema_entry["numeric"]), len(schema_entry["categorical"])
        numeric = np.zeros((B, kn), dtype=np.float32)
        missing = np.ones((B, kn), dtype=bool)  # an absent sample has no observed value
        categorical = np.zeros((B, kc), dtype=np.int64)
        for b, item in enumerate(items):
            if item is not None:
                numeric[b], missing[b], categorical[b] = (
                    item["numeric"],
                    item["numeric_missing"],
                    item["categorical"],
                )
        mask = present[:, None].expand(B, kn + kc).clone()
        names = [list(columns) if p else [""] * len(columns) for p in present.tolist()]
        tensors = {"numeric": torch.from_numpy(numeric), "numeric_missing": torch.from_numpy(missing),
                   "categorical": torch.from_numpy(categorical)}
        return ModalityBatch(self.name, mask, present, tensors, names)

    # ------------------------------------------------------------------ files
    def read_files(self, source: Any) -> dict[str, Any]:
        frame = source.table("clinical")
        return {"clinical": _features(source.spec, frame, source.non_features("clinical")),
                "clinical_types": source.spec.get("clinical_types")}

    def table_columns(self, data: pd.DataFrame, cohort: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
        return data, {"clinical_types": dict(cohort.clinical_types)}


def _features(spec: Mapping[str, Any], clinical: pd.DataFrame, target_cols: list[str]) -> pd.DataFrame:
    """The feature columns of the clinical table: ``clinical_columns``, else all but targets and
    ``drop_columns``."""
    if "clinical_columns" in spec:
        cols = list(spec["clinical_columns"])
        missing = [c for c in cols if c not in clinical.columns]
        if missing:
            raise ValueError(f"data.clinical_columns: {missing} not in the clinical table "
                             f"(columns: {list(clinical.columns)})")
        clash = [c for c in cols if c in target_cols]
        if clash:
            raise ValueError(f"data.clinical_columns: {clash} are target/group columns, not features")
        return clinical[cols]
    drop = [*target_cols, *spec.get("drop_columns", [])]
    missing = [c for c in spec.get("drop_columns", []) if c not in clinical.columns]
    if missing:
        raise ValueError(
            f"data.drop_columns: {missing} not in the clinical table (columns: {list(clinical.columns)})"
        )
    return clinical.drop(columns=[c for c in drop if c in clinical.columns])
