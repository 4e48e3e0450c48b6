"""From a Cohort and a fitted Preprocessor to :class:`~clinfuse.datasets.batch.Batch` objects.

:class:`CohortDataset` yields one :class:`SampleItem` per sample (in ``cohort.sample_ids`` order). The small
modalities (clinical, genomics, events) are transformed once, vectorised, when the dataset is built; image
bags stay on disk and are read per item through ``ImageBags.load`` (a random subset of ``max_patches``
patches in training, every patch at inference). :func:`collate_samples` pads each modality to the longest
sample of the batch and builds the masks exactly as :mod:`clinfuse.datasets.batch` documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .batch import MODALITIES, Batch, ModalityBatch
from .preprocess import NOT_FITTED, NotFittedError, Preprocessor

_UNNAMED_SLIDES = ("", "slide0")  # ImageBags' id for a lone in-memory array: its tokens are named `position`


def format_days(days: float) -> str:
    """Compact time for event token names: whole days as ``"3"``, else at most 2 decimals (``"0.25"``)."""
    return _format_days_many(np.array([days]))[0]


def _format_days_many(days: np.ndarray) -> list[str]:
    """:func:`format_days` over an array (one rounding pass; twice as fast on 10^4 events)."""
    return [f"{v:.2f}".rstrip("0").rstrip(".") for v in np.round(np.asarray(days, dtype=np.float64), 2).tolist()]


@dataclass
class SampleItem:
    """One sample as produced by :class:`CohortDataset` (numpy arrays; ``None`` = modality absent).

    Attributes:
        clinical: ``numeric`` float32 ``[Kn]``, ``numeric_missing`` bool ``[Kn]``, ``categorical`` int64 ``[Kc]``.
        genomics: float32 ``[G]``.
        images: ``data`` float32 ``[N, D]`` or ``[N, C, H, W]``, ``coords`` ``[N, 2]``, ``positions`` int64
            ``[N]``, ``slide_ids`` and ``names`` (``N`` strings).
        events: ``codes``, ``values``, ``has_value``, ``times``, ``segments`` (``[T]``), ``code`` and ``names``
            (``T`` strings), ``n_cut`` (int), most recent first.
    """

    sample_id: str
    patient_id: str
    schema: dict[str, Any]
    clinical: dict[str, np.ndarray] | None = None
    genomics: np.ndarray | None = None
    images: dict[str, Any] | None = None
    events: dict[str, Any] | None = None
    label: int | None = None
    time: float | None = None
    event: float | None = None


class CohortDataset(Dataset):
    """A torch ``Dataset`` over a cohort's samples, transformed by a fitted :class:`Preprocessor`.

    Args:
        cohort: the samples to serve (checked with ``preprocessor.check_compatible``).
        preprocessor: fitted on the training samples.
        train: training mode: image bags larger than ``max_patches`` are randomly subsampled per read.
        max_patches: at most this many patches per bag in training; ignored at inference (all patches).
        seed: seeds patch sampling; the draw for item ``i`` depends on (seed, epoch, i, how often i was read),
            so runs are reproducible and successive epochs see different patches.
    """

    def __init__(self, cohort: Any, preprocessor: Preprocessor, *, train: bool = False,
                 max_patches: int | None = None, seed: int = 0) -> None:
        if not isinstance(preprocessor, Preprocessor):
            raise TypeError(f"preprocessor must be a fitted Preprocessor, got {type(preprocessor).__name__}")
        if not preprocessor.is_fitted:
            raise NotFittedError(NOT_FITTED)
        if max_patches is not None and (not isinstance(max_patches, int | np.integer) or max_patches < 1):
            raise ValueError(f"max_patches must be a positive int or None, got {max_patches!r}")
        preprocessor.check_compatible(cohort)
        self.preprocessor = preprocessor  # the cohort itself is not kept: workers get only transformed arrays
        self.schema = preprocessor.schema_
        self.train, self.max_patches, self.seed = bool(train), max_patches, int(seed)
        self.epoch = 0
        self._draws: dict[int, int] = {}
        self.sample_ids = [str(s) for s in cohort.sample_ids]
        groups = cohort.groups
        self.patient_ids = [str(groups.get(s, s)) for s in self.sample_ids] if groups is not None else self.sample_ids
        self._clinical = self._table("clinical", cohort.clinical, preprocessor.transform_clinical)
        self._genomics = self._table("genomics", cohort.genomics, preprocessor.transform_genomics)
        self._events: dict[str, dict[str, Any]] = {}
        if "events" in self.schema and cohort.events is not None:
            self._events = preprocessor.transform_events(cohort.events, cohort.index_time)
        self._images = cohort.images if "images" in self.schema else None
        self._image_ids = set() if self._images is None else {str(s) for s in self._images.sample_ids}
        self._labels, self._time, self._event = self._targets(cohort)

    def _table(self, modality: str, data: Any, transform: Any) -> tuple[dict[str, int], Any] | None:
        """Transform a whole table once; keep (sample -> row, arrays)."""
        if modality not in self.schema or data is None:
            return None
        names = data.index if modality == "clinical" else data.obs_names
        return {str(s): i for i, s in enumerate(names)}, transform(data)

    def _targets(self, cohort: Any) -> tuple[list[int] | None, list[float] | None, list[float] | None]:
        task = self.schema.get("task")
        if task is None or getattr(cohort, "task", None) is None:
            return None, None, None
        if task["type"] == "classification":
            labels = cohort.labels
            return [self.preprocessor.label_index(labels[s]) for s in self.sample_ids], None, None
        surv = cohort.survival
        return None, [float(surv.at[s, "time"]) for s in self.sample_ids], [float(surv.at[s, "event"])
                                                                             for s in self.sample_ids]

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch that seeds patch sampling (reproducible per epoch, also across workers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> SampleItem:
        sid = self.sample_ids[index]
        item = SampleItem(sample_id=sid, patient_id=self.patient_ids[index], schema=self.schema)
        if self._clinical is not None and sid in self._clinical[0]:
            row = self._clinical[0][sid]
            item.clinical = {k: v[row] for k, v in self._clinical[1].items()}
        if self._genomics is not None and sid in self._genomics[0]:
            item.genomics = self._genomics[1][self._genomics[0][sid]]
        if sid in self._image_ids:
            item.images = self._read_bag(index, sid)
        if sid in self._events:
            events = dict(self._events[sid])
            days = _format_days_many(events["times"])
            events["names"] = [f"{c}@{t}" for c, t in zip(events["code"], days, strict=True)]
            item.events = events
        if self._labels is not None:
            item.label = self._labels[index]
        if self._time is not None:
            item.time, item.event = self._time[index], self._event[index]
        return item

    def _read_bag(self, index: int, sid: str) -> dict[str, Any]:
        n = self._images.n_patches(sid)
        indices = None
        if self.train and self.max_patches is not None and n > self.max_patches:
            draw = self._draws.get(index, 0)
            self._draws[index] = draw + 1
            rng = np.random.default_rng([self.seed, self.epoch, index, draw])
            indices = np.sort(rng.choice(n, size=self.max_patches, replace=False))  # keep slide order
        bag = self._images.load(sid, indices)
        slides = self._images.slide_ids(sid) if hasattr(self._images, "slide_ids") else sorted(set(bag.slide_ids))
        single = len(slides) == 1 and slides[0] in (*_UNNAMED_SLIDES, sid)
        positions = np.asarray(bag.positions, dtype=np.int64)
        names = ([str(p) for p in positions.tolist()] if single
                 else [f"{s}:{p}" for s, p in zip(bag.slide_ids, positions.tolist(), strict=True)])
        return {"data": bag.data, "coords": bag.coords, "positions": positions, "slide_ids": list(bag.slide_ids),
                "names": names}


# ---------------------------------------------------------------------- collation


def _collate_clinical(items: Sequence[SampleItem], schema: dict[str, Any], present: torch.Tensor) -> ModalityBatch:
    columns = [*schema["numeric"], *schema["categorical"]]
    B, kn, kc = len(items), len(schema["numeric"]), len(schema["categorical"])
    numeric = np.zeros((B, kn), dtype=np.float32)
    missing = np.ones((B, kn), dtype=bool)  # an absent sample has no observed value
    categorical = np.zeros((B, kc), dtype=np.int64)
    for b, it in enumerate(items):
        if it.clinical is not None:
            numeric[b], missing[b], categorical[b] = (it.clinical["numeric"], it.clinical["numeric_missing"],
                                                      it.clinical["categorical"])
    mask = present[:, None].expand(B, kn + kc).clone()
    names = [list(columns) if p else [""] * len(columns) for p in present.tolist()]
    tensors = {"numeric": torch.from_numpy(numeric), "numeric_missing": torch.from_numpy(missing),
               "categorical": torch.from_numpy(categorical)}
    return ModalityBatch("clinical", mask, present, tensors, names)


def _collate_genomics(items: Sequence[SampleItem], schema: dict[str, Any], present: torch.Tensor) -> ModalityBatch:
    genes = list(schema["genes"])
    values = np.zeros((len(items), len(genes)), dtype=np.float32)
    for b, it in enumerate(items):
        if it.genomics is not None:
            values[b] = it.genomics
    mask = present[:, None].expand(len(items), len(genes)).clone()
    names = [list(genes) if p else [""] * len(genes) for p in present.tolist()]
    meta: dict[str, Any] = {}
    if schema.get("gene_sets"):
        index = {g: i for i, g in enumerate(genes)}
        meta["gene_sets"] = {s: [index[g] for g in members if g in index] for s, members in schema["gene_sets"].items()}
    return ModalityBatch("genomics", mask, present, {"values": torch.from_numpy(values)}, names, meta)


def _collate_images(items: Sequence[SampleItem], schema: dict[str, Any], present: torch.Tensor) -> ModalityBatch:
    bags = [it.images for it in items]
    lengths = [0 if bag is None else len(bag["positions"]) for bag in bags]
    B, T = len(items), max(max(lengths, default=0), 1)  # T >= 1 so that encoders never see an empty axis
    if schema["kind"] == "features":
        key, shape = "features", (schema["feature_dim"],)
    else:
        key, shape = "pixels", (schema["channels"], schema["height"], schema["width"])
    data = np.zeros((B, T, *shape), dtype=np.float32)
    coords = np.zeros((B, T, 2), dtype=np.float32)
    position = np.zeros((B, T), dtype=np.int64)
    mask = np.zeros((B, T), dtype=bool)
    names = [[""] * T for _ in range(B)]
    slide = [[""] * T for _ in range(B)]
    for b, (bag, n) in enumerate(zip(bags, lengths, strict=True)):
        if bag is None:
            continue
        data[b, :n], coords[b, :n], position[b, :n], mask[b, :n] = bag["data"], bag["coords"], bag["positions"], True
        names[b][:n], slide[b][:n] = bag["names"], bag["slide_ids"]
    tensors = {key: torch.from_numpy(data), "coords": torch.from_numpy(coords), "position": torch.from_numpy(position)}
    present = present & torch.tensor([n > 0 for n in lengths], dtype=torch.bool)
    return ModalityBatch("images", torch.from_numpy(mask), present, tensors, names, {"slide_id": slide})


def _collate_events(items: Sequence[SampleItem], schema: dict[str, Any], present: torch.Tensor) -> ModalityBatch:
    seqs = [it.events for it in items]
    lengths = [0 if s is None else len(s["codes"]) for s in seqs]
    B, T = len(items), max(max(lengths, default=0), 1)
    out = {"codes": np.zeros((B, T), dtype=np.int64), "values": np.zeros((B, T), dtype=np.float32),
           "has_value": np.zeros((B, T), dtype=bool), "times": np.zeros((B, T), dtype=np.float32),
           "segments": np.zeros((B, T), dtype=np.int64)}
    n_cut = np.zeros(B, dtype=np.int64)
    mask = np.zeros((B, T), dtype=bool)
    names = [[""] * T for _ in range(B)]
    codes = [[""] * T for _ in range(B)]
    for b, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
        if seq is None:
            continue
        for key, arr in out.items():
            arr[b, :n] = seq[key]
        mask[b, :n], n_cut[b] = True, seq["n_cut"]
        names[b][:n], codes[b][:n] = seq["names"], seq["code"]
    tensors = {k: torch.from_numpy(v) for k, v in out.items()}
    tensors["n_cut"] = torch.from_numpy(n_cut)
    present = present & torch.tensor([n > 0 for n in lengths], dtype=torch.bool)
    return ModalityBatch("events", torch.from_numpy(mask), present, tensors, names, {"code": codes})


_COLLATE = {"clinical": _collate_clinical, "genomics": _collate_genomics, "images": _collate_images,
            "events": _collate_events}


def _target(items: Sequence[SampleItem], attr: str, dtype: torch.dtype) -> torch.Tensor | None:
    values = [getattr(it, attr) for it in items]
    if all(v is None for v in values):
        return None
    lacking = [it.sample_id for it, v in zip(items, values, strict=True) if v is None]
    if lacking:
        raise ValueError(f"collate_samples: sample(s) {lacking[:5]} have no {attr} while others in the batch do")
    return torch.tensor(values, dtype=dtype)


def collate_samples(items: Sequence[SampleItem], *, schema: dict[str, Any] | None = None) -> Batch:
    """Pad a list of :class:`SampleItem` into one :class:`Batch` (every modality of the schema, masks
    True = real token, an absent modality as an all-False mask with ``present`` False)."""
    if len(items) == 0:
        raise ValueError("collate_samples: got no items; expected at least one SampleItem")
    schema = items[0].schema if schema is None else schema
    modalities = {}
    for m in MODALITIES:
        if m in schema:
            present = torch.tensor([getattr(it, m) is not None for it in items], dtype=torch.bool)
            modalities[m] = _COLLATE[m](items, schema[m], present)
    return Batch(sample_ids=[it.sample_id for it in items], patient_ids=[it.patient_id for it in items],
                 modalities=modalities, labels=_target(items, "label", torch.int64),
                 time=_target(items, "time", torch.float32), event=_target(items, "event", torch.float32))


def make_loader(cohort: Any, preprocessor: Preprocessor, *, batch_size: int = 8, shuffle: bool = False,
                train: bool = False, max_patches: int | None = None, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A ``DataLoader`` yielding :class:`Batch` objects; shuffling is reproducible (generator seeded by ``seed``)."""
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dataset = CohortDataset(cohort, preprocessor, train=train, max_patches=max_patches, seed=seed)
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, collate_fn=collate_samples,
                      num_workers=num_workers, generator=generator, drop_last=drop_last)


__all__ = ["CohortDataset", "SampleItem", "collate_samples", "format_days", "make_loader"]
