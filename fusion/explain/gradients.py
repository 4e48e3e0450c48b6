"""Integrated gradients over a fitted network, batched over the interpolation steps (no captum).

Integrated gradients (Sundararajan et al., 2017) attribute ``f(x) - f(x')`` to the inputs ``x_i`` as

    IG_i = (x_i - x'_i) * integral_0^1 df/dx_i (x' + a (x - x')) da,

and they are *complete*: ``sum_i IG_i = f(x) - f(x')``, up to the quadrature error. The integral is
taken with Gauss-Legendre nodes on [0, 1] (exact for polynomials of degree ``2 n - 1``; the networks here
are smooth, so 32 to 64 nodes put the completeness gap well below 1e-3 of the output's range). All nodes of
one sample are one batch of the network: a forward and one backward per output.

What is interpolated (the "inputs" ``x``) is a float tensor inside the network: the gene values, the
standardised clinical values, the embedding rows of categorical codes (:class:`EmbeddingPaths`), or the
token embeddings an encoder outputs. Other modalities keep their own tokens, encoded once per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ...datasets.batch import Batch, ModalityBatch
from ...encoders.tokens import Tokens


def gauss_legendre(n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alpha [n]`` in (0, 1) and weights ``[n]`` (summing to 1) of the n-point Gauss-Legendre rule."""
    if not isinstance(n_steps, int | np.integer) or isinstance(n_steps, bool) or n_steps < 2:
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}")
    nodes, weights = np.polynomial.legendre.leggauss(int(n_steps))
    return torch.as_tensor((nodes + 1) / 2, dtype=torch.float32), torch.as_tensor(weights / 2,
                                                                                 dtype=torch.float32)


def expand(value: Any, n: int, rows: int = 1) -> Any:
    """A per-sample value of ``rows`` samples (a tensor ``[rows, ...]``, a ``[rows][T]`` grid, a dict of
    them) with each sample's row repeated ``n`` times in place (sample b's copies are rows ``b*n..b*n+n``);
    anything else (set definitions, gene lists) is shared."""
    if isinstance(value, torch.Tensor):
        if not value.dim() or value.shape[0] != rows:
            return value
        return value.expand(n, *value.shape[1:]) if rows == 1 else value.repeat_interleave(n, dim=0)
    if isinstance(value, list) and len(value) == rows and all(isinstance(v, list) for v in value):
        return [v for v in value for _ in range(n)]
    if isinstance(value, dict):
        return {k: expand(v, n, rows) for k, v in value.items()}
    return value


def expand_batch(batch: Batch, n: int) -> Batch:
    """``batch`` (B samples) with each sample repeated ``n`` times in place (``B * n`` rows)."""
    B = len(batch.sample_ids)
    mods = {m: ModalityBatch(mb.modality, expand(mb.mask, n, B), expand(mb.present, n, B),
                             expand(mb.tensors, n, B), expand(mb.names, n, B), expand(mb.meta, n, B))
            for m, mb in batch.modalities.items()}
    return Batch([s for s in batch.sample_ids for _ in range(n)],
                 [p for p in batch.patient_ids for _ in range(n)], mods)


def expand_tokens(tokens: Tokens, n: int) -> Tokens:
    """``Tokens`` of B samples with each sample repeated ``n`` times in place."""
    B = tokens.values.shape[0]
    return replace(tokens, values=expand(tokens.values, n, B), mask=expand(tokens.mask, n, B),
                   names=expand(tokens.names, n, B), present=expand(tokens.present, n, B),
                   meta=expand(tokens.meta, n, B))


def outputs_from_tokens(network: nn.Module, tokens: dict[str, Tokens], batch: Batch) -> torch.Tensor:
    """The network's outputs (logits / hazard logits ``[n, C]`` or Cox risk ``[n]``) from encoded tokens:
    ``FusionNetwork.forward`` in eval mode after the encoders (token types, aggregator, head, offsets, the
    wide term read from ``batch``): :meth:`~clinfuse.fusion.network.FusionNetwork.fuse`."""
    outputs, _ = network.fuse(network.token_types(tokens), lambda: network.wide(batch))
    return outputs


def explained_outputs(task: str, outputs: torch.Tensor) -> torch.Tensor:
    """Network outputs -> what is attributed, ``[n, C]``: class probabilities (classification), or the risk
    as one column (survival: the Cox risk, or ``-sum_k S(t_k)`` of the discrete head), the units of the
    ``shap`` rows."""
    from ..losses import hazards_to_survival, risk_from_survival

    if task == "classification":
        return torch.softmax(outputs, dim=-1)
    if outputs.dim() == 1:
        return outputs[:, None]
    return risk_from_survival(hazards_to_survival(outputs))[:, None]


def integrate(out: torch.Tensor, weights: torch.Tensor, leaves: Sequence[torch.Tensor],
              deltas: Sequence[torch.Tensor], *, sum_to_one: bool = False) -> list[torch.Tensor]:
    """Per leaf, ``[C, B, ...]``: ``delta_b * sum_i w_i d out[b, i, c] / d leaf[b, i]`` for every output c.

    Args:
        out: ``[B * n, C]`` outputs of the path points of B samples (row ``b * n + i`` = sample b, node i;
            rows with weight 0 are carried along, e.g. the end points ``alpha = 0, 1`` whose outputs are
            ``f(x')`` and ``f(x)``). Samples are independent rows of the network (eval mode).
        weights: quadrature weights ``[n]``.
        leaves: the path tensors ``[B * n, ...]`` (requires_grad) ``out`` was computed from.
        deltas: ``x - x'`` per leaf, ``[B, ...]``.
        sum_to_one: the C outputs sum to 1 everywhere (class probabilities), so their gradients sum to 0:
            the last output's attributions are minus the sum of the others' (one backward fewer; a binary
            classifier needs one).
    """
    n_out, n = out.shape[1], len(weights)
    w = weights.repeat(out.shape[0] // n)
    backward = n_out - 1 if sum_to_one and n_out > 1 else n_out
    sums: list[list[torch.Tensor]] = [[] for _ in leaves]
    for c in range(backward):
        grads = torch.autograd.grad((out[:, c] * w).sum(), list(leaves),
                                    retain_graph=c + 1 < backward, allow_unused=True)
        for k, (g, delta) in enumerate(zip(grads, deltas)):
            g = torch.zeros_like(leaves[k]) if g is None else g
            sums[k].append(g.reshape(-1, n, *g.shape[1:]).sum(1) * delta)
    if backward < n_out:
        for s in sums:
            s.append(-torch.stack(s).sum(0))
    return [torch.stack(s).detach() for s in sums]


def path_nodes(n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``alphas [n + 2]`` and ``weights [n + 2]``: the Gauss-Legendre nodes, then the end points 0 and 1
    with weight 0 (so one batch also gives ``f(x')`` and ``f(x)``, rows -2 and -1)."""
    nodes, weights = gauss_legendre(n_steps)
    return torch.cat([nodes, torch.tensor([0.0, 1.0])]), torch.cat([weights, torch.zeros(2)])


class EmbeddingPaths:
    """Integrated gradients through ``nn.Embedding`` lookups of discrete codes.

    A code has no straight path to another code, but its embedding row does. First, :meth:`record` runs
    the lookups on the baseline codes (one row) and keeps every call's output, in call order. Then, while
    active, the k-th call of the path's forward (``B * n`` rows: node i of sample b is row ``b * n + i``,
    with the sample's codes) returns ``e' + alpha_i (e - e')`` as a leaf tensor (``e``: the sample's row,
    ``e'``: the baseline's row of the same call). Its attribution is ``(e - e') . integral grad`` summed
    over the embedding width: the categorical input's share of the completeness sum. ``calls`` keeps
    ``(owner, leaf, e - e' [B, ...])`` in order so the caller maps them to columns. Lookups that are not
    one row per path point (e.g. of positions) are left alone.
    """

    def __init__(self, modules: Sequence[tuple[str, nn.Embedding]], alphas: torch.Tensor, rows: int) -> None:
        self.modules, self.alphas, self.rows = list(modules), alphas.repeat(rows), rows
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (owner, leaf [n, ...], delta)
        self.baseline: list[torch.Tensor | None] = []
        self._handles: list[Any] = []
        self._recording = False

    def _hook(self, owner: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            rows = 1 if self._recording else len(self.alphas)
            per_row = output.dim() >= 2 and output.shape[0] == rows
            if self._recording:
                self.baseline.append(output.detach() if per_row else None)
                return None
            k = len(self.calls)
            e0 = self.baseline[k] if k < len(self.baseline) else None
            if not per_row or e0 is None:
                self.calls.append((owner, None, None))  # keeps the call order aligned with the record
                return None
            e = output.detach()
            a = self.alphas.reshape(rows, *([1] * (output.dim() - 1)))
            leaf = (e0 + a * (e - e0)).requires_grad_(True)
            delta = (e - e0).reshape(self.rows, -1, *e.shape[1:])[:, 0]  # [B, ...]: one per sample
            self.calls.append((owner, leaf, delta))
            return leaf

        return hook

    def record(self, run: Callable[[], Any]) -> None:
        """Run the baseline's lookups (``run`` calls them on a one-row batch) and keep their outputs."""
        self.baseline, self._recording = [], True
        handles = [m.register_forward_hook(self._hook(owner)) for owner, m in self.modules]
        try:
            with torch.no_grad():
                run()
        finally:
            for h in handles:
                h.remove()
            self._recording = False

    def __enter__(self) -> EmbeddingPaths:
        self.calls.clear()
        self._handles = [m.register_forward_hook(self._hook(owner)) for owner, m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
