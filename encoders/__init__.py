"""clinfuse.encoders: one encoder per modality; each turns a batch of one modality into named tokens."""

from . import clinical, events, genomics, images, pixels, tabular  # noqa: F401  importing registers the encoders
from .base import ENCODERS, ModalityEncoder, create_encoder, list_encoders
from .registry import Registry
from .tokens import Tokens

__all__ = ["ENCODERS", "ModalityEncoder", "Registry", "Tokens", "create_encoder", "default_encoder", "list_encoders"]


def default_encoder(modality: str, schema_entry: dict) -> str:
    """The registered encoder used for ``modality`` when none is named (``schema_entry`` = ``schema_[modality]``).

    images: ``feature_bag`` for precomputed feature bags, ``vit`` for pixel bags; clinical: ``feature_tokens``;
    genomics: ``gene_transformer``; events: ``event_transformer``.
    """
    if modality == "images":
        kind = schema_entry.get("kind") if isinstance(schema_entry, dict) else None
        if kind not in ("features", "pixels"):
            raise ValueError(f"images schema kind must be 'features' or 'pixels', got {kind!r}")
        return "feature_bag" if kind == "features" else "vit"
    defaults = {"clinical": "feature_tokens", "genomics": "gene_transformer", "events": "event_transformer"}
    if modality not in defaults:
        raise ValueError(f"unknown modality {modality!r}; expected one of clinical, genomics, images, events")
    return defaults[modality]
