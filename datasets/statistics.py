"""Small helpers shared by the fitted preprocessors: canonical category keys, JSON values, robust mean / std.

:func:`to_jsonable` is the one converter to plain JSON types; ``clinfuse.fusion`` saves models with it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch


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


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tensors, tuples and paths -> plain JSON types (NaN -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """(mean, std) of the finite values; (0, 1) when there are none, std 1 when constant."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    mean, std = float(values.mean()), float(values.std())
    return mean, (std if std > 1e-12 else 1.0)
