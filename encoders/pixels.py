"""Encoders that learn from pixels: ``cnn`` (one token per patch) and ``vit`` (default for pixel bags).

Both only run their network on the real images of a batch (``pixels[mask]``), in chunks, so padding images
cost nothing and cannot affect real ones. Both can start from a local state-dict file (``weights_path=``);
nothing is ever downloaded.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from einops import rearrange
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ..datasets.batch import ModalityBatch
from .base import ENCODERS, ModalityEncoder
from .common import (
    check_heads,
    check_modality,
    check_positive_int,
    check_probability,
    image_meta,
    init_trunc_normal,
    load_weights,
    require_tensor,
)
from .layers import MaskedTransformer
from .tokens import Tokens


def _real_pixels(batch: ModalityBatch, channels: int, owner: str) -> torch.Tensor:
    """The real images of the batch, ``[M, C, H, W]`` in (sample, position) order."""
    check_modality(batch, "images", owner=owner)
    x = require_tensor(batch, "pixels", owner=owner)
    if x.dim() != 5 or x.shape[:2] != batch.mask.shape:
        raise ValueError(f"{owner}: images 'pixels' must be [B, N, C, H, W] matching the mask "
                         f"{tuple(batch.mask.shape)}, got {tuple(x.shape)}")
    if x.shape[2] != channels:
        raise ValueError(f"{owner}: images have {x.shape[2]} channels, the encoder was built for "
                         f"in_channels={channels} (schema channels)")
    return x[batch.mask]


def _pixel_schema(schema: dict[str, Any], owner: str) -> tuple[int, int, int]:
    if schema.get("kind") != "pixels":
        raise ValueError(f"{owner} learns from pixels, but the images schema has kind "
                         f"{schema.get('kind')!r}; use the 'feature_bag' encoder for precomputed feature "
                         "bags")
    return int(schema["channels"]), int(schema["height"]), int(schema["width"])


class _ResidualBlock(nn.Module):
    """conv3x3-GN-GELU-conv3x3-GN + shortcut. GroupNorm (not BatchNorm) keeps each image's output
    independent of the other images of the batch, in training as in evaluation."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.act = nn.GELU()
        self.short = (nn.Identity() if stride == 1 and c_in == c_out
                      else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                         nn.GroupNorm(min(8, c_out), c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(y)) + self.short(x))


@ENCODERS.register("cnn", modalities=("images",))
class CNNEncoder(ModalityEncoder):
    """A small residual CNN applied to every patch image -> one token per patch.

    Args:
        in_channels: C of the images (any H, W: global average pooling ends the network).
        d_model: token width.
        width: channels of the first stage; stage i has ``width * 2**min(i, 2)`` channels.
        n_layers: number of residual stages; every stage after the first halves the resolution.
        dropout: dropout on the output tokens.
        chunk_size: images per forward chunk: bounds the transient memory of inference on large bags (in
            training, the activations of every real image are kept for backward whatever the chunk size).
        weights_path: optional local state-dict file to initialise the whole encoder from.

    Input: ``pixels [B, N, C, H, W]``. Output: ``Tokens [B, N, d]`` named like the batch, ``meta`` =
    ``coords``, ``position``, ``slide_id`` passed through; padding rows are 0.
    """

    shared_keywords = frozenset({"n_layers", "dropout"})

    def __init__(self, *, in_channels: int, d_model: int, width: int = 32, n_layers: int = 3,
                 dropout: float = 0.0, chunk_size: int = 256,
                 weights_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        owner = "cnn"
        self.in_channels = check_positive_int(in_channels, "in_channels", owner=owner)
        self.d_model = check_positive_int(d_model, "d_model", owner=owner)
        check_positive_int(width, "width", owner=owner)
        check_positive_int(n_layers, "n_layers", owner=owner)
        self.chunk_size = check_positive_int(chunk_size, "chunk_size", owner=owner)
        check_probability(dropout, "dropout", owner=owner)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.GroupNorm(min(8, width), width), nn.GELU())
        stages, c = [], width
        for i in range(n_layers):
            c_out = width * 2 ** min(i, 2)
            stages.append(_ResidualBlock(c, c_out, stride=1 if i == 0 else 2))
            c = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Linear(c, d_model), nn.LayerNorm(d_model), nn.Dropout(dropout))
        if weights_path is not None:
            load_weights(self, weights_path, owner=owner)

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int, **kwargs: Any) -> CNNEncoder:
        """Build from ``schema["images"]`` =
        ``{"kind": "pixels", "channels": C, "height": H, "width": W}``."""
        c, _, _ = _pixel_schema(schema, "cnn")
        return cls(in_channels=c, d_model=d_model, **kwargs)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, C, H, W]`` -> ``[M, d]``."""
        feats = [self.stages(self.stem(chunk)).mean(dim=(2, 3)) for chunk in x.split(self.chunk_size)]
        pooled = torch.cat(feats) if feats else x.new_zeros(0, self.head[0].in_features)
        return self.head(pooled)

    def forward(self, batch: ModalityBatch) -> Tokens:
        """``pixels [B, N, C, H, W]`` -> ``Tokens [B, N, d]``."""
        x = _real_pixels(batch, self.in_channels, "cnn")
        emb = self.encode_images(x)
        B, N = batch.mask.shape
        out = emb.new_zeros(B, N, self.d_model).masked_scatter(batch.mask[..., None], emb)
        return Tokens(values=out, mask=batch.mask, names=batch.names, modality=batch.modality,
                      present=batch.present, meta=image_meta(batch))


def _default_patch_size(height: int, width: int) -> int:
    """16 for images of 64 pixels or more (ViT-B/16 style), else a quarter of the short side (28 -> 7)."""
    short = min(height, width)
    return 16 if short >= 64 else max(1, short // 4)


@ENCODERS.register("vit", modalities=("images",))
class ViTEncoder(ModalityEncoder):
    """Vision transformer: patch embedding (conv, stride = patch size) + CLS + transformer layers per image.

    Which tokens come out depends on ``tokens``:

    - ``"auto"`` (default), decided per sample so it never depends on the rest of the batch: a sample whose
      bag holds ONE image gets that image's sub-patches as tokens (so a single ultrasound image gets a patch
      attention map); a sample with several images gets one token per image (its CLS output).
    - ``"images"``: always one token per image; ``"patches"``: always the sub-patches of every image.

    Sub-patch tokens are named ``f"{image_name}:{row}_{col}"``; their ``meta["coords"]`` are the sub-patch's
    top-left pixel (x, y) inside its image, ``meta["position"]`` its index ``row * grid_w + col`` in the
    image, ``meta["slide_id"]`` the image's slide, ``meta["image_position"] [B, T]`` the image's own
    position, and ``meta["subpatch"] [B, T]`` is True for sub-patch tokens. Image tokens pass the batch's
    names and meta through.

    Args:
        in_channels, image_size: C and (H, W) of the images; images whose sides are not multiples of the
            patch size are zero-padded at the bottom/right (no pixel is dropped).
        patch_size: sub-patch side (default: 16 from 64 pixels up, else a quarter of the short side).
        d_model, n_layers, n_heads, ffn_mult, dropout: transformer width, layers, heads
            (d_model % n_heads == 0), hidden-width multiplier of its feed-forward and dropout (the shared
            masked SDPA transformer of :mod:`clinfuse.encoders.layers`).
        chunk_size: images per forward chunk: bounds the transient memory of inference on large bags (in
            training, the activations of every real image are kept for backward whatever the chunk size).
        weights_path: optional local state-dict file to initialise the whole encoder from.

    Input: ``pixels [B, N, C, H, W]``. Output: ``Tokens [B, T, d]`` with T = max over samples of its token
    count.
    """

    shared_keywords = frozenset({"n_heads", "n_layers", "dropout", "ffn_mult"})

    def __init__(self, *, in_channels: int, image_size: tuple[int, int], d_model: int,
                 patch_size: int | None = None, n_layers: int = 2, n_heads: int = 4, ffn_mult: int = 2,
                 dropout: float = 0.0, tokens: str = "auto", chunk_size: int = 256,
                 weights_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        owner = "vit"
        self.in_channels = check_positive_int(in_channels, "in_channels", owner=owner)
        if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
            raise TypeError(f"vit: image_size must be a (height, width) pair, got {image_size!r}")
        self.height = check_positive_int(int(image_size[0]), "image_size[0]", owner=owner)
        self.width = check_positive_int(int(image_size[1]), "image_size[1]", owner=owner)
        self.d_model = check_positive_int(d_model, "d_model", owner=owner)
        check_positive_int(n_layers, "n_layers", owner=owner)
        check_heads(d_model, n_heads, owner=owner)
        check_probability(dropout, "dropout", owner=owner)
        self.chunk_size = check_positive_int(chunk_size, "chunk_size", owner=owner)
        if tokens not in ("auto", "images", "patches"):
            raise ValueError(f"vit: tokens must be 'auto', 'images' or 'patches', got {tokens!r}")
        self.tokens = tokens
        p = _default_patch_size(self.height, self.width) if patch_size is None else patch_size
        self.patch_size = check_positive_int(p, "patch_size", owner=owner)
        self.grid = (-(-self.height // p), -(-self.width // p))  # ceil: the border is zero-padded
        n_sub = self.grid[0] * self.grid[1]
        self.patch_embed = nn.Conv2d(in_channels, d_model, kernel_size=p, stride=p)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.zeros(1, n_sub + 1, d_model))
        init_trunc_normal(self.cls)
        init_trunc_normal(self.pos)
        check_positive_int(ffn_mult, "ffn_mult", owner=owner)
        self.transformer = MaskedTransformer(d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                                             ffn_mult=ffn_mult, dropout=dropout)
        if weights_path is not None:
            load_weights(self, weights_path, owner=owner)

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int, **kwargs: Any) -> ViTEncoder:
        """Build from ``schema["images"]`` =
        ``{"kind": "pixels", "channels": C, "height": H, "width": W}``."""
        c, h, w = _pixel_schema(schema, "vit")
        return cls(in_channels=c, image_size=(h, w), d_model=d_model, **kwargs)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, C, H, W]`` -> ``[M, 1 + P, d]`` (CLS first, then the P sub-patches row by row)."""
        if tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"vit: images are {tuple(x.shape[-2:])} pixels, the encoder was built for "
                             f"image_size={(self.height, self.width)} (schema height, width)")
        ph = self.grid[0] * self.patch_size - self.height
        pw = self.grid[1] * self.patch_size - self.width
        outs = []
        for chunk in x.split(self.chunk_size):
            if ph or pw:
                chunk = nn.functional.pad(chunk, (0, pw, 0, ph))
            t = rearrange(self.patch_embed(chunk), "m d gh gw -> m (gh gw) d")
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
            # every sub-patch of a real image is real: no padding inside an image
            outs.append(self.transformer(t, torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)))
        if not outs:
            return x.new_zeros(0, 1 + self.grid[0] * self.grid[1], self.d_model)
        return torch.cat(outs)

    def forward(self, batch: ModalityBatch) -> Tokens:
        """``pixels [B, N, C, H, W]`` -> ``Tokens [B, T, d]`` (see the class docstring for T and the
        names)."""
        x = _real_pixels(batch, self.in_channels, "vit")
        enc = self.encode_images(x)  # [M, 1 + P, d]
        counts = batch.mask.sum(dim=1).tolist()
        in_meta = image_meta(batch)
        gh, gw = self.grid
        p = self.patch_size
        sub_xy = torch.stack(torch.meshgrid(torch.arange(gw) * p, torch.arange(gh) * p, indexing="xy"), -1)
        sub_xy = sub_xy.reshape(-1, 2).float()  # [P, 2] (x, y), row-major over the grid
        seqs, names, coords, position, slide, image_pos, is_sub = [], [], [], [], [], [], []
        start = 0
        for b, n in enumerate(counts):
            rows = enc[start:start + n]
            idx = batch.mask[b].nonzero().flatten().tolist()  # positions of the real images in the bag
            start += n
            sub = self.tokens == "patches" or (self.tokens == "auto" and n == 1)
            if sub:
                seqs.append(rearrange(rows[:, 1:], "n p d -> (n p) d"))
                names.append([f"{batch.names[b][i]}:{k // gw}_{k % gw}" for i in idx for k in range(gh * gw)])
                coords.append(sub_xy.repeat(n, 1))
                position.append(torch.arange(gh * gw).repeat(n))
                slide.append([in_meta["slide_id"][b][i] for i in idx for _ in range(gh * gw)])
                image_pos.append(in_meta["position"][b][idx].cpu().repeat_interleave(gh * gw))
            else:
                seqs.append(rows[:, 0])
                names.append([batch.names[b][i] for i in idx])
                coords.append(in_meta["coords"][b][idx].cpu().float())
                position.append(in_meta["position"][b][idx].cpu())
                slide.append([in_meta["slide_id"][b][i] for i in idx])
                image_pos.append(in_meta["position"][b][idx].cpu())
            is_sub.append(torch.full((len(names[-1]),), sub, dtype=torch.bool))
        T = max(1, max(len(n) for n in names))
        B = len(counts)
        seqs.append(enc.new_zeros(T, self.d_model))  # pad_sequence pads to the longest, incl. this dummy
        values = pad_sequence(seqs, batch_first=True)[:B]
        lengths = torch.tensor([len(n) for n in names])
        mask = (torch.arange(T)[None, :] < lengths[:, None]).to(batch.mask.device)
        device = values.device

        def pad(ts: list[torch.Tensor], fill: float) -> torch.Tensor:
            return pad_sequence(ts + [torch.zeros((T, *ts[0].shape[1:]), dtype=ts[0].dtype)],
                                batch_first=True, padding_value=fill)[:B].to(device)

        meta = {"coords": pad(coords, float("nan")), "position": pad(position, 0), "slide_id":
                [s + [""] * (T - len(s)) for s in slide], "image_position": pad(image_pos, 0),
                "subpatch": pad(is_sub, False), "grid": (gh, gw), "patch_size": p}
        return Tokens(values=values, mask=mask, names=[nm + [""] * (T - len(nm)) for nm in names],
                      modality=batch.modality, present=batch.present, meta=meta)
