"""The batch contract between the data layer and the encoders.

A :class:`Batch` holds B samples; each modality the cohort schema has becomes one :class:`ModalityBatch`
of padded tensors, a boolean token mask and the token names. A sample that lacks the modality still
occupies its row: ``present[b]`` is False and ``mask[b]`` is all False (it is masked, never zero-imputed).

Tensors per modality (keys of ``ModalityBatch.tensors``)
-------------------------------------------------------
``clinical`` (T = K = Kn + Kc tokens, numeric columns first, then categorical, in schema order)
    ``numeric``          float32 ``[B, Kn]``  standardised with training statistics, 0.0 where missing
    ``numeric_missing``  bool    ``[B, Kn]``  True where the raw value was NaN
    ``categorical``      int64   ``[B, Kc]``  0 = missing, 1 = unknown category, 2.. = vocabulary index + 2
    Every variable of a present sample is a real token (a missing value is a token with a learned
    missing embedding), so ``mask[b] == present[b]`` for all K tokens.
``genomics`` (T = G genes kept by the preprocessor, schema order)
    ``values``           float32 ``[B, G]``   transformed and scaled expression
    ``meta["gene_sets"]`` optional ``dict[str, list[int]]``: set name -> indices into the G genes
``images`` feature bags (T = N, the largest bag in the batch after optional sampling)
    ``features``         float32 ``[B, N, D]``
    ``coords``           float32 ``[B, N, 2]`` patch x, y (NaN where the source had no coordinates)
    ``position``         int64   ``[B, N]``   0-based index of the patch in its slide's bag as supplied
    ``meta["slide_id"]`` ``list[list[str]]`` ``[B][N]`` slide of each patch ("" for padding)
``images`` pixel bags (``ImageBags.from_patches``)
    ``pixels``           float32 ``[B, N, C, H, W]`` scaled to [0, 1]; ``position`` and ``coords`` as above
``events`` (T = the longest event list in the batch, at most the preprocessor's ``max_events``)
    ``codes``            int64   ``[B, T]``   0 = padding, 1 = unknown code, 2.. = vocabulary index + 2
    ``values``           float32 ``[B, T]``   standardised per code, 0.0 where the event has no value
    ``has_value``        bool    ``[B, T]``
    ``times``            float32 ``[B, T]``   days before the prediction time (>= 0; larger = older)
    ``segments``         int64   ``[B, T]``   0 = current admission / visit, 1, 2, .. = earlier ones
    ``n_cut``            int64   ``[B]``      events dropped because the sample had more than ``max_events``
    ``meta["code"]``     ``list[list[str]]`` ``[B][T]`` raw code of each event ("" for padding)

Token names (``ModalityBatch.names``, ``[B][T]``, "" for padding): the clinical column, the
gene (or gene set), ``code@time`` for events, ``slide:position`` for patches (``position`` when the
sample has a single unnamed slide).

Schema
------
The fitted preprocessor exposes ``schema_`` (a JSON-able dict), which encoders read to size themselves::

    {"clinical": {"numeric": [col, ...], "categorical": {col: [category, ...]}},
     "genomics": {"genes": [gene, ...], "gene_sets": {set: [gene, ...]} | None},
     "images":   {"kind": "features", "feature_dim": D}
                 | {"kind": "pixels", "channels": C, "height": H, "width": W},
     "events":   {"vocab": [code, ...], "max_events": int, "has_values": bool},
     "task":     {"type": "classification", "classes": [...]} | {"type": "survival"} | None}

Only the modalities the cohort holds appear. Each modality's tensors, schema entry and collation are
defined by its module in :mod:`clinfuse.datasets.modalities`; :data:`MODALITIES` (names, canonical order)
and :data:`TOKEN_KIND` (name -> attention kind of its tokens) are live views of that registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def _move(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


@dataclass
class ModalityBatch:
    """One modality of a batch of B samples, padded to T tokens.

    Attributes:
        modality: one of :data:`MODALITIES`.
        mask: bool ``[B, T]``, True = real token. All False for a sample without this modality.
        present: bool ``[B]``, True = the sample has this modality.
        tensors: modality-specific tensors (see the module docstring).
        names: ``[B][T]`` token names, "" for padding.
        meta: structured, non-tensor information (slide ids, raw event codes, gene sets).
    """

    modality: str
    mask: torch.Tensor
    present: torch.Tensor
    tensors: dict[str, torch.Tensor]
    names: list[list[str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.mask.shape[1])

    def to(self, device: torch.device | str) -> ModalityBatch:
        return ModalityBatch(
            modality=self.modality,
            mask=self.mask.to(device),
            present=self.present.to(device),
            tensors=_move(self.tensors, device),
            names=self.names,
            meta=self.meta,
        )


@dataclass
class Batch:
    """B samples with every modality of the schema and, when the cohort has them, their targets.

    Attributes:
        sample_ids: ``[B]`` sample ids, in batch order.
        patient_ids: ``[B]`` the group (patient) of each sample; the sample id when no groups were given.
        modalities: modality name -> :class:`ModalityBatch`, in :data:`MODALITIES` order.
        labels: int64 ``[B]`` class index into ``schema["task"]["classes"]``, or None.
        time: float32 ``[B]`` survival time, or None.
        event: float32 ``[B]`` 1.0 = event observed, 0.0 = censored, or None.
    """

    sample_ids: list[str]
    patient_ids: list[str]
    modalities: dict[str, ModalityBatch]
    labels: torch.Tensor | None = None
    time: torch.Tensor | None = None
    event: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.sample_ids)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            sample_ids=self.sample_ids,
            patient_ids=self.patient_ids,
            modalities={k: v.to(device) for k, v in self.modalities.items()},
            labels=None if self.labels is None else self.labels.to(device),
            time=None if self.time is None else self.time.to(device),
            event=None if self.event is None else self.event.to(device),
        )

    def presence(self) -> dict[str, torch.Tensor]:
        """Modality name -> bool ``[B]`` presence, for per-missingness-pattern metrics."""
        return {k: v.present for k, v in self.modalities.items()}


# MODALITIES and TOKEN_KIND are live views of the modality registry (a modality registered later appears in
# them too). They are looked up on first use: the modality modules import ModalityBatch from this module.
_REGISTRY_VIEWS = {"MODALITIES": "MODALITY_NAMES", "TOKEN_KIND": "TOKEN_KINDS"}


def __getattr__(name: str) -> Any:
    if name not in _REGISTRY_VIEWS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .modalities import registry

    value = getattr(registry, _REGISTRY_VIEWS[name])
    globals()[name] = value  # later lookups skip __getattr__
    return value


__all__ = [*_REGISTRY_VIEWS, "Batch", "ModalityBatch"]  # the views by name: static checkers cannot see them
