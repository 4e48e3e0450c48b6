"""Random :class:`Tokens` for aggregator tests: any bag lengths, any presence pattern, any modalities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..encoders.tokens import Tokens

_FIXED = {"clinical": 5, "genomics": 12}


def random_tokens(
    modality: str,
    *,
    d_model: int,
    lengths: Sequence[int],
    present: Sequence[bool] | None = None,
    seed: int = 0,
) -> Tokens:
    """Tokens ``[B, T, d_model]`` for ``modality`` with per-sample real lengths ``lengths``.

    Clinical and genomics use their fixed token counts (the ``lengths`` only give B); images and events
    have ``lengths[b]`` real tokens. Padding rows hold random finite values so tests catch leaks.
    Patch tokens carry ``meta["coords"]`` ``[B, T, 2]``, event tokens ``meta["times"]`` ``[B, T]``.
    """
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    present_t = torch.tensor(list(present) if present is not None else [True] * B, dtype=torch.bool)
    if modality in _FIXED:
        n_real = [_FIXED[modality] if p else 0 for p in present_t.tolist()]
        T = _FIXED[modality]
    else:
        n_real = [int(n) if p else 0 for n, p in zip(lengths, present_t.tolist())]
        T = max(max(n_real, default=0), 1)
    present_t = present_t & torch.tensor([n > 0 for n in n_real], dtype=torch.bool)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(n_real):
        mask[b, :n] = True
    values = torch.randn(B, T, d_model, generator=g)
    prefix = {"clinical": "var", "genomics": "G", "images": "", "events": "E"}.get(modality, "t")
    names = [[f"{prefix}{i}" if i < n else "" for i in range(T)] for n in n_real]
    meta: dict = {}
    if modality == "images":
        meta["coords"] = torch.randint(0, 100, (B, T, 2), generator=g).float() * 256
    if modality == "events":
        meta["times"] = torch.rand(B, T, generator=g) * 30
    return Tokens(values=values, mask=mask, names=names, modality=modality, present=present_t, meta=meta)


def random_token_set(
    modalities: Sequence[str] = ("clinical", "genomics", "images", "events"),
    *,
    d_model: int = 32,
    lengths: Sequence[int] = (7, 3, 1),
    absent: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, Tokens]:
    """One :class:`Tokens` per modality for the same B samples; ``absent[m]`` lists samples lacking ``m``."""
    absent = absent or {}
    out = {}
    for i, m in enumerate(modalities):
        present = [b not in set(absent.get(m, ())) for b in range(len(lengths))]
        out[m] = random_tokens(m, d_model=d_model, lengths=lengths, present=present, seed=seed + i)
    return out
