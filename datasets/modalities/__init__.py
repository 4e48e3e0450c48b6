"""One module per modality, each a :class:`Modality` registered in :data:`MODALITY_REGISTRY`.

The built-ins register on import, in the canonical order clinical, genomics, images, events; a fifth one
is a :class:`Modality` subclass (with its :class:`ModalityPreprocessor`) passed to :func:`register_modality`.
"""

from .base import (
    NOT_FITTED,
    Modality,
    ModalityPreprocessor,
    Normalised,
    NotFittedError,
    ReadContext,
    SampleReader,
    TableReader,
)
from .clinical import ClinicalModality, ClinicalPreprocessor
from .events import EventsModality, EventsPreprocessor
from .genomics import GenomicsModality, GenomicsPreprocessor
from .images import ImagesModality, ImagesPreprocessor
from .registry import (
    MODALITY_NAMES,
    MODALITY_REGISTRY,
    TOKEN_KINDS,
    ModalityRegistry,
    get_modality,
    layout_of,
    register_modality,
    unregister_modality,
)

for _builtin in (ClinicalModality, GenomicsModality, ImagesModality, EventsModality):  # the canonical order
    register_modality(_builtin)

__all__ = [
    "MODALITY_NAMES",
    "MODALITY_REGISTRY",
    "NOT_FITTED",
    "TOKEN_KINDS",
    "Modality",
    "ModalityPreprocessor",
    "ModalityRegistry",
    "Normalised",
    "NotFittedError",
    "ReadContext",
    "SampleReader",
    "TableReader",
    "get_modality",
    "layout_of",
    "register_modality",
    "unregister_modality",
]
__all__ += [
    "ClinicalModality",
    "ClinicalPreprocessor",
    "EventsModality",
    "EventsPreprocessor",
    "GenomicsModality",
    "GenomicsPreprocessor",
    "ImagesModality",
    "ImagesPreprocessor",
]
