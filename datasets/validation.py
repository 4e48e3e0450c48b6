"""Shared input checks for the data layer.

Every check raises ``ValueError`` / ``TypeError`` whose message names the modality, the offending sample
id(s) or column(s) (the first few plus the total count) and what was expected, so that a user can find the
bad rows without a debugger.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

MAX_SHOWN = 5
"""How many offending ids an error message lists before summarising the rest as a count."""


def format_ids(ids: Iterable[Any], limit: int = MAX_SHOWN) -> str:
    """``'a', 'b', 'c'`` or ``'a', 'b', ... (12 in total)`` for error messages."""
    ids = list(ids)
    shown = ", ".join(repr(str(i)) if not isinstance(i, str) else repr(i) for i in ids[:limit])
    if len(ids) > limit:
        return f"{shown}, ... ({len(ids)} in total)"
    return shown


def str_ids(ids: Iterable[Any], *, what: str) -> list[str]:
    """Ids converted to ``str``; a missing id (None/NaN) raises ``ValueError`` naming ``what``."""
    return str_id_array(ids, what=what).tolist()


def str_id_array(ids: Iterable[Any], *, what: str) -> np.ndarray:
    """Ids as an object array of ``str`` (vectorised: event tables have millions of rows)."""
    s = (
        ids
        if isinstance(ids, pd.Series)
        else pd.Series(list(ids) if not isinstance(ids, np.ndarray | pd.Index) else ids, dtype=object)
    )
    missing = s.isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"{what}: {int(missing.sum())} sample id(s) are missing (None/NaN); every row needs a sample id"
        )
    return s.astype(str).to_numpy(dtype=object)


def check_unique(ids: Sequence[str], *, what: str) -> None:
    """Raise ``ValueError`` naming the duplicated ids (after conversion to ``str``)."""
    s = pd.Index(ids)
    if s.has_duplicates:
        dups = list(dict.fromkeys(s[s.duplicated()]))
        raise ValueError(
            f"{what}: duplicated sample id(s) {format_ids(dups)}; expected one entry per sample "
            "(ids are compared as strings, so 1 and '1' are the same sample)"
        )


def indexed_frame(obj: Any, *, what: str) -> pd.DataFrame | pd.Series:
    """A copy of a DataFrame/Series whose index is converted to ``str`` and checked for duplicates."""
    if not isinstance(obj, pd.DataFrame | pd.Series):
        raise TypeError(
            f"{what}: expected a pandas DataFrame/Series indexed by sample id, got {type(obj).__name__}"
        )
    out = obj.copy()
    out.index = pd.Index(str_ids(out.index, what=what), name="sample_id")
    check_unique(list(out.index), what=what)
    return out


def to_days(values: pd.Series, *, what: str) -> np.ndarray:
    """Times as float days: numbers are taken as days; datetimes become days since 1970-01-01 (UTC-naive).

    Strings are parsed as datetimes. Anything else raises ``ValueError`` naming ``what``.
    """
    if pd.api.types.is_bool_dtype(values):
        raise TypeError(f"{what}: expected numbers (days) or datetimes, got booleans")
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64)
    if not pd.api.types.is_datetime64_any_dtype(values):
        num = pd.to_numeric(values, errors="coerce")
        if num.notna().sum() == values.notna().sum():  # numbers stored as text ("1.5") are days, not dates
            return num.to_numpy(dtype=np.float64)
    if pd.api.types.is_datetime64_any_dtype(values):
        dt = values
    else:
        try:
            with warnings.catch_warnings():  # "could not infer format": per-element parsing is what we want
                warnings.simplefilter("ignore", UserWarning)
                dt = pd.to_datetime(values)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{what}: expected numbers (days) or datetimes, could not parse the values ({err})"
            ) from err
    if getattr(dt.dt, "tz", None) is not None:
        dt = dt.dt.tz_convert("UTC").dt.tz_localize(None)
    ns = dt.to_numpy(dtype="datetime64[ns]")
    out = (ns - np.datetime64("1970-01-01T00:00:00", "ns")) / np.timedelta64(1, "D")
    out = out.astype(np.float64)
    out[np.isnat(ns)] = np.nan
    return out


# ---------------------------------------------------------------------- per-modality normalisation

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
    all_nan = [c for c in df.columns if df[c].isna().all()]
    if all_nan:
        raise ValueError(
            f"clinical: column(s) {format_ids(all_nan)} have no value for any sample (all NaN); "
            "drop them or provide values"
        )
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
                    f"clinical: column {col!r} is numeric but sample(s) {format_ids(bad_rows)} hold non-numbers "
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


def normalise_events(events: Any) -> pd.DataFrame:
    """Long event table with columns ``sample_id`` (str), ``time`` (float days), ``code`` (str), ``value``
    (float, NaN = none), ``segment`` (int >= 0), sorted by sample then time.

    The sample column may be called ``sample_id`` or ``patient_id``. Datetime (or datetime string) times
    become days since 1970-01-01. ``value`` must be numeric or parse as numbers (NaN/None = no value);
    text values raise: encode them into the code instead (e.g. ``"culture=positive"``).
    """
    if not isinstance(events, pd.DataFrame):
        raise TypeError(
            f"events: expected a long DataFrame (sample_id, time, code[, value, segment]), "
            f"got {type(events).__name__}"
        )
    id_col = (
        "sample_id"
        if "sample_id" in events.columns
        else "patient_id"
        if "patient_id" in events.columns
        else None
    )
    missing = [c for c in ("time", "code") if c not in events.columns]
    if id_col is None:
        missing.insert(0, "sample_id")
    if missing:
        raise ValueError(
            f"events: missing column(s) {missing}; expected sample_id (or patient_id), time, code"
            f"[, value, segment]; found {list(events.columns)}"
        )
    if len(events) == 0:
        raise ValueError("events: the table has no row; pass events=None when there are no events")
    ids = str_id_array(events[id_col].reset_index(drop=True), what="events")
    out = pd.DataFrame({"sample_id": ids})
    out["time"] = to_days(events["time"].reset_index(drop=True), what="events column 'time'")
    bad = out.index[~np.isfinite(out["time"].to_numpy())]
    if len(bad):
        raise ValueError(
            f"events: column 'time' is missing or infinite for {len(bad)} event(s) of sample(s) "
            f"{format_ids(dict.fromkeys(out.loc[bad, 'sample_id']))}; every event needs a time"
        )
    code = events["code"].reset_index(drop=True)
    if code.isna().any():
        rows = out.loc[code.isna(), "sample_id"]
        raise ValueError(
            f"events: column 'code' is missing for {len(rows)} event(s) of sample(s) "
            f"{format_ids(dict.fromkeys(rows))}; every event needs a code"
        )
    out["code"] = code.astype(str).to_numpy()
    if "value" in events.columns:
        raw = events["value"].reset_index(drop=True)
        if pd.api.types.is_bool_dtype(raw):
            raw = raw.astype(float)
        num = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & num.isna()
        if bad.any():
            raise ValueError(
                f"events: column 'value' holds {int(bad.sum())} non-numeric value(s) (e.g. {raw[bad].iloc[0]!r}, "
                f"sample(s) {format_ids(dict.fromkeys(out.loc[bad, 'sample_id']))}); expected numbers or NaN. "
                "Encode text values into the code instead"
            )
        num = num.astype(np.float64)
        if np.isinf(num.to_numpy()).any():
            rows = out.loc[np.isinf(num.to_numpy()), "sample_id"]
            raise ValueError(
                f"events: column 'value' is infinite for sample(s) {format_ids(dict.fromkeys(rows))}"
            )
        out["value"] = num.to_numpy()
    else:
        out["value"] = np.nan
    if "segment" in events.columns:
        seg = pd.to_numeric(events["segment"].reset_index(drop=True), errors="coerce")
        bad = seg.isna() | (seg < 0) | (seg != np.floor(seg))
        if bad.any():
            raise ValueError(
                f"events: column 'segment' must hold integers >= 0 (0 = current admission); "
                f"sample(s) {format_ids(dict.fromkeys(out.loc[bad, 'sample_id']))} do not"
            )
        out["segment"] = seg.astype(np.int64).to_numpy()
    else:
        out["segment"] = np.zeros(len(out), dtype=np.int64)
    # group by sample (in order of first appearance), time-sorted within a sample; lexsort is stable and
    # avoids a string sort, which dominates on million-row tables
    codes, _ = pd.factorize(out["sample_id"])
    order = np.lexsort((out["time"].to_numpy(), codes))
    return out.iloc[order].reset_index(drop=True)


def normalise_labels(labels: Any) -> pd.Series:
    """Label Series with str index; missing labels raise."""
    if isinstance(labels, pd.DataFrame):
        if labels.shape[1] != 1:
            raise TypeError(
                f"labels: expected a Series indexed by sample id, got a DataFrame with columns "
                f"{list(labels.columns)}"
            )
        labels = labels.iloc[:, 0]
    s = indexed_frame(labels, what="labels")
    bad = s.index[s.isna()]
    if len(bad):
        raise ValueError(
            f"labels: missing (NaN) label for sample(s) {format_ids(bad)}; every sample needs a label "
            "(drop unlabelled samples or leave targets out)"
        )
    s.name = "label"
    return s


def normalise_survival(survival: Any) -> pd.DataFrame:
    """Survival frame with str index, ``time`` float > 0 and ``event`` int 0/1."""
    df = indexed_frame(survival, what="survival")
    if isinstance(df, pd.Series) or not {"time", "event"} <= set(df.columns):
        cols = [df.name] if isinstance(df, pd.Series) else list(df.columns)
        raise ValueError(f"survival: expected columns 'time' and 'event', found {cols}")
    time = pd.to_numeric(df["time"], errors="coerce").astype(np.float64)
    bad = df.index[~(np.isfinite(time.to_numpy()) & (time.to_numpy() > 0))]
    if len(bad):
        raise ValueError(
            f"survival: column 'time' must be a finite number > 0; sample(s) {format_ids(bad)} have "
            f"{[df['time'][b] for b in bad[:MAX_SHOWN]]}"
        )
    ev = df["event"]
    evn = pd.to_numeric(ev.astype(float) if pd.api.types.is_bool_dtype(ev) else ev, errors="coerce")
    bad = df.index[~evn.isin([0, 1])]
    if len(bad):
        raise ValueError(
            f"survival: column 'event' must be 0 (censored) or 1 (event seen); sample(s) "
            f"{format_ids(bad)} have {[ev[b] for b in bad[:MAX_SHOWN]]}"
        )
    return pd.DataFrame({"time": time, "event": evn.astype(np.int64)}, index=df.index)


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
            f"genomics: infinite expression value(s) for sample(s) {format_ids(dict.fromkeys(obs[r] for r in rows))} "
            f"in gene(s) {format_ids(dict.fromkeys(var[c] for c in cols))}; expected finite numbers (NaN = missing)"
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
