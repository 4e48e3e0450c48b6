"""From a Cohort and a fitted Preprocessor to :class:`~clinfuse.datasets.batch.Batch` objects.

:class:`CohortDataset` yields one :class:`SampleItem` per sample (in ``cohort.sample_ids`` order): each
modality of the schema gives a reader (``Modality.reader``: the small modalities are transformed once,
vectorised, when the dataset is built; image bags stay on disk and are read per item). :func:`collate_samples`
asks each modality to pad its items into its :class:`~clinfuse.datasets.batch.ModalityBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .batch import Batch
from .modalities import MODALITY_REGISTRY, NOT_FITTED, NotFittedError, ReadContext, SampleReader
from .modalities.events import format_days
from .preprocess import Preprocessor
from .validation import format_ids


@dataclass
class SampleItem:
    """One sample as produced by :class:`CohortDataset` (numpy arrays).

    Attributes:
        data: modality -> its item (the modality's reader decides the form; absent modalities are left out):
            clinical ``numeric`` float32 ``[Kn]``, ``numeric_missing`` bool ``[Kn]``, ``categorical`` int64
            ``[Kc]``; genomics float32 ``[G]``; images ``data`` float32 ``[N, D]`` or ``[N, C, H, W]``,
            ``coords`` ``[N, 2]``, ``positions`` int64 ``[N]``, ``slide_ids`` and ``names`` (``N`` strings);
            events ``codes``, ``values``, ``has_value``, ``times``, ``segments`` (``[T]``), ``code`` and
            ``names`` (``T`` strings), ``n_cut`` (int), most recent first.
    """

    sample_id: str
    patient_id: str
    schema: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    label: int | None = None
    time: float | None = None
    event: float | None = None

    def __getattr__(self, name: str) -> Any:
        # item.clinical, item.events, ...: the modality's item, None when absent
        if name in MODALITY_REGISTRY:
            return self.__dict__.get("data", {}).get(name)
        raise AttributeError(f"'SampleItem' object has no attribute {name!r}")


class CohortDataset(Dataset):
    """A torch ``Dataset`` over a cohort's samples, transformed by a fitted :class:`Preprocessor`.

    Args:
        cohort: the samples to serve (checked with ``preprocessor.check_compatible``).
        preprocessor: fitted on the training samples.
        train: training mode: image bags larger than ``max_patches`` are randomly subsampled per read.
        max_patches: at most this many patches per bag in training; ignored at inference (all patches).
        seed: seeds patch sampling; the draw for item ``i`` depends on (seed, epoch, i, how often i was read),
            so runs are reproducible and successive epochs see different patches.
        stream: outside training, feature bags are not read here: each item holds the bag's row source
            (``images["rows"]``, a :class:`~clinfuse.datasets.images.rows.BagRows`) and the image encoder
            reads and projects it in chunks, so no ``[N, D]`` copy of a bag is made (prediction).
    """

    def __init__(self, cohort: Any, preprocessor: Preprocessor, *, train: bool = False,
                 max_patches: int | None = None, seed: int = 0, stream: bool = False) -> None:
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
        self.stream = bool(stream) and not self.train
        self.epoch = 0
        self.sample_ids = [str(s) for s in cohort.sample_ids]
        groups = cohort.groups
        self.patient_ids = (
            [str(groups.get(s, s)) for s in self.sample_ids] if groups is not None else self.sample_ids
        )
        self._readers: dict[str, SampleReader] = {}
        for m in MODALITY_REGISTRY:
            data = getattr(cohort, m.name, None)
            if m.name in self.schema and data is not None:
                self._readers[m.name] = m.reader(data, cohort, preprocessor.preprocessors_[m.name])
        self._labels, self._time, self._event = self._targets(cohort)

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

    def sampling_state(self) -> dict[str, dict[int, int]]:
        """Each reader's sampling counters (how often each item was read), for training checkpoints."""
        return {name: dict(r.draws) for name, r in self._readers.items() if hasattr(r, "draws")}

    def load_sampling_state(self, state: dict[str, dict[int, int]]) -> None:
        """Restore :meth:`sampling_state` (a resumed fit then draws the patches the killed one would have)."""
        for name, draws in state.items():
            if name in self._readers and hasattr(self._readers[name], "draws"):
                self._readers[name].draws = {int(k): int(v) for k, v in draws.items()}

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> SampleItem:
        sid = self.sample_ids[index]
        item = SampleItem(sample_id=sid, patient_id=self.patient_ids[index], schema=self.schema)
        context = ReadContext(
            train=self.train, max_patches=self.max_patches, seed=self.seed, epoch=self.epoch,
            stream=self.stream)
        for name, reader in self._readers.items():
            value = reader.read(sid, index, context)
            if value is not None:
                item.data[name] = value
        if self._labels is not None:
            item.label = self._labels[index]
        if self._time is not None:
            item.time, item.event = self._time[index], self._event[index]
        return item


# ---------------------------------------------------------------------- collation


def _target(items: Sequence[SampleItem], attr: str, dtype: torch.dtype) -> torch.Tensor | None:
    values = [getattr(it, attr) for it in items]
    if all(v is None for v in values):
        return None
    lacking = [it.sample_id for it, v in zip(items, values, strict=True) if v is None]
    if lacking:
        raise ValueError(
            f"collate_samples: sample(s) {format_ids(lacking)} have no {attr} while others in the batch do"
        )
    return torch.tensor(values, dtype=dtype)


def collate_samples(items: Sequence[SampleItem], *, schema: dict[str, Any] | None = None) -> Batch:
    """Pad a list of :class:`SampleItem` into one :class:`Batch` (every modality of the schema, masks
    True = real token, an absent modality as an all-False mask with ``present`` False)."""
    if len(items) == 0:
        raise ValueError("collate_samples: got no items; expected at least one SampleItem")
    schema = items[0].schema if schema is None else schema
    modalities = {}
    for m in MODALITY_REGISTRY:
        if m.name in schema:
            values = [it.data.get(m.name) for it in items]
            present = torch.tensor([v is not None for v in values], dtype=torch.bool)
            modalities[m.name] = m.collate(values, schema[m.name], present)
    return Batch(sample_ids=[it.sample_id for it in items], patient_ids=[it.patient_id for it in items],
                 modalities=modalities, labels=_target(items, "label", torch.int64),
                 time=_target(items, "time", torch.float32), event=_target(items, "event", torch.float32))


def make_loader(cohort: Any, preprocessor: Preprocessor, *, batch_size: int = 8, shuffle: bool = False,
                train: bool = False, max_patches: int | None = None, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False, stream: bool = False) -> DataLoader:
    """A ``DataLoader`` yielding :class:`Batch` objects; shuffling is reproducible (generator seeded by
    ``seed``). ``stream``: see :class:`CohortDataset` (feature bags read by the encoder in chunks)."""
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dataset = CohortDataset(cohort, preprocessor, train=train, max_patches=max_patches, seed=seed,
                            stream=stream)
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, collate_fn=collate_samples,
                      num_workers=num_workers, generator=generator, drop_last=drop_last)


__all__ = ["CohortDataset", "SampleItem", "collate_samples", "format_days", "make_loader"]
