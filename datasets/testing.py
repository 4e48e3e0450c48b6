"""Random schemas and :class:`ModalityBatch` objects that follow the batch contract exactly.

Used by the test suites of encoders and aggregators (and useful to anyone writing a new encoder): every
encoder can be built from ``random_schema(modality)`` with ``from_schema`` and fed
``random_modality_batch(...)`` with any bag lengths and any presence pattern. The batches are random
per-sample items, in the form the modalities' readers give them, padded by the modality's own ``collate``,
so that they are exactly what a :class:`~clinfuse.datasets.CohortDataset` would yield.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .batch import MODALITIES, ModalityBatch
from .modalities import get_modality
from .modalities.events import format_days_many


def random_schema(modality: str, *, image_kind: str = "features", seed: int = 0) -> dict[str, Any]:
    """A small schema entry for ``modality`` (see :mod:`clinfuse.datasets.batch` for the format)."""
    if modality == "clinical":
        return {"numeric": ["age", "size", "ki67"],
                "categorical": {"grade": ["1", "2", "3"], "er": ["neg", "pos"]}}
    if modality == "genomics":
        genes = [f"G{i}" for i in range(12)]
        return {"genes": genes, "gene_sets": {"setA": genes[:4], "setB": genes[4:9], "setC": genes[9:]}}
    if modality == "images":
        if image_kind == "features":
            return {"kind": "features", "feature_dim": 16}
        if image_kind == "pixels":
            return {"kind": "pixels", "channels": 3, "height": 16, "width": 16}
        raise ValueError(f"image_kind must be 'features' or 'pixels', got {image_kind!r}")
    if modality == "events":
        return {"vocab": [f"C{i}" for i in range(10)], "max_events": 64, "has_values": True}
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def random_modality_batch(
    modality: str,
    schema: dict[str, Any],
    *,
    lengths: Sequence[int] | None = None,
    present: Sequence[bool] | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> ModalityBatch:
    """A padded batch for ``modality`` that follows the contract, with random content.

    Args:
        lengths: per-sample token counts for variable-length modalities (images, events); ignored for
            clinical and genomics, whose token count is fixed by the schema.
        present: per-sample presence; a sample with ``present=False`` (or length 0) has an all-False mask.
        batch_size: B, when neither ``lengths`` nor ``present`` is given (default 3).
    """
    if modality not in _ITEM_MAKERS:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    rng = np.random.default_rng(seed)
    if batch_size is None:
        batch_size = len(lengths) if lengths is not None else len(present) if present is not None else 3
    if present is None:
        present = [True] * batch_size
    if lengths is None:
        lengths = [int(rng.integers(1, 9)) for _ in range(batch_size)]
    fixed = modality in ("clinical", "genomics")
    flags = [bool(p) and (fixed or int(n) > 0) for p, n in zip(present, lengths)]
    make = _ITEM_MAKERS[modality]
    items = [make(schema, rng, int(n)) if p else None for p, n in zip(flags, lengths)]
    return get_modality(modality).collate(items, schema, torch.tensor(flags, dtype=torch.bool))


# One sample's item, as the modality's reader gives it (see each modality's ``reader`` / ``transform``).
def _clinical_item(schema: dict[str, Any], rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    kn = len(schema["numeric"])
    missing = rng.random(kn) < 0.2
    numeric = np.where(missing, 0.0, rng.normal(size=kn)).astype(np.float32)
    codes = [int(rng.integers(0, len(v) + 2)) for v in schema["categorical"].values()]
    return {"numeric": numeric, "numeric_missing": missing, "categorical": np.array(codes, dtype=np.int64)}


def _genomics_item(schema: dict[str, Any], rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=len(schema["genes"])).astype(np.float32)


def _images_item(schema: dict[str, Any], rng: np.random.Generator, n: int) -> dict[str, Any]:
    if schema["kind"] == "features":
        data = rng.normal(size=(n, schema["feature_dim"]))
    else:
        data = rng.random((n, schema["channels"], schema["height"], schema["width"]))
    coords = (rng.integers(0, 50, size=(n, 2)) * 256).astype(np.float32)
    return {"data": data.astype(np.float32), "coords": coords, "positions": np.arange(n, dtype=np.int64),
            "slide_ids": ["s0"] * n, "names": [str(i) for i in range(n)]}


def _events_item(schema: dict[str, Any], rng: np.random.Generator, n: int) -> dict[str, Any]:
    vocab = list(schema["vocab"])
    codes = rng.integers(1, len(vocab) + 2, size=n).astype(np.int64)  # 1 = unknown, 2.. = the vocabulary
    has_value = rng.random(n) < 0.5
    values = np.where(has_value, rng.normal(size=n), 0.0).astype(np.float32)
    times = np.sort(rng.exponential(5.0, size=n)).astype(np.float32)  # most recent first
    raw = ["UNK" if c == 1 else vocab[c - 2] for c in codes.tolist()]
    return {"codes": codes, "values": values, "has_value": has_value, "times": times,
            "segments": np.zeros(n, dtype=np.int64), "code": raw, "n_cut": 0,
            "names": [f"{c}@{t}" for c, t in zip(raw, format_days_many(times), strict=True)]}


_ITEM_MAKERS = {"clinical": _clinical_item, "genomics": _genomics_item, "images": _images_item,
                "events": _events_item}
