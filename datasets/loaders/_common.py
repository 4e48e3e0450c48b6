"""Helpers shared by the loaders: path resolution and ``excluded`` records."""

from __future__ import annotations

import os
from pathlib import Path


def note(what: str, modality: str | None, count: int, reason: str, sample_id: str | None = None) -> dict:
    """One ``cohort.excluded`` record (keys as in the Cohort contract)."""
    return {"what": what, "modality": modality, "sample_id": sample_id, "count": int(count), "reason": reason}


def resolve(path: str | os.PathLike, filename: str, loader: str) -> Path:
    """``path`` itself when it is a file, else ``path/filename``; a clear error when neither exists."""
    p = Path(path)
    if p.is_dir():
        p = p / filename
    if not p.is_file():
        raise ValueError(f"{loader}: no file at {str(p)!r}; pass the path of {filename!r} or of its folder")
    return p
