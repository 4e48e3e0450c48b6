"""``event_transformer``: timestamped EHR events as tokens, one token per event.

Token t of sample b (real when ``mask[b, t]``) is the sum of

* a code embedding from the fitted vocabulary (``codes``: 0 = padding, 1 = unknown code, 2.. = vocabulary
  index + 2; the padding row of the table is zero and never trained);
* where ``has_value``: ``values * value_weight[code] + value_bias`` (a per-code direction, since a value
  means something different for each code);
* a continuous time encoding of ``times`` (days before the prediction time, >= 0): sinusoids
  ``sin(2 pi t / p), cos(2 pi t / p)`` over ``d_model // 2`` periods p log-spaced from ``min_period``
  (1 hour) to ``max_period`` (10 years), as in temporal self-attention EHR models, then a learned linear map;
* optionally a segment (admission / visit) embedding; segments beyond ``n_segments - 1`` share the last one.

then LayerNorm and masked transformer layers (key-padding masks, memory linear in the number of events,
see :mod:`clinfuse.encoders.layers`), so the preprocessor's 8,192 events per patient fit. The tokens carry
``meta["times"]`` ``[B, T]``, ``meta["code"]`` ``[B][T]`` (raw codes), ``meta["segments"]`` ``[B, T]`` and
``meta["n_cut"]`` ``[B]`` (older events the preprocessor cut, so reports can say how many were not seen).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..datasets.batch import ModalityBatch
from .base import ENCODERS, ModalityEncoder
from .common import check_heads, check_modality, check_positive_int
from .layers import AttentionKind, MaskedTransformer
from .tokens import Tokens


class SinusoidalTimeEncoding(nn.Module):
    """Continuous time in days ``[B, T]`` -> ``[B, T, d_model]`` (fixed sinusoids + learned linear map)."""

    def __init__(self, *, d_model: int, min_period: float = 1.0 / 24.0, max_period: float = 3650.0) -> None:
        super().__init__()
        if not 0 < min_period < max_period:
            raise ValueError(f"need 0 < min_period < max_period, got {min_period!r}, {max_period!r}")
        n_freq = max(d_model // 2, 1)
        periods = torch.logspace(math.log10(min_period), math.log10(max_period), n_freq)
        self.register_buffer("omega", 2 * math.pi / periods, persistent=False)
        self.proj = nn.Linear(2 * n_freq, d_model)

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        angle = times.unsqueeze(-1) * self.omega  # [B, T, F]
        return self.proj(torch.cat([angle.sin(), angle.cos()], dim=-1))


@ENCODERS.register("event_transformer", modalities=("events",))
class EventTransformer(ModalityEncoder):
    """Event batch (``codes, values, has_value, times, segments [B, T]``) -> ``Tokens [B, T, d_model]``.

    Args (keyword-only):
        vocab_size: number of codes in the fitted vocabulary (valid codes are ``0 .. vocab_size + 1``).
        has_values: use ``values``/``has_value`` (the schema's ``has_values``).
        d_model, n_heads, n_layers, ffn_mult, dropout: transformer size (``d_model % n_heads == 0``).
        use_segments: add a segment embedding; n_segments: its size (older segments share the last row).
        min_period, max_period: range of the sinusoid periods, in days.
        attention, n_latents, query_chunk_size: see :class:`~clinfuse.encoders.layers.MaskedTransformer`.
        max_tokens: raise ``ValueError`` when a batch has more events per sample than this (None = no limit).
    """

    shared_keywords = frozenset({"n_heads", "n_layers", "dropout", "ffn_mult"})

    def __init__(
        self,
        *,
        vocab_size: int,
        has_values: bool = True,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 1,
        ffn_mult: int = 2,
        dropout: float = 0.1,
        use_segments: bool = True,
        n_segments: int = 8,
        min_period: float = 1.0 / 24.0,
        max_period: float = 3650.0,
        attention: AttentionKind = "full",
        n_latents: int = 32,
        query_chunk_size: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model", owner="event_transformer")
        check_heads(d_model, n_heads, owner="event_transformer")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 0:
            raise ValueError(f"event_transformer (events): vocab_size must be a non-negative integer, "
                             f"got {vocab_size!r}")
        if n_segments < 1:
            raise ValueError(f"event_transformer (events): n_segments must be >= 1, got {n_segments!r}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"event_transformer (events): max_tokens must be positive or None, "
                             f"got {max_tokens!r}")
        self.vocab_size = vocab_size
        self.has_values = bool(has_values)
        self.use_segments = bool(use_segments)
        self.n_segments = n_segments
        self.max_tokens = max_tokens
        self.code_embedding = nn.Embedding(vocab_size + 2, d_model, padding_idx=0)
        if self.has_values:
            self.value_weight = nn.Embedding(vocab_size + 2, d_model, padding_idx=0)
            self.value_bias = nn.Parameter(torch.zeros(d_model))
        self.time_encoding = SinusoidalTimeEncoding(d_model=d_model, min_period=min_period,
                                                    max_period=max_period)
        if self.use_segments:
            self.segment_embedding = nn.Embedding(n_segments, d_model)
        self.norm_in = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.transformer = MaskedTransformer(
            d_model=d_model, n_heads=n_heads, n_layers=n_layers, ffn_mult=ffn_mult, dropout=dropout,
            attention=attention, n_latents=n_latents, query_chunk_size=query_chunk_size,
        )

    @classmethod
    def from_schema(cls, schema: dict[str, Any], *, d_model: int, **kwargs: Any) -> EventTransformer:
        if "vocab" not in schema:
            raise ValueError(f"event_transformer needs an events schema with 'vocab', "
                             f"got keys {sorted(schema)}")
        kwargs.setdefault("has_values", bool(schema.get("has_values", True)))
        return cls(vocab_size=len(schema["vocab"]), d_model=d_model, **kwargs)

    def _check(self, batch: ModalityBatch) -> dict[str, torch.Tensor]:
        where = "event_transformer (events)"
        check_modality(batch, "events", owner="event_transformer")
        need = ["codes", "times"] + (["values", "has_value"] if self.has_values else [])
        missing = [k for k in need if k not in batch.tensors]
        if missing:
            raise ValueError(f"{where}: the batch lacks tensors {missing}")
        t = batch.tensors
        for key in need + [k for k in ("segments",) if k in t]:
            if t[key].shape != batch.mask.shape:
                raise ValueError(f"{where}: {key} has shape {tuple(t[key].shape)}, "
                                 f"expected {tuple(batch.mask.shape)}")
        if t["codes"].dtype.is_floating_point or t["codes"].dtype == torch.bool:
            raise TypeError(f"{where}: codes must be an integer tensor, got {t['codes'].dtype}")
        real = batch.mask & batch.present.unsqueeze(1)
        if self.max_tokens is not None and batch.n_tokens > self.max_tokens:
            raise ValueError(f"{where}: {batch.n_tokens} events per sample exceed "
                             f"max_tokens={self.max_tokens}; lower the Preprocessor's max_events or raise "
                             "max_tokens")
        codes = t["codes"].masked_fill(~real, 0)
        if codes.numel():
            top, low = int(codes.max()), int(codes.min())
            if top >= self.vocab_size + 2 or low < 0:
                bad = top if top >= self.vocab_size + 2 else low
                rows = sorted({int(r) for r in ((codes == bad).nonzero()[:, 0])})[:5]
                raise ValueError(f"{where}: code {bad} (batch rows {rows}) is outside "
                                 f"0..{self.vocab_size + 1} for a vocabulary of size {self.vocab_size} "
                                 f"(0 = padding, 1 = unknown); max code in batch is {top}: was the batch "
                                 "made by a different preprocessor?")
        times = t["times"]
        bad_time = real & ~(torch.isfinite(times) & (times >= 0))
        if bool(bad_time.any()):
            rows = sorted({int(r) for r in bad_time.nonzero()[:, 0]})[:5]
            raise ValueError(f"{where}: times must be finite days before the prediction time (>= 0); "
                             f"batch rows {rows} have negative or non-finite times")
        if "segments" in t and bool((t["segments"].masked_fill(~real, 0) < 0).any()):
            raise ValueError(f"{where}: segments must be >= 0 (0 = current admission)")
        return {"codes": codes, "real": real}

    def forward(self, batch: ModalityBatch) -> Tokens:
        """Event tensors ``[B, T]`` -> ``Tokens`` ``[B, T, d_model]`` with the event names of the batch."""
        checked = self._check(batch)
        codes, real = checked["codes"], checked["real"]
        t = batch.tensors
        times = t["times"].masked_fill(~real, 0.0)
        x = self.code_embedding(codes) + self.time_encoding(times)
        if self.has_values:
            hv = (t["has_value"] & real).unsqueeze(-1)
            values = t["values"].masked_fill(~hv.squeeze(-1), 0.0).unsqueeze(-1)
            x = x + hv * (values * self.value_weight(codes) + self.value_bias)
        segments = t.get("segments")
        if segments is None:
            segments = torch.zeros_like(codes)
        segments = segments.masked_fill(~real, 0)
        if self.use_segments:
            x = x + self.segment_embedding(segments.clamp(max=self.n_segments - 1))
        x = self.transformer(self.drop(self.norm_in(x)), real)
        n_cut = t.get("n_cut")
        if n_cut is None:
            n_cut = torch.zeros(batch.batch_size, dtype=torch.long, device=codes.device)
        raw = batch.meta.get("code")
        if raw is None:  # names are "code@time"
            raw = [[n.rsplit("@", 1)[0] if n else "" for n in row] for row in batch.names]
        meta = {"times": times, "code": raw, "segments": segments, "n_cut": n_cut}
        names = [list(r) for r in batch.names]
        return Tokens(values=x, mask=real, names=names, modality=batch.modality, present=batch.present,
                      meta=meta)
