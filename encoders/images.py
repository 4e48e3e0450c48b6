"""``feature_bag``: image bags of precomputed patch features -> one token per patch.

The cost floor of a bag is projecting its features (N x D x d multiply-adds). This encoder adds only
row-wise work on the ``[B, N, d]`` output (an activation, LayerNorm, an optional positional term, dropout)
and never copies the ``[B, N, D]`` input, so a large bag costs little more than its matrix multiply.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.batch import ModalityBatch
from .base import ENCODERS, ModalityEncoder
from .common import (
    check_modality,
    check_positive_int,
    check_probability,
    image_meta,
    require_tensor,
    sincos_2d,
    sincos_tables,
)
from .tokens import Tokens


@ENCODERS.register("feature_bag", modalities=("images",))
class FeatureBagEncoder(ModalityEncoder):
    """Linear(D, d) + activation + LayerNorm + dropout per patch, with an optional 2-D sinusoidal positional
    term.

    Args:
        in_dim: D, the feature dimension of the bags (``schema["images"]["feature_dim"]``).
        d_model: d, the token width.
        activation: None (default: a linear embedding), ``"relu"`` or ``"gelu"`` after the projection. The
            attention of the MIL aggregators is bilinear in the tokens, so with None each instance's score
            is linear in its features; a nonlinear embedding (as in CLAM) can score a concept that is not a
            half-space of feature space, at the price of more variance on small cohorts.
        dropout: dropout on the output tokens (training only).
        positional: add a fixed 2-D sinusoidal encoding of the patch coordinates
            (:func:`~clinfuse.encoders.common.sincos_2d`) after the LayerNorm. A patch whose coordinates are
            NaN (unknown) gets no positional term. Off by default: fusion may add its own positional terms.
        coord_scale: coordinates are multiplied by it before encoding; the default 1/256 makes one unit per
            256-pixel tile, so the encoding's wavelengths (2*pi .. 2*pi*max_wavelength units) span tiles to
            slides.
        max_wavelength: longest wavelength of the encoding, in scaled units.

    Input: ``batch.tensors["features"]`` float ``[B, N, D]`` (+ ``coords [B, N, 2]`` when positional).
    Output: :class:`Tokens` ``[B, N, d]``, names = the batch's names, ``meta`` = ``coords [B, N, 2]``,
    ``position [B, N]``, ``slide_id [B][N]``. Padding rows of the output are exactly 0; each row depends only
    on its own input row, so padding never affects real patches.
    """

    shared_keywords = frozenset({"dropout"})
    owns_output = True  # every path writes the tokens into a tensor made for this call
    accepts_offset = True  # forward(batch, offset=): see there

    chunk_rows = 2048  # patches per chunk without autograd: 2048 x D floats read, projected into the output
    norm_rows = 256  # rows per LayerNorm call within a chunk (CPU): its 256 x d temporary stays in L2

    ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}

    def __init__(self, *, in_dim: int, d_model: int, activation: str | None = None, dropout: float = 0.1,
                 positional: bool = False, coord_scale: float = 1.0 / 256.0,
                 max_wavelength: float = 10_000.0) -> None:
        super().__init__()
        owner = "feature_bag"
        self.in_dim = check_positive_int(in_dim, "in_dim", owner=owner)
        self.d_model = check_positive_int(d_model, "d_model", owner=owner)
        check_probability(dropout, "dropout", owner=owner)
        if not isinstance(positional, bool):
            raise TypeError(f"feature_bag: positional must be a bool, got {type(positional).__name__}")
        if not coord_scale > 0 or not max_wavelength > 1:
            raise ValueError(f"feature_bag: coord_scale must be > 0 and max_wavelength > 1, got "
                             f"{coord_scale} and {max_wavelength}")
        if activation is not None and activation not in self.ACTIVATIONS:
            raise ValueError(f"feature_bag: activation must be one of {sorted(self.ACTIVATIONS)} or None, "
                             f"got {activation!r}")
        self.activation = activation
        self.positional = positional
        self.coord_scale = float(coord_scale)
        self.max_wavelength = float(max_wavelength)
        self.proj = nn.Linear(in_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int, **kwargs: Any) -> FeatureBagEncoder:
        """Build from ``schema["images"]`` = ``{"kind": "features", "feature_dim": D}``."""
        if schema.get("kind") != "features":
            raise ValueError(f"feature_bag encodes precomputed feature bags, but the images schema has kind "
                             f"{schema.get('kind')!r}; use the 'vit' or 'cnn' encoder for pixel bags")
        return cls(in_dim=int(schema["feature_dim"]), d_model=d_model, **kwargs)

    def _positions(self, coords: torch.Tensor) -> torch.Tensor:
        return sincos_2d(coords, self.d_model, scale=self.coord_scale, max_wavelength=self.max_wavelength)

    def _project_rows(self, flat: torch.Tensor, out: torch.Tensor, tables: Any, index: slice,
                      norm_bias: torch.Tensor) -> None:
        """Project rows ``flat [k, D]`` into ``out [k, d]`` (a contiguous view) in place; ``tables``: the
        positional tables of every row of the batch, ``index`` the rows of this chunk among them;
        ``norm_bias``: the LayerNorm's bias (plus a folded offset)."""
        torch.addmm(self.proj.bias, flat, self.proj.weight.t(), out=out)
        if self.activation == "relu":
            out.clamp_(min=0)
        elif self.activation is not None:
            out.copy_(self.ACTIVATIONS[self.activation](out))
        step = self.norm_rows if out.device.type == "cpu" else len(out)
        for start in range(0, len(out), step):  # (layer_norm has no in-place form; its output is a copy)
            block = out[start : start + step]
            block.copy_(F.layer_norm(block, (self.d_model,), self.norm.weight, norm_bias, self.norm.eps))
        if tables is not None:
            n_freq = self.d_model // 4
            for axis, (table, idx) in enumerate(tables):
                out[:, 2 * axis * n_freq : 2 * (axis + 1) * n_freq] += table[idx[index]]

    def _tables(self, coords: torch.Tensor, dtype: torch.dtype) -> Any:
        if not (self.positional and self.d_model // 4):
            return None
        return sincos_tables(coords.reshape(-1, 2).to(dtype), self.d_model, scale=self.coord_scale,
                             max_wavelength=self.max_wavelength)

    def _project_inference(self, x: torch.Tensor, coords: torch.Tensor, norm_bias: torch.Tensor
                           ) -> torch.Tensor:
        """Without autograd: ``[B, N, D]`` -> ``[B, N, d]`` written chunk by chunk into one output tensor.

        The only allocations beyond the ``[B, N, d]`` output are small temporaries (the LayerNorm's
        ``[norm_rows, d]``, the positional term of a chunk): peak memory is input + output + a few MB.
        ``x`` is viewed, not copied, when contiguous (as loaders produce it).
        """
        B, N, D = x.shape
        flat = x.reshape(B * N, D)
        out = flat.new_empty(B * N, self.d_model)
        tables = self._tables(coords, out.dtype)
        for start in range(0, B * N, self.chunk_rows):
            rows = slice(start, start + self.chunk_rows)
            self._project_rows(flat[rows], out[rows], tables, rows, norm_bias)
        return out.view(B, N, self.d_model)

    def _project_sources(self, sources: list[Any], mask: torch.Tensor, coords: torch.Tensor,
                         norm_bias: torch.Tensor) -> torch.Tensor:
        """Without autograd: each sample's row source (:class:`~clinfuse.datasets.images.rows.BagRows`, None
        for an absent bag) read and projected ``chunk_rows`` patches at a time into ``[B, N, d]``.

        Beyond the output, memory is one chunk of features (a view where the bag is an in-memory float32
        array) and its ``[chunk_rows, d]`` temporaries, whatever the bag size.
        """
        B, N = mask.shape
        weight = self.proj.weight
        out = torch.empty(B * N, self.d_model, device=weight.device, dtype=weight.dtype)
        covered = [0 if source is None else len(source) for source in sources]
        for b, n in enumerate(covered):  # zero the rows no chunk writes (padding, absent bags) only
            if n < N:
                out[b * N + n : (b + 1) * N].zero_()
        tables = self._tables(coords, out.dtype)
        for b, source in enumerate(sources):
            if source is None:
                continue
            if len(source) > N:
                raise ValueError(f"feature_bag: the bag of sample {source.sample!r} has {len(source)} "
                                 f"patches, the batch mask {N}")
            for start, chunk in source.chunks(self.chunk_rows):
                with warnings.catch_warnings():  # read-only chunks (views of a read-only array) are only read
                    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                    x = torch.from_numpy(chunk)
                rows = slice(b * N + start, b * N + start + len(chunk))
                # a blocking copy: the chunk may be a reused read buffer, overwritten by the next read
                self._project_rows(x.to(device=weight.device, dtype=weight.dtype), out[rows], tables, rows,
                                   norm_bias)
        return out.view(B, N, self.d_model)

    def forward(self, batch: ModalityBatch, *, offset: torch.Tensor | None = None) -> Tokens:
        """``features [B, N, D]`` (or, at prediction, ``meta["feature_rows"]``: one row source per sample,
        read in chunks) -> ``Tokens [B, N, d]``.

        ``offset``: float ``[d]``, a constant added to every token, padding included (the network's
        token-type embedding). Without autograd and dropout it is folded into the LayerNorm's bias, so it
        costs no pass over the ``[B, N, d]`` tokens (the same values up to rounding).
        """
        check_modality(batch, "images", owner="feature_bag")
        if offset is not None and tuple(offset.shape) != (self.d_model,):
            raise ValueError(f"feature_bag: offset must have shape ({self.d_model},), "
                             f"got {tuple(offset.shape)}")
        meta = image_meta(batch)
        sources = batch.meta.get("feature_rows")
        if sources is not None and "features" not in batch.tensors:
            if not self._needs_grad(None):
                bias, folded = self._norm_bias(offset)
                out = self._project_sources(sources, batch.mask, meta["coords"], bias)
                return self._finish(out, batch, meta, offset, folded)
            x = self._materialise(sources, batch.mask)  # autograd needs the whole input
        else:
            x = require_tensor(batch, "features", owner="feature_bag")
        out, folded = self._project(x, batch, meta, offset)
        return self._finish(out, batch, meta, offset, folded)

    def _norm_bias(self, offset: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """The LayerNorm bias of the chunked path, with ``offset`` folded in when dropout (which comes
        between them) is off; and whether it was."""
        if offset is None or (self.training and self.drop.p > 0):
            return self.norm.bias, False
        return self.norm.bias + offset.to(self.norm.bias.dtype), True

    def _needs_grad(self, x: torch.Tensor | None) -> bool:
        return torch.is_grad_enabled() and ((x is not None and x.requires_grad)
                                            or any(p.requires_grad for p in self.parameters()))

    def _materialise(self, sources: list[Any], mask: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(*mask.shape, self.in_dim, device=mask.device)
        for b, source in enumerate(sources):
            if source is not None:
                x[b, : len(source)] = torch.from_numpy(source.read()).to(mask.device)
        return x

    def _project(self, x: torch.Tensor, batch: ModalityBatch, meta: dict[str, Any],
                 offset: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        if x.dim() != 3 or x.shape[:2] != batch.mask.shape:
            raise ValueError(f"feature_bag: images 'features' must be [B, N, D] matching the mask "
                             f"{tuple(batch.mask.shape)}, got {tuple(x.shape)}")
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"feature_bag: images features have dimension {x.shape[-1]}, the encoder was "
                             f"built for in_dim={self.in_dim} (schema feature_dim); refit the preprocessor "
                             "or rebuild the encoder")
        folded = False
        if self._needs_grad(x):
            # one GEMM over all B*N rows; everything after it works on the small [B, N, d] result
            out = self.proj(x)
            if self.activation is not None:
                out = self.ACTIVATIONS[self.activation](out)
            out = F.layer_norm(out, (self.d_model,), self.norm.weight, self.norm.bias, self.norm.eps)
            if self.positional:
                out = out + self._positions(meta["coords"].to(out.dtype))
        else:
            bias, folded = self._norm_bias(offset)
            out = self._project_inference(x, meta["coords"], bias)
        return out, folded

    def _finish(self, out: torch.Tensor, batch: ModalityBatch, meta: dict[str, Any],
                offset: torch.Tensor | None, folded: bool) -> Tokens:
        out = self.drop(out)
        padded = not bool(batch.mask.all())
        if padded:  # skip a pass over [B, N, d] when there is no padding
            # in place: neither layer_norm, the addition nor dropout keep their output for backward
            out = out.masked_fill_(~batch.mask[..., None], 0.0)
        if offset is not None:
            if not folded:
                out = out.add_(offset.to(out.dtype))
            elif padded:  # the real rows have it from the bias; padding rows are 0 + offset
                out[~batch.mask] = offset.to(out.dtype)
        return Tokens(values=out, mask=batch.mask, names=batch.names, modality=batch.modality,
                      present=batch.present, meta=meta)
