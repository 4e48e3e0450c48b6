"""Base class and registry of the per-modality encoders."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..datasets.batch import ModalityBatch
from .registry import Registry
from .tokens import Tokens

ENCODERS = Registry("encoder", populate="clinfuse.encoders")


class ModalityEncoder(nn.Module):
    """Maps one modality's :class:`ModalityBatch` to :class:`Tokens` ``[B, T, d_model]``.

    Subclasses register with ``@ENCODERS.register(name, modalities=(...))``, take typed keyword-only
    constructor arguments, and implement :meth:`from_schema` so that the estimator can size them from
    the fitted preprocessor's ``schema_[modality]`` (see :mod:`clinfuse.datasets.batch`).
    """

    registry_name: ClassVar[str] = ""
    shared_keywords: ClassVar[frozenset[str]] = frozenset()
    """The FusionModel-wide keywords (``n_heads, n_layers, dropout, ffn_mult``) this encoder has, under
    those names; the estimator passes each one the user sets to every component that declares it."""

    owns_output: ClassVar[bool] = False
    """True when :meth:`forward` returns ``Tokens.values`` as a fresh tensor that nothing else holds (not a
    view of the batch, of a parameter or of a cache), so that the network may add its token-type
    embeddings to it in place."""

    def forward(self, batch: ModalityBatch) -> Tokens:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int, **kwargs: Any) -> ModalityEncoder:
        """Build the encoder for one modality's schema entry (``Preprocessor.schema_[modality]``)."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_schema")


def create_encoder(name: str, **kwargs: Any) -> ModalityEncoder:
    """Build a registered encoder by name; an unknown name raises ``ValueError`` listing the registered
    ones."""
    return ENCODERS.create(name, **kwargs)


def list_encoders(modality: str | None = None) -> list[str]:
    """Registered encoder names, optionally only those that accept ``modality``."""
    return ENCODERS.names(modality)
