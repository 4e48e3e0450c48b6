"""Small helpers shared by the fitted preprocessors: canonical category keys and robust mean / std."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


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


def natural_key(key: str) -> tuple[int, float, str]:
    """Sort numeric-looking categories numerically ("2" < "10"), then the rest alphabetically."""
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """(mean, std) of the finite values; (0, 1) when there are none, std 1 when constant."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    mean, std = float(values.mean()), float(values.std())
    return mean, (std if std > 1e-12 else 1.0)
