"""Token-type embeddings: tell the aggregator which modality (and, optionally, which segment) a token is from.

The encoders already encode what is specific to a token: clinical and gene tokens are variable-specific
(per-column / per-gene tokenisers), event tokens carry their time, patch tokens are an unordered bag. So by
default only a learned modality embedding is added; two optional positional terms exist where they carry
information the encoders may not give: the admission ``segment`` of events and the 2-D patch coordinates.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from ..datasets.batch import MODALITIES
from ..encoders.common import check_positive_int, sincos_2d
from ..encoders.tokens import Tokens


class TokenTypeEmbedding(nn.Module):
    """Adds a learned per-modality vector to every token of that modality.

    Args:
        d_model: token width d.
        modalities: the schema's modalities (registered ones).
        event_segments: also add a learned embedding of the admission segment of tokens that carry one
            (``Tokens.meta["segments"]`` ``[B, T]``, events; clipped to ``max_segments - 1``). Off by
            default: the event encoder may already encode it.
        max_segments: size of the segment table.
        patch_coords: also add the 2-D sinusoidal encoding of the coordinates of tokens that carry them
            (patches: :func:`~clinfuse.encoders.common.sincos_2d` of ``meta["coords"] / coord_scale``;
            unknown (NaN) coordinates add nothing). Off by default: a bag is a set.
        coord_scale: coordinates are divided by this (e.g. the patch size in pixels) before encoding.
    """

    def __init__(self, *, d_model: int, modalities: Sequence[str], event_segments: bool = False,
                 max_segments: int = 8, patch_coords: bool = False, coord_scale: float = 256.0) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model", owner="TokenTypeEmbedding")
        if isinstance(modalities, str) or not modalities:
            raise TypeError(f"TokenTypeEmbedding: modalities must be a non-empty sequence, "
                            f"got {modalities!r}")
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"TokenTypeEmbedding: unknown modalities {unknown}; "
                             f"expected some of {MODALITIES}")
        if patch_coords and d_model % 4:
            raise ValueError(f"TokenTypeEmbedding: patch_coords needs d_model divisible by 4, got {d_model}")
        if max_segments <= 0 or coord_scale <= 0:
            raise ValueError("TokenTypeEmbedding: max_segments and coord_scale must be positive")
        self.d_model, self.modalities = d_model, tuple(modalities)
        self.type_embedding = nn.Parameter(torch.randn(len(self.modalities), d_model) * 0.02)
        self.segment_embedding = nn.Embedding(max_segments, d_model) if event_segments else None
        if self.segment_embedding is not None:
            nn.init.normal_(self.segment_embedding.weight, std=0.02)
        self.patch_coords, self.coord_scale = patch_coords, coord_scale

    def type_vector(self, modality: str) -> torch.Tensor:
        """The learned embedding ``[d]`` of ``modality`` (what :meth:`forward` adds to each of its tokens
        before the optional positional terms)."""
        return self.type_embedding[self.modalities.index(modality)]

    def forward(self, tokens: Mapping[str, Tokens], *, inplace: Collection[str] = (),
                typed: Collection[str] = ()) -> dict[str, Tokens]:
        """modality -> Tokens ``[B, T, d]``, returned with the embeddings added (mask, names, meta
        unchanged).

        ``inplace``: modalities whose ``values`` may be overwritten (a fresh tensor that nothing else
        holds, see ``ModalityEncoder.owns_output``): no new ``[B, T, d]`` tensor per term, which on a
        100,000-patch bag costs as much as the network's attention. ``typed``: modalities whose tokens
        already hold :meth:`type_vector` (their encoder added it as its ``offset``); only the optional
        terms are added to them.
        """
        out = {}
        for m, t in tokens.items():
            if m not in self.modalities:
                raise ValueError(f"TokenTypeEmbedding: tokens of modality {m!r}, which is not one of "
                                 f"{list(self.modalities)}")
            if t.d_model != self.d_model:
                raise ValueError(f"TokenTypeEmbedding: modality {m!r} tokens have width {t.d_model}, "
                                 f"expected {self.d_model}")
            own = m in inplace

            def add(values: torch.Tensor, term: torch.Tensor, own: bool = own) -> torch.Tensor:
                return values.add_(term) if own else values + term

            values = t.values
            if m not in typed:
                values = add(values, self.type_vector(m).to(values.dtype))
            # by what the tokens carry, not by modality name: event tokens carry segments, patches coords
            if self.segment_embedding is not None and "segments" in t.meta:
                seg = t.meta["segments"].long().clamp(0, self.segment_embedding.num_embeddings - 1)
                values = add(values, self.segment_embedding(seg).to(values.dtype))
            if self.patch_coords and "coords" in t.meta:
                # the encoders' 2-D sin-cos encoding, coordinates in units of coord_scale (0 where unknown)
                enc = sincos_2d(t.meta["coords"].float(), self.d_model, scale=1.0 / self.coord_scale)
                values = add(values, enc.to(values.dtype))
            out[m] = replace(t, values=values)
        return out
