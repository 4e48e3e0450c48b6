"""Losses and survival utilities: cross-entropy, discrete-time hazard NLL, Cox partial likelihood.

Conventions: survival ``time`` > 0, ``event`` 1 = event observed, 0 = censored. Discrete-time bins come from
:func:`make_time_bins` on the TRAINING samples' times; a time t falls in bin k when
``edges[k] <= t < edges[k + 1]`` (``edges[0] = 0``; ``edges[-1]`` is the largest training time, and a later
time falls in the last bin). Models fitted before the last edge was finite have ``edges[-1] = inf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _as_tensor(x, *, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x,
                           dtype=dtype or like.dtype, device=like.device)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                        class_weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Mean (class-weighted) cross-entropy.

    Args:
        logits: ``[B, C]`` (C >= 2, softmax cross-entropy), or ``[B]`` / ``[B, 1]`` (one binary logit,
            sigmoid cross-entropy with labels 0/1).
        labels: int ``[B]`` class indices.
        class_weights: optional ``[C]`` (``[2]`` for a single binary logit); the weighted mean divides by
            the summed weights of the batch, as ``torch.nn.functional.cross_entropy`` does.
    """
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    labels = torch.as_tensor(labels, device=logits.device).long()
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [B] = {tuple(logits.shape[:1])}, got {tuple(labels.shape)}")
    n_classes = 2 if logits.dim() == 1 else logits.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be class indices in [0, {n_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    weight = None if class_weights is None else _as_tensor(class_weights, like=logits)
    if weight is not None and (weight.shape != (n_classes,) or bool((weight < 0).any())):
        raise ValueError(f"class_weights must be {n_classes} non-negative numbers, got {weight.tolist()}")
    if logits.dim() == 1:
        per_sample = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
        if weight is None:
            return per_sample.mean()
        w = weight[labels]
        return (per_sample * w).sum() / w.sum().clamp_min(torch.finfo(logits.dtype).tiny)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C] or [B], got {tuple(logits.shape)}")
    return F.cross_entropy(logits, labels, weight=weight)


def make_time_bins(time, event, n_bins: int) -> np.ndarray:
    """Bin edges ``[n_bins + 1]``: the inner ones at quantiles of the observed EVENT times.

    ``edges[0] = 0``; the inner edges are the 1/K, ..., (K-1)/K quantiles of the event times (censored
    times are ignored there), so each bin holds about the same number of training events; ``edges[-1]`` is
    the largest time, event or censored, so the bins cover the whole follow-up and the last bin has a
    length (its hazard is a rate that S(t) can be extrapolated with). Raises ``ValueError`` when there are
    fewer distinct event times than bins (ask for fewer bins).
    """
    t = np.asarray(time.detach().cpu() if isinstance(time, torch.Tensor) else time, dtype=float).ravel()
    e = np.asarray(event.detach().cpu() if isinstance(event, torch.Tensor) else event, dtype=float).ravel()
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    if t.shape != e.shape:
        raise ValueError(f"time and event must have the same length, got {t.shape} and {e.shape}")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError("survival times must be finite and > 0")
    if not np.all(np.isin(e, (0.0, 1.0))):
        raise ValueError("event must be 0 (censored) or 1 (event observed)")
    event_times = t[e == 1]
    distinct = np.unique(event_times)
    if len(distinct) < n_bins:
        raise ValueError(f"{len(distinct)} distinct event times cannot make {n_bins} time bins; "
                         f"use n_bins <= {max(len(distinct), 1)}")
    probs = np.arange(1, n_bins) / n_bins
    inner = np.quantile(event_times, probs)
    edges = np.concatenate([[0.0], inner, [t.max()]])
    if np.any(np.diff(edges) <= 0):
        # ties: quantiles of >= K distinct times are strictly increasing and below the largest one
        edges = np.concatenate([[0.0], np.quantile(distinct, probs), [t.max()]])
    return edges


def time_to_bin(time: torch.Tensor, bin_edges) -> torch.Tensor:
    """Bin index ``[B]`` (long) of each time: k with ``edges[k] <= t < edges[k + 1]``."""
    edges = _as_tensor(bin_edges, like=time.float(), dtype=torch.float64)
    inner = edges[1:-1].contiguous()
    return torch.bucketize(time.to(torch.float64).contiguous(), inner, right=True)


def discrete_time_nll(logits: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                      bin_edges) -> torch.Tensor:
    """Censoring-aware negative log-likelihood of discrete-time hazards (mean over the batch).

    With h_k = sigmoid(logit_k) and the sample's bin y: an event contributes
    ``-log h_y - sum_{j<y} log(1 - h_j)``; a censored sample survived bin y:
    ``-sum_{j<=y} log(1 - h_j)`` (the convention of MCAT / Zadeh & Schmid).

    Args:
        logits: ``[B, K]`` hazard logits; time: ``[B]`` > 0; event: ``[B]`` 0/1; bin_edges: ``[K + 1]``.
    """
    if logits.dim() != 2:
        raise ValueError(f"hazard logits must be [B, K], got {tuple(logits.shape)}")
    edges = np.asarray(bin_edges.cpu() if isinstance(bin_edges, torch.Tensor) else bin_edges, dtype=float)
    if edges.ndim != 1 or len(edges) != logits.shape[1] + 1:
        raise ValueError(f"bin_edges must have K + 1 = {logits.shape[1] + 1} entries, got {edges.shape}")
    time = _as_tensor(time, like=logits)
    event = _as_tensor(event, like=logits)
    if time.shape != logits.shape[:1] or event.shape != logits.shape[:1]:
        raise ValueError(f"time and event must be [B] = {tuple(logits.shape[:1])}")
    y = time_to_bin(time, edges)
    log_h = F.logsigmoid(logits)
    log_1mh = F.logsigmoid(-logits)
    k = torch.arange(logits.shape[1], device=logits.device)
    before = (k[None, :] < y[:, None]).to(logits.dtype)
    through = (k[None, :] <= y[:, None]).to(logits.dtype)
    log_h_y = log_h.gather(1, y[:, None])[:, 0]
    ll_event = log_h_y + (log_1mh * before).sum(dim=1)
    ll_censored = (log_1mh * through).sum(dim=1)
    return -(event * ll_event + (1 - event) * ll_censored).mean()


def cox_partial_nll(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow ties, divided by the number of events.

    ``-(1/D) sum_{i: event} [r_i - log sum_{j: T_j >= T_i} exp(r_j)]``. Tied event times share the same
    risk set (Breslow). A batch without events returns 0 (kept in the graph).

    Args:
        risk: ``[B]`` log-risk (higher = worse); time: ``[B]``; event: ``[B]`` 0/1.
    """
    if risk.dim() == 2 and risk.shape[1] == 1:
        risk = risk[:, 0]
    if risk.dim() != 1:
        raise ValueError(f"risk must be [B], got {tuple(risk.shape)}")
    time = _as_tensor(time, like=risk)
    event = _as_tensor(event, like=risk)
    if time.shape != risk.shape or event.shape != risk.shape:
        raise ValueError(f"time and event must be [B] = {tuple(risk.shape)}")
    n_events = event.sum()
    if float(n_events) == 0:
        return risk.sum() * 0.0
    order = torch.argsort(time, descending=True, stable=True)
    r_desc, t_desc = risk[order], time[order]
    cum = torch.logcumsumexp(r_desc, dim=0)  # log sum over the first i+1 (the latest times)
    # risk set of time t = everyone with T >= t: the last position in descending order whose time is >= t
    asc = torch.flip(t_desc, dims=[0]).contiguous()
    last = len(time) - torch.searchsorted(asc, time.contiguous(), right=False) - 1
    log_risk_set = cum[last]
    return -((risk - log_risk_set) * event).sum() / n_events


def hazards_to_survival(logits: torch.Tensor) -> torch.Tensor:
    """Survival at the end of each bin, ``S_k = prod_{j<=k} (1 - sigmoid(logit_j))``, ``[B, K]``."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=-1))


def risk_from_survival(survival: torch.Tensor) -> torch.Tensor:
    """A risk score ``[B]`` from survival curves ``[B, K]``: ``-sum_k S_k`` (higher = worse, as MCAT)."""
    return -survival.sum(dim=-1)
