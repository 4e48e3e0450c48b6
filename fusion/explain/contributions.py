"""Exact Shapley contributions of the modalities to each prediction, by masking whole modalities.

For one sample with present modalities P (M = |P|) and one output f (a class logit; the Cox risk; for a
discrete-time head the risk ``-sum_k S_k`` the library reports), the value of a coalition S of P is the
network's output when it sees only the modalities of S: every other one is masked exactly as a missing
modality (token ``mask`` and ``present`` False, what modality dropout trains), and the wide linear term
scores only the inputs of S. The encoders run once per batch; the 2^M coalitions reuse their tokens through
token types, aggregator, head, offsets and wide term (:meth:`~clinfuse.fusion.network.FusionNetwork.fuse`)::

    phi_m = sum over S in P \\ {m} of  |S|! (M - |S| - 1)! / M!  * (v(S + {m}) - v(S))

The values are exact (every coalition is evaluated, no sampling), signed, in output units, and efficient:
``v({}) + sum_m phi_m = v(P)``, the model's prediction.

The base ``v({})`` is, by default (``base="network"``), the network's own output with every modality
masked (finite for every registered aggregator, one value for all samples). With it the values are
Shapley values of one game, so a modality the model ignores (``v(S + {m}) = v(S)`` for every S, the
empty coalition included) gets exactly 0, however much attention lands on it. That output is an
extrapolation (modality dropout always keeps one modality of a sample), which only moves the credit among
the modalities that do change the output. ``base="mean"`` puts the mean prediction over a background
cohort (the explained one unless ``background=`` is given) in place of ``v({})``, what SHAP calls the
expected value; every other coalition stays the masked network, so a modality the model ignores then gets
``(v({m}) - mean) / M``-like credit whenever the masked network's output differs from that mean: a
different question (the prediction against an average patient), not the null-player property.
A modality the sample lacks contributes exactly 0.

Unlike the attention ``modality`` kind (how the attention is shared among the modalities), a contribution
is what the modality changes in the output: a modality the model ignores gets about 0 however much
attention lands on it.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from math import factorial
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...encoders.tokens import Tokens
from .report import AttentionReport
from .table import conform_frame

KIND = "modality_contribution"
"""The report kind of the contributions (``value`` = phi, ``raw_value`` = the base ``v({})``)."""

SHORT_TOKENS = 64
"""A coalition that masks a modality with more tokens than this (a bag) fuses one padding slot of it."""

MAX_MODALITIES = 10
"""At most this many present modalities per sample: the exact value costs 2^M fusion passes."""


@lru_cache(maxsize=None)
def shapley_matrix(n: int) -> np.ndarray:
    """``[n, 2^n]`` float64 W with ``phi = W @ v`` for coalition values ``v`` indexed by bit mask (bit j set:
    player j is in the coalition)."""
    weight = [factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)]
    W = np.zeros((n, 2 ** n))
    for S in range(2 ** n):
        size = bin(S).count("1")
        for j in range(n):
            if S >> j & 1:
                W[j, S] += weight[size - 1]  # v(S) enters as v(S' + {j}), S' = S without j
            else:
                W[j, S] -= weight[size]
    return W


def modality_contributions(model: Any, cohort: Any, *, base: str = "network", background: Any = None,
                           batch_size: int | None = None, chunk_size: int = 256) -> AttentionReport:
    """Exact Shapley contributions of each present modality to each output, for every sample of ``cohort``.

    Args:
        model: a fitted :class:`~clinfuse.fusion.FusionModel`.
        cohort: the samples to explain.
        base: what "no modality known" predicts, ``v({})``: ``"network"`` (default), the network's own
            output with every modality masked (a modality the model ignores gets exactly 0); ``"mean"``,
            the mean prediction over ``background`` (see the module docstring).
        background: the cohort whose mean prediction is the base with ``base="mean"`` (default:
            ``cohort``); e.g. the training cohort, so that the base does not depend on who is explained.
        batch_size: samples encoded together (default: the model's batch size).
        chunk_size: coalition passes (rows) per aggregator call; lower it for very large bags.

    Returns:
        An :class:`AttentionReport` with rows of kind ``modality_contribution``: one per sample, present
        modality (``modality`` = ``token`` = its name) and output (``target_class`` = the class for a
        classifier, NA for the one risk of a survival model); ``value`` = the modality's Shapley value in
        output units (log-odds or risk), ``raw_value`` = the base ``v({})``. Absent modalities have no row
        (:meth:`AttentionReport.modality_contributions` shows them as 0). Attributes ``base_values`` and
        ``outputs`` (sample -> array over outputs) hold ``v({})`` and the prediction ``v(P)``, so that a
        sample's values sum to ``outputs - base_values``; ``network_base`` is the network's own all-masked
        output (the base of ``base="network"``).
    """
    from ...datasets.loading import make_loader

    if getattr(model, "network_", None) is None:
        raise ValueError("modality_contributions: this FusionModel is not fitted yet: call fit first")
    model._check_cohort(cohort)
    if base not in ("mean", "network"):
        raise ValueError(f"modality_contributions: base must be 'mean' or 'network', got {base!r}")
    if background is not None and base != "mean":
        raise ValueError("modality_contributions: background= sets the base of base='mean'; with "
                         f"base={base!r} it would be ignored")
    if not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ValueError(f"modality_contributions: chunk_size must be a positive int, got {chunk_size!r}")
    net = model._network_for_inference()
    check_wide(net)
    classes = [str(c) for c in model.classes_] if model.task == "classification" else [None]
    size = int(batch_size or model.batch_size or 16)
    loader = make_loader(cohort, model.preprocessor_, batch_size=size, shuffle=False, train=False)
    done: list[tuple[str, str, list[str], np.ndarray, np.ndarray]] = []  # sample, patient, players, phi, v
    device = network_device(net)
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(device)
            tokens = net.typed_tokens(batch)
            done += batch_contributions(model, net, batch, tokens, chunk_size=chunk_size)
    outputs = {sample: v[-1] for sample, _, _, _, v in done}
    if base == "mean":
        mean = (np.mean(list(outputs.values()), axis=0) if background is None
                else _mean_prediction(model, net, background, size))
    base_values: dict[str, np.ndarray] = {}
    shifted = []
    for sample, patient, players, phi, v in done:
        if base == "mean" and players:
            # phi is linear in v and v({}) enters every phi_m with weight -1/M: move the base to the mean
            phi = phi - (mean - v[0]) / len(players)
        # (a sample without any modality has nothing to credit: its base is its own output)
        base_values[sample] = mean if base == "mean" and players else v[0]
        shifted.append((sample, patient, players, phi, base_values[sample]))
    frame = contribution_frame(shifted, classes)
    report = AttentionReport(frame, aggregator=getattr(model, "aggregator", None))
    report.base_values, report.outputs = base_values, outputs
    report.network_base = done[0][4][0] if done else None  # v({}) of the network itself, for reference
    return report


def batch_contributions(model: Any, net: Any, batch: Any, tokens: dict[str, Tokens], *,
                        outputs: torch.Tensor | None = None, chunk_size: int = 256
                        ) -> list[tuple[str, str, list[str], np.ndarray, np.ndarray]]:
    """Exact Shapley values of one batch from the tokens its encoders made (token types added).

    ``outputs``: the network's own outputs ``[B, ...]`` for the batch when already computed (an explain
    pass); they are then the value of the full coalition, so its fusion pass is saved and the values sum to
    exactly the reported prediction. Returns one ``(sample, patient, players, phi [M, outputs],
    v [2^M, outputs])`` per sample (``v`` float64, indexed by coalition bit mask).
    """
    modalities = list(net.modalities)
    present = torch.stack([tokens[m].present | tokens[m].mask.any(dim=1) for m in modalities], dim=1)
    rows, keep = _coalitions(present, batch.sample_ids, modalities)
    full = None
    if outputs is not None:  # the last coalition of each sample (all it has) is the forward pass itself
        last = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        ends = torch.cumsum(torch.bincount(rows, minlength=len(batch.sample_ids)), 0) - 1
        last[ends[ends >= 0]] = True
        full = explained_outputs(model, outputs).double().cpu().numpy()
        rows, keep = rows[~last], keep[~last]
    values = (_coalition_values(model, net, batch, tokens, rows, keep, modalities, chunk_size) if len(rows)
              else np.zeros((0, 0 if full is None else full.shape[1])))
    done, start = [], 0
    counts = present.sum(dim=1).tolist()
    for b, sample in enumerate(batch.sample_ids):
        players = [m for j, m in enumerate(modalities) if bool(present[b, j])]
        n = 2 ** counts[b] - (full is not None)
        v = values[start:start + n]
        start += n
        if full is not None:
            v = np.concatenate([v.reshape(-1, full.shape[1]), full[b:b + 1]], axis=0)
        done.append((sample, batch.patient_ids[b], players, shapley_matrix(len(players)) @ v, v))
    return done


def contribution_frame(done: list[tuple[str, str, list[str], np.ndarray, np.ndarray]],
                       classes: list[str | None]) -> pd.DataFrame:
    """Tidy rows of kind ``modality_contribution``: per sample, class-major, one row per present modality;
    ``done`` holds ``(sample, patient, players, phi [M, outputs], base [outputs])``."""
    sample_col, patient_col, player_col, class_col, value_col, base_col = [], [], [], [], [], []
    for sample, patient, players, phi, base in done:
        if not players:
            continue
        M = len(players)
        for c, cls in enumerate(classes):
            sample_col += [sample] * M
            patient_col += [patient] * M
            player_col += players
            class_col += [cls] * M
            value_col.append(phi[:, c])
            base_col.append(np.full(M, base[c]))
    numbers = (np.concatenate(value_col) if value_col else np.zeros(0),
               np.concatenate(base_col) if base_col else np.zeros(0))
    return conform_frame(pd.DataFrame({
        "sample_id": sample_col, "patient_id": patient_col, "modality": player_col, "token": list(player_col),
        "kind": KIND, "target_class": class_col, "value": numbers[0], "raw_value": numbers[1]}))


def network_device(net: Any) -> torch.device:
    """The device of the network's weights (where its batches must go)."""
    return next(iter(net.parameters()), torch.empty(0)).device


def _mean_prediction(model: Any, net: Any, cohort: Any, batch_size: int) -> np.ndarray:
    """The mean explained output over ``cohort`` (the base of ``base="mean"`` with a background)."""
    from ...datasets.loading import make_loader

    model._check_cohort(cohort)
    device = network_device(net)
    with torch.no_grad():
        rows = [explained_outputs(model, net(batch.to(device)).outputs).double().cpu().numpy()
                for batch in make_loader(cohort, model.preprocessor_, batch_size=batch_size)]
    return np.concatenate(rows).mean(axis=0)


def check_wide(net: Any) -> None:
    """A wide term must be able to leave masked modalities out (a ``modalities`` keyword, as WideLinear)."""
    if net.wide is not None and "modalities" not in inspect.signature(net.wide.forward).parameters:
        raise TypeError(f"modality_contributions: the network's wide term {type(net.wide).__name__} has no "
                        "`modalities` keyword, so a masked modality's inputs would still reach the output; "
                        "give its forward `modalities=` (the modalities to score), as WideLinear has")


def _coalitions(present: torch.Tensor, sample_ids: list[str], modalities: list[str]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every subset of each sample's present modalities: (sample index ``[R]``, kept modalities ``[R, M]``).

    A sample's rows are consecutive, coalition ``S`` (a bit mask over its present modalities, in model
    order) at row ``S`` of its block: the empty coalition first, all present modalities last.
    """
    index, keep = [], []
    for b, row in enumerate(present.tolist()):
        players = [j for j, p in enumerate(row) if p]
        if len(players) > MAX_MODALITIES:
            raise ValueError(f"modality_contributions: sample {sample_ids[b]!r} has {len(players)} "
                             f"modalities ({[modalities[j] for j in players]}); exact contributions take "
                             f"2^M passes and are limited to M <= {MAX_MODALITIES}")
        for S in range(2 ** len(players)):
            kept = [False] * len(row)
            for k, j in enumerate(players):
                kept[j] = bool(S >> k & 1)
            index.append(b)
            keep.append(kept)
    return (torch.tensor(index, dtype=torch.long, device=present.device),
            torch.tensor(keep, dtype=torch.bool, device=present.device).reshape(len(index), len(modalities)))


def _coalition_values(model: Any, net: Any, batch: Any, tokens: dict[str, Tokens], rows: torch.Tensor,
                      keep: torch.Tensor, modalities: list[str], chunk_size: int) -> np.ndarray:
    """float64 ``[R, outputs]``: the explained outputs of every coalition row, ``chunk_size`` rows a pass."""
    wide_scores: dict[tuple[str, ...], torch.Tensor] = {}

    def wide_rows(idx: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        # the wide term of each row, scoring only the row's kept modalities (one call per distinct subset)
        out = None
        for pattern in torch.unique(kept, dim=0):
            key = tuple(m for m, k in zip(modalities, pattern.tolist()) if k)
            if key not in wide_scores:
                wide_scores[key] = net.wide(batch, modalities=key)
            score = wide_scores[key]
            out = score.new_zeros(len(idx), score.shape[1]) if out is None else out
            hit = (kept == pattern).all(dim=1)
            out[hit] = score[idx[hit]]
        return out

    B = len(batch.sample_ids)
    # Rows that mask a long modality (a bag) get one padding slot of it instead of its T masked tokens
    # (masked tokens weigh nothing, so the output is the same) and the fusion pass skips the bag: rows are
    # grouped by which long modalities they mask, each group run in chunks, then put back in order.
    long = torch.tensor([tokens[m].mask.shape[1] > SHORT_TOKENS for m in modalities], device=keep.device)
    code = ((~keep & long) * (2 ** torch.arange(len(modalities), device=keep.device))).sum(dim=1)
    order = torch.argsort(code, stable=True)
    values, done = [], []
    for group in torch.unique(code).tolist():
        members = order[code[order] == group]
        for start in range(0, len(members), chunk_size):
            pick = members[start:start + chunk_size]
            idx, kept = rows[pick], keep[pick]
            masked = {m: (_select(tokens[m], idx, kept[:, j], B) if not (group >> j & 1)
                          else _padding(tokens[m], len(idx))) for j, m in enumerate(modalities)}
            out, _ = net.fuse(masked, lambda idx=idx, kept=kept: wide_rows(idx, kept))
            values.append(explained_outputs(model, out))
            done.append(pick)
    result = torch.empty(len(rows), 0) if not values else torch.cat(values)
    result = result[torch.argsort(torch.cat(done))] if done else result
    result = result.double().cpu().numpy()
    if not np.isfinite(result).all():
        bad = int(rows[np.flatnonzero(~np.isfinite(result).all(axis=1))[0]])
        raise ValueError(f"modality_contributions: the network gave a non-finite output for a coalition of "
                         f"sample {batch.sample_ids[bad]!r} (aggregator {type(net.aggregator).__name__}): "
                         "it does not handle masked modalities")
    return result


def explained_outputs(model: Any, outputs: torch.Tensor) -> torch.Tensor:
    """Network outputs -> what the contributions explain, ``[n, outputs]``: each class's log-odds
    (:func:`class_log_odds`), the Cox risk, or the discrete-time risk ``-sum_k S_k`` (as
    ``FusionModel.predict_risk``; the risk column of :func:`.gradients.explained_outputs`)."""
    from .gradients import explained_outputs as risk_or_probabilities

    if model.task == "classification":
        return class_log_odds(outputs)
    return risk_or_probabilities(model.task, outputs)


def class_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """``[n, C]`` logits -> each class's log-odds ``log p_c / (1 - p_c) = l_c - logsumexp_{k != c} l_k``.

    Raw logits are not explained: the softmax ignores a shift common to every logit, so a modality that
    only moves all logits together (e.g. by being present) would get a large, meaningless credit.
    """
    C = logits.shape[-1]
    if C == 1:
        return logits
    others = logits.unsqueeze(-2).expand(*logits.shape[:-1], C, C)
    eye = torch.eye(C, dtype=torch.bool, device=logits.device)
    rest = torch.logsumexp(others.masked_fill(eye, float("-inf")), dim=-1)  # [n, C]: over k != c
    return logits - rest


def _select(tok: Tokens, idx: torch.Tensor, keep: torch.Tensor, n_samples: int) -> Tokens:
    """The rows ``idx`` of ``tok``, masked where ``keep`` is False (as a missing modality)."""
    return Tokens(values=tok.values.index_select(0, idx), mask=tok.mask.index_select(0, idx) & keep[:, None],
                  names=[tok.names[i] for i in idx.tolist()], modality=tok.modality,
                  present=tok.present.index_select(0, idx) & keep,
                  meta=_select_meta(tok.meta, idx, n_samples))


def _padding(tok: Tokens, n_rows: int) -> Tokens:
    """``n_rows`` samples without this modality, as one padding slot each (what PersAM's forward gives a
    modality left out): zero values, ``mask`` and ``present`` False, no meta."""
    values = tok.values.new_zeros(n_rows, 1, tok.values.shape[2])
    false = torch.zeros(n_rows, dtype=torch.bool, device=tok.mask.device)
    return Tokens(values=values, mask=false[:, None], names=[[""] for _ in range(n_rows)],
                  modality=tok.modality, present=false)


def _select_meta(meta: Any, idx: torch.Tensor, n_samples: int) -> Any:
    """Per-sample entries of ``meta`` (tensors ``[B, ...]``, ``[B][T]`` lists, dicts of them) at rows ``idx``;
    anything else (e.g. gene-set members, shared by the batch) is passed as it is."""
    if isinstance(meta, dict):
        return {k: _select_meta(v, idx, n_samples) for k, v in meta.items()}
    if isinstance(meta, torch.Tensor) and meta.dim() >= 1 and meta.shape[0] == n_samples:
        return meta.index_select(0, idx.to(meta.device))
    if isinstance(meta, list) and len(meta) == n_samples and all(isinstance(r, list) for r in meta):
        return [meta[i] for i in idx.tolist()]
    return meta
