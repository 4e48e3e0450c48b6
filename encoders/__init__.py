"""clinfuse.encoders: one encoder per modality; each turns a batch of one modality into named tokens."""

from . import events, genomics  # noqa: F401  registers gene_transformer and event_transformer
from .base import ENCODERS, ModalityEncoder, create_encoder, list_encoders
from .registry import Registry
from .tokens import Tokens

__all__ = ["ENCODERS", "ModalityEncoder", "Registry", "Tokens", "create_encoder", "list_encoders"]
