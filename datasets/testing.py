"""Random schemas and :class:`ModalityBatch` objects that follow the batch contract exactly.

Used by the test suites of encoders and aggregators (and useful to anyone writing a new encoder): every
encoder can be built from ``random_schema(modality)`` with ``from_schema`` and fed
``random_modality_batch(...)`` with any bag lengths and any presence pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .batch import MODALITIES, ModalityBatch


def random_schema(modality: str, *, image_kind: str = "features", seed: int = 0) -> dict[str, Any]:
    """A small schema entry for ``modality`` (see :mod:`clinfuse.datasets.batch` for the format)."""
    if modality == "clinical":
        return {"numeric": ["age", "size", "ki67"], "categorical": {"grade": ["1", "2", "3"], "er": ["neg", "pos"]}}
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
    rng = np.random.default_rng(seed)
    if batch_size is None:
        batch_size = len(lengths) if lengths is not None else len(present) if present is not None else 3
    if present is None:
        present = [True] * batch_size
    if lengths is None:
        lengths = [int(rng.integers(1, 9)) for _ in range(batch_size)]
    present_t = torch.tensor([bool(p) and (modality in ("clinical", "genomics") or int(n) > 0)
                              for p, n in zip(present, lengths)], dtype=torch.bool)
    B = batch_size

    if modality == "clinical":
        num_cols, cat = list(schema["numeric"]), dict(schema["categorical"])
        kn, kc = len(num_cols), len(cat)
        numeric = torch.tensor(rng.normal(size=(B, kn)), dtype=torch.float32)
        missing = torch.tensor(rng.random((B, kn)) < 0.2)
        numeric = numeric.masked_fill(missing, 0.0)
        cats = [torch.tensor(rng.integers(0, len(v) + 2, size=B)) for v in cat.values()]
        categorical = torch.stack(cats, dim=1) if cats else torch.zeros(B, 0, dtype=torch.long)
        mask = present_t[:, None].expand(B, kn + kc).clone()
        names = [list(num_cols) + list(cat) if p else [""] * (kn + kc) for p in present_t.tolist()]
        tensors = {"numeric": numeric, "numeric_missing": missing, "categorical": categorical.long()}
        return ModalityBatch(modality, mask, present_t, tensors, names)

    if modality == "genomics":
        genes = list(schema["genes"])
        values = torch.tensor(rng.normal(size=(B, len(genes))), dtype=torch.float32)
        mask = present_t[:, None].expand(B, len(genes)).clone()
        names = [list(genes) if p else [""] * len(genes) for p in present_t.tolist()]
        meta: dict[str, Any] = {}
        if schema.get("gene_sets"):
            index = {g: i for i, g in enumerate(genes)}
            meta["gene_sets"] = {s: [index[g] for g in members if g in index] for s, members in schema["gene_sets"].items()}
        return ModalityBatch(modality, mask, present_t, {"values": values}, names, meta)

    n_real = [int(n) if p else 0 for n, p in zip(lengths, present_t.tolist())]
    T = max(max(n_real, default=0), 1)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(n_real):
        mask[b, :n] = True

    if modality == "images":
        position = torch.arange(T).expand(B, T).clone().masked_fill(~mask, 0)
        coords = torch.tensor(rng.integers(0, 50, size=(B, T, 2)) * 256, dtype=torch.float32)
        names = [[str(i) if i < n else "" for i in range(T)] for n in n_real]
        slide = [["" if i >= n else "s0" for i in range(T)] for n in n_real]
        tensors = {"coords": coords, "position": position}
        if schema["kind"] == "features":
            tensors["features"] = torch.tensor(rng.normal(size=(B, T, schema["feature_dim"])), dtype=torch.float32)
        else:
            c, h, w = schema["channels"], schema["height"], schema["width"]
            tensors["pixels"] = torch.tensor(rng.random((B, T, c, h, w)), dtype=torch.float32)
        for value in tensors.values():  # padding content is irrelevant, but keep it deterministic
            if value.dtype.is_floating_point:
                value[~mask] = 0.0
        return ModalityBatch(modality, mask, present_t, tensors, names, {"slide_id": slide})

    if modality == "events":
        vocab = list(schema["vocab"])
        codes = torch.tensor(rng.integers(1, len(vocab) + 2, size=(B, T))).masked_fill(~mask, 0)
        has_value = torch.tensor(rng.random((B, T)) < 0.5) & mask
        values = torch.tensor(rng.normal(size=(B, T)), dtype=torch.float32).masked_fill(~has_value, 0.0)
        times = torch.sort(torch.tensor(rng.exponential(5.0, size=(B, T)), dtype=torch.float32), dim=1).values
        times = times.masked_fill(~mask, 0.0)
        segments = torch.zeros(B, T, dtype=torch.long)
        raw = [[("UNK" if c == 1 else vocab[c - 2]) if m else "" for c, m in zip(row, mrow)]
               for row, mrow in zip(codes.tolist(), mask.tolist())]
        names = [[f"{c}@{t:.2f}" if c else "" for c, t in zip(rrow, trow)] for rrow, trow in zip(raw, times.tolist())]
        tensors = {"codes": codes.long(), "values": values, "has_value": has_value, "times": times,
                   "segments": segments, "n_cut": torch.zeros(B, dtype=torch.long)}
        return ModalityBatch(modality, mask, present_t, tensors, names, {"code": raw})

    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
