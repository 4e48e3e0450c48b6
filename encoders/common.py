"""Small helpers shared by the encoders: argument checks, 2-D sinusoidal positions, weight files.

Nothing here knows about a particular modality; each helper is used by at least two encoders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..datasets.batch import ModalityBatch
from ..datasets.modalities import layout_of

# ----------------------------------------------------------------------------------------------------------
# argument checks (user input -> ValueError / TypeError naming what was expected)
# ----------------------------------------------------------------------------------------------------------


def check_int(value: Any, name: str, *, owner: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else a TypeError / ValueError naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def check_positive_int(value: Any, name: str, *, owner: str) -> int:
    """``value`` as an int >= 1, else a TypeError / ValueError naming ``owner`` and ``name``."""
    return check_int(value, name, owner=owner, minimum=1)


def check_probability(value: Any, name: str, *, owner: str) -> float:
    """``value`` as a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a float, got {type(value).__name__} ({value!r})")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {value}")
    return float(value)


def check_heads(d_model: int, n_heads: int, *, owner: str) -> None:
    """Attention needs ``d_model`` divisible by ``n_heads``."""
    check_positive_int(n_heads, "n_heads", owner=owner)
    if d_model % n_heads:
        raise ValueError(f"{owner}: d_model={d_model} is not divisible by n_heads={n_heads}; "
                         f"choose n_heads among the divisors of {d_model}")


def check_modality(batch: ModalityBatch, expected: str, *, owner: str) -> None:
    if not isinstance(batch, ModalityBatch):
        raise TypeError(f"{owner} expects a ModalityBatch, got {type(batch).__name__}")
    if layout_of(batch.modality) != expected:
        raise ValueError(f"{owner} encodes the {expected!r} modality (or one with its batch layout), got a "
                         f"batch of {batch.modality!r}")


def require_tensor(batch: ModalityBatch, key: str, *, owner: str) -> torch.Tensor:
    """``batch.tensors[key]`` or a ValueError naming the modality and the keys the batch has."""
    if key not in batch.tensors:
        raise ValueError(f"{owner}: the {batch.modality!r} batch has no {key!r} tensor "
                         f"(has {sorted(batch.tensors)}); is the encoder matched to the right image kind?")
    return batch.tensors[key]


# ----------------------------------------------------------------------------------------------------------
# positions
# ----------------------------------------------------------------------------------------------------------


def sincos_2d(coords: torch.Tensor, d_model: int, *, scale: float = 1.0, max_wavelength: float = 10_000.0,
              ) -> torch.Tensor:
    """Fixed 2-D sinusoidal encoding of patch coordinates (not differentiable in ``coords``: they are data).

    Args:
        coords: float ``[..., 2]`` (x, y); a row with a NaN (or infinite) coordinate gets a zero vector (no
            positional term), so patches of unknown position are not pretended to sit at the origin.
        d_model: output width; the first ``4 * (d_model // 4)`` channels are used (x sin, x cos, y sin, y cos
            over geometric frequencies, as in ViT/MAE 2-D encodings), the rest stay 0.
        scale: coordinates are multiplied by it first (e.g. 1/256 = one unit per 256-pixel tile). The one
            convention of clinfuse: callers that speak of a tile size pass ``scale=1 / size``.

    Returns:
        float ``[..., d_model]``.

    Patches of a slide sit on a grid, so each axis has few distinct values (about sqrt(N)): the sines are
    computed once per distinct value and gathered, instead of N x d_model/2 times.
    """
    flat = coords.reshape(-1, 2)
    out = flat.new_zeros(flat.shape[0], d_model)
    n_freq = d_model // 4
    if n_freq:
        (table_x, index_x), (table_y, index_y) = sincos_tables(flat, d_model, scale=scale,
                                                               max_wavelength=max_wavelength)
        out[:, : 2 * n_freq] = table_x[index_x]
        out[:, 2 * n_freq : 4 * n_freq] = table_y[index_y]
    return out.view(*coords.shape[:-1], d_model)


def sincos_tables(coords: torch.Tensor, d_model: int, *, scale: float = 1.0, max_wavelength: float = 10_000.0,
                  ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Per axis, ``(table [U + 1, 2 * (d_model // 4)], index [M])`` for ``coords [M, 2]``.

    ``table[index]`` is that axis's (sin, cos) block of :func:`sincos_2d`; the last table row is zeros and
    is where rows with an unknown (NaN or infinite) coordinate point, so they get no positional term. Lets a
    caller add the encoding chunk by chunk without materialising ``[M, d_model]``.
    """
    n_freq = d_model // 4
    known = torch.isfinite(coords).all(dim=-1)  # [M]
    xy = torch.where(known[:, None], coords, torch.zeros_like(coords)) * scale
    omega = max_wavelength ** (-torch.arange(n_freq, device=coords.device, dtype=coords.dtype) / n_freq)
    out = []
    for axis in range(2):
        values, inverse = torch.unique(xy[:, axis], return_inverse=True)
        angle = values[:, None] * omega  # [U, n_freq]
        table = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)  # [U, 2 * n_freq]
        table = torch.cat([table, table.new_zeros(1, 2 * n_freq)])
        out.append((table, inverse.masked_fill(~known, values.shape[0])))
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------------------
# weight files (local only; nothing is downloaded)
# ----------------------------------------------------------------------------------------------------------


def load_weights(module: nn.Module, path: str | os.PathLike[str], *, owner: str) -> None:
    """Initialise ``module`` from a local state-dict file (``torch.save(module.state_dict(), path)``).

    The file is read with ``torch.load(weights_only=True)`` (no pickled code runs). A checkpoint that wraps
    the weights as ``{"state_dict": {...}}`` is accepted. Missing, unexpected or wrongly shaped keys raise a
    ValueError listing them, so a file made for another architecture is never half-loaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{owner}: weights_path {path!r} is not a file (weights are never downloaded; "
                         "pass a local state-dict file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise TypeError(f"{owner}: {path!r} does not hold a state dict (got {type(state).__name__})")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state)
                   if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "") or "none"
        raise ValueError(f"{owner}: weights in {path!r} do not match the architecture; missing keys: "
                         f"{show(missing)}; unexpected keys: {show(unexpected)}; wrong shapes: {show(shape)}")
    module.load_state_dict(state, strict=True)


def init_trunc_normal(param: torch.Tensor, std: float = 0.02) -> None:
    """ViT-style truncated-normal initialisation of a parameter (in place)."""
    with torch.no_grad():
        nn.init.trunc_normal_(param, std=std, a=-2 * std, b=2 * std)



def image_meta(batch: ModalityBatch) -> dict[str, Any]:
    """``Tokens.meta`` for image tokens that are the batch's patches: ``coords [B, T, 2]``,
    ``position [B, T]``, ``slide_id [B][T]`` passed through (padding: NaN coords, position 0, slide "")."""
    B, T = batch.mask.shape
    coords = batch.tensors.get("coords")
    if coords is None:
        coords = torch.full((B, T, 2), float("nan"), device=batch.mask.device)
    position = batch.tensors.get("position")
    if position is None:
        position = torch.arange(T, device=batch.mask.device).expand(B, T).masked_fill(~batch.mask, 0)
    slide = batch.meta.get("slide_id") or [[""] * T for _ in range(B)]
    return {"coords": coords, "position": position, "slide_id": slide}
