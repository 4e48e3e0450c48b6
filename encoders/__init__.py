"""clinfuse.encoders: one encoder per modality; each turns a batch of one modality into named tokens."""

from . import clinical, events, genomics, images, pixels, tabular  # noqa: F401  importing registers the encoders
from .base import ENCODERS, ModalityEncoder, create_encoder, list_encoders
from .registry import Registry
from .tokens import Tokens

__all__ = ["ENCODERS", "ModalityEncoder", "Registry", "Tokens", "create_encoder", "default_encoder",
           "list_encoders"]


def default_encoder(modality: str, schema_entry: dict) -> str:
    """The registered encoder used for ``modality`` when none is named (``schema_entry`` =
    ``schema_[modality]``): the modality's own choice (``Modality.default_encoder``; an unknown modality is a
    ValueError listing the registered ones).

    images: ``feature_bag`` for precomputed feature bags, ``vit`` for pixel bags; clinical:
    ``feature_tokens``; genomics: ``gene_transformer``; events: ``event_transformer``.
    """
    from ..datasets.modalities import get_modality

    return get_modality(modality).default_encoder(schema_entry)
