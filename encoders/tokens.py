"""``Tokens``: what every encoder returns and every aggregator consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Tokens:
    """One modality's batch as a sequence of named d-dimensional tokens.

    Attributes:
        values: float ``[B, T, d]`` token embeddings. Rows of padding tokens may hold anything finite;
            consumers must use ``mask``.
        mask: bool ``[B, T]``, True = real token. All False for a sample without the modality.
        names: ``[B][T]`` token names ("" for padding), exactly the names of the input
            :class:`~clinfuse.datasets.batch.ModalityBatch` unless the encoder changes the token set
            (gene sets), in which case they name the new tokens.
        modality: the modality these tokens come from (``clinical``, ``genomics``, ``images``, ``events``).
        present: bool ``[B]``, the sample has this modality.
        meta: passed-through structured information (coords, times, slide ids, gene-set members) that
            fusion may use (positional terms) and the report uses (``x, y, code, time`` columns).
            Gene-set encoders put ``meta["member_genes"]``: ``dict[set_name, list[gene]]`` and
            ``meta["member_weights"]``: ``dict[set_name, Tensor [B, n_members]]`` (each row sums to 1)
            so set attention can be spread over the member genes.
    """

    values: torch.Tensor
    mask: torch.Tensor
    names: list[list[str]]
    modality: str
    present: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return int(self.values.shape[-1])

    def __post_init__(self) -> None:
        # custom encoders build Tokens too, so a wrong shape is an error of the caller, not an invariant
        where = f"Tokens ({self.modality})"
        if self.values.dim() != 3:
            raise ValueError(f"{where}: values must be [B, T, d], got {tuple(self.values.shape)}")
        if self.mask.shape != self.values.shape[:2]:
            raise ValueError(f"{where}: mask must be [B, T] = {tuple(self.values.shape[:2])}, "
                             f"got {tuple(self.mask.shape)}")
        if self.mask.dtype != torch.bool:
            raise TypeError(f"{where}: mask must be bool, got {self.mask.dtype}")
