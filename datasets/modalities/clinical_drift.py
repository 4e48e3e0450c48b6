"""What a clinical table being predicted does differently from the training table, said as warnings.

Nothing here stops a prediction (missing values are the trained case, an unseen category is the trained
"unknown" index); it is recorded so that a blank column, a new level or a change of unit is not silent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..statistics import category_key
from ..validation import format_ids

SCALE_SDS = 10.0
"""A numeric column whose median lies more than this many training standard deviations from the training
mean is reported (age in days instead of years: thousands of sds)."""


def clinical_warnings(pre: Any, frame: pd.DataFrame) -> list[str]:
    """Warnings about ``frame`` for the fitted ``ClinicalPreprocessor`` ``pre`` (see the module docstring)."""
    have = {str(c): c for c in frame.columns}
    fitted = [*pre.numeric_columns_, *pre.categories_]
    out = []
    absent = [c for c in fitted if c not in have]
    if absent:
        out.append(f"clinical: column(s) {format_ids(absent)} seen at fit time are absent: treated as "
                   "missing for every sample")
    blank = [c for c in fitted if c in have and frame[have[c]].isna().all()]
    if blank:
        out.append(f"clinical: column(s) {format_ids(blank)} have no value in this cohort: treated as "
                   "missing")
    unused = [c for c in have if c not in fitted]
    if unused:
        out.append(f"clinical: column(s) {format_ids(unused)} were not seen at fit time and are not used")
    for col, vocab in pre.categories_.items():
        if col not in have:
            continue
        known = set(vocab)
        values = frame[have[col]]
        keys = pd.Series([category_key(v) for v in values.tolist()], index=values.index, dtype=object)
        new = keys.notna() & ~keys.isin(known)
        if new.any():
            levels = list(dict.fromkeys(values[new].tolist()))
            out.append(f"clinical: column {col!r} has level(s) {format_ids(levels)} not seen in training "
                       f"(sample(s) {format_ids(values.index[new])}): treated as an unknown category")
    for col, mean, std in zip(pre.numeric_columns_, pre.numeric_mean_, pre.numeric_std_, strict=True):
        if col not in have:
            continue
        values = pd.to_numeric(frame[have[col]], errors="coerce").to_numpy(np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        median = float(np.median(values))
        if abs(median - mean) > SCALE_SDS * std:
            out.append(f"clinical: column {col!r} has median {median:.4g} here but mean {mean:.4g} (sd "
                       f"{std:.4g}) in training, {abs(median - mean) / std:.0f} sds away: a change of unit "
                       "or scale? the values are used as given")
    return out
