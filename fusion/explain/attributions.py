"""Gradient attributions of any modality: integrated gradients, one signed value per input or token.

Rows of kind ``attribution`` (``value`` = ``raw_value`` = the attribution), in the units of the ``shap``
rows: per class the class probability (classification), or the risk (survival), so the two kinds compare
directly. Every sample's attributions sum to ``outputs - base_values`` (completeness), up to the
quadrature error of ``n_steps`` Gauss-Legendre nodes (:mod:`.gradients`).

What is attributed, and against which baseline ``x'``:

* ``genomics``: each gene's preprocessed value. Baseline ``"background"`` (default): the mean over the
  background cohort; ``"neutral"``: 0, the training mean of the scaled values.
* ``clinical``: each variable. A numeric value moves along the straight line from the baseline's value
  (the background mean, or 0 = the training mean for ``"neutral"``); a categorical code, which has no
  path to another code, moves at the embedding level: every embedding lookup of the codes (the encoder's,
  the wide term's) goes from the baseline code's row to the sample's row, and the column's attribution is
  summed over the embedding width. Baseline code: the background's most frequent code (``"background"``)
  or 0, the missing code (``"neutral"``). A *missing* numeric value is not on any path (the encoders
  replace it by a learned embedding, a switch, not a slope): the baseline keeps the sample's missing
  values missing, so they get exactly 0 here and their effect is in ``base_values``; the permutation
  explainer (``method="permutation"``) does attribute missingness.
* ``events``, ``images``: each token the encoder outputs (one per event, one per patch), interpolated
  from the zero token, with the bag's mask and every other modality fixed. The zero token is the
  baseline because masking a token out changes the bag's size, which has no path between, while a zero
  embedding keeps the token's place (its token-type embedding is still added) and carries no content of
  its own. So a token's attribution is what its content adds to the prediction relative to a
  content-free token at the same place. Baseline: ``"neutral"`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...datasets.batch import ModalityBatch
from ...datasets.modalities import get_modality
from ...datasets.modalities.base import as_numpy
from . import gradients as G
from .agreement import model_gene_sets
from .contributions import network_device
from .report import AttentionReport
from .table import conform_frame
from .tabular_paths import background_baseline, clinical_path, genomics_path

METHODS = ("integrated_gradients", "permutation")
TABULAR = ("clinical", "genomics")
TOKEN_MODALITIES = ("events", "images")
TABULAR_BATCH = 8
MAX_PATH_TOKENS = 1 << 16  # tokens one forward over a bag's path holds (n_steps x T is split in chunks)


def attributions(model: Any, cohort: Any, *, modality: str, method: str = "integrated_gradients",
                 baseline: str | None = None, background: Any = None, n_steps: int = 16,
                 **permutation_kwargs: Any) -> AttentionReport:
    """Signed attributions of ``modality``'s inputs (clinical, genomics) or tokens (events, images).

    Args:
        model: a fitted :class:`~clinfuse.fusion.FusionModel`.
        cohort: the samples to explain; samples without ``modality`` are skipped (listed in the report's
            ``skipped`` attribute).
        modality: ``"clinical"``, ``"genomics"``, ``"events"`` or ``"images"``.
        method: ``"integrated_gradients"`` (default: gradient-based, seconds for a cohort, complete) or
            ``"permutation"`` (shap's permutation explainer, exact Shapley values of the inputs but one
            model evaluation per permutation step; clinical and genomics only; rows of kind ``shap``;
            ``permutation_kwargs`` go to :func:`~.shap.shap_values`).
        baseline: ``"background"`` (default for clinical, genomics) or ``"neutral"`` (the only one for
            events and images); see the module docstring.
        background: the cohort whose mean (or most frequent code) is the ``"background"`` baseline
            (default: ``cohort``).
        n_steps: Gauss-Legendre nodes of the path integral (16 integrate polynomials of degree 31
            exactly; the report's ``outputs - base_values`` against the row sums shows the gap).

    Returns:
        An :class:`AttentionReport` of rows of kind ``attribution`` (``target_class`` = the class for
        classification, NA for survival), with attributes ``outputs`` and ``base_values`` (sample ->
        ``[C]``: ``f(x)`` and ``f(x')``; a sample's attributions sum to their difference), ``skipped``,
        ``method`` and ``baseline``. Event rows carry ``code, time``; patch rows ``slide_id, position, x, y``.
    """
    from ...datasets.loading import make_loader
    from .shap import _fitted_network, shap_values

    if method not in METHODS:
        raise ValueError(f"attributions: method must be one of {METHODS}, got {method!r}")
    modalities = (*TABULAR, *TOKEN_MODALITIES)
    if modality not in modalities:
        raise ValueError(f"attributions: modality must be one of {modalities}, got {modality!r}")
    network = _fitted_network(model)
    if modality not in model.preprocessor_.schema_:
        raise ValueError(f"attributions: the model was trained without {modality!r} data "
                         f"(its modalities: {[m for m in model.preprocessor_.schema_ if m != 'task']})")
    if method == "permutation":
        if modality not in TABULAR:
            raise ValueError(f"attributions: method='permutation' explains the inputs of {TABULAR}; "
                             f"{modality!r} tokens are attributed with method='integrated_gradients'")
        return shap_values(model, cohort, modality=modality, background=background, **permutation_kwargs)
    if permutation_kwargs:
        raise TypeError(f"attributions: {sorted(permutation_kwargs)} are keywords of method='permutation'")
    default = "background" if modality in TABULAR else "neutral"
    baseline = default if baseline is None else baseline
    allowed = ("background", "neutral") if modality in TABULAR else ("neutral",)
    if baseline not in allowed:
        raise ValueError(f"attributions: baseline for {modality!r} must be one of {allowed}, "
                         f"got {baseline!r}")
    model._check_cohort(cohort)
    alphas, weights = G.path_nodes(n_steps)
    reference = None
    if modality in TABULAR:
        reference = background_baseline(model, cohort if background is None else background, modality,
                                        neutral=baseline == "neutral")
    network.eval()
    classes = [str(c) for c in model.classes_] if model.task == "classification" else [None]
    frames, skipped, outputs, base_values = [], [], {}, {}
    # Tabular inputs: TABULAR_BATCH samples share one forward over their paths (small tensors: the
    # per-call overhead is what costs); a bag's path is one sample, split in chunks of nodes.
    size = TABULAR_BATCH if modality in TABULAR else 1
    device = network_device(network)
    for batch in make_loader(cohort, model.preprocessor_, batch_size=size):
        batch = batch.to(device)
        present = batch.modalities[modality].present.tolist()
        skipped += [s for s, p in zip(batch.sample_ids, present) if not p]
        if not any(present):
            continue
        with torch.no_grad():
            tokens = network.encode(batch)
        if modality in TABULAR:
            path = clinical_path if modality == "clinical" else genomics_path
            build = path(network, batch, tokens, reference, model.task)
            chunk = len(alphas)
        else:
            build = _token_path(network, batch, tokens, modality, model.task)
            chunk = max(1, MAX_PATH_TOKENS // max(1, tokens[modality].values.shape[1]))
        values, f_x, f_b = _accumulate(build, alphas, weights, chunk,
                                       sum_to_one=model.task == "classification")  # [C, B, K], [B, C]
        for b, sample in enumerate(batch.sample_ids):
            if not present[b]:
                continue
            if modality in TABULAR:
                names, columns, v = list(batch.modalities[modality].names[b]), {}, values[:, b]
            else:  # one sample: padding only if an encoder pads its own tokens
                names, columns = _token_columns(batch.modalities[modality], tokens[modality], modality)
                real = tokens[modality].mask[0].cpu().numpy()
                v, names = values[:, 0, real], [t for t, r in zip(names, real) if r]
                columns = {k: [x for x, r in zip(col, real) if r] for k, col in columns.items()}
            outputs[sample], base_values[sample] = f_x[b], f_b[b]
            for c, cls in enumerate(classes):
                frames.append(pd.DataFrame({
                    "sample_id": sample, "patient_id": batch.patient_ids[b], "modality": modality,
                    "token": names, "kind": "attribution", "target_class": cls, "value": v[c],
                    "raw_value": v[c], **columns}))
    frame = conform_frame(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
    report = AttentionReport(frame, aggregator=getattr(model, "aggregator", None))
    report.skipped, report.outputs, report.base_values = skipped, outputs, base_values
    report.method, report.baseline = method, baseline
    report.gene_sets = model_gene_sets(model) if modality == "genomics" else None  # for the agreement
    return report


Build = Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], Callable]]


def _accumulate(build: Build, alphas: torch.Tensor, weights: torch.Tensor, chunk: int, *,
                sum_to_one: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(attributions [C, B, T], f(x) [B, C], f(x') [B, C])`` over the paths of B samples, ``chunk``
    nodes per forward."""
    total, f_x, f_b = None, None, None
    for start in range(0, len(alphas), chunk):
        a, w = alphas[start:start + chunk], weights[start:start + chunk]
        with torch.enable_grad():
            out, leaves, deltas, reduce = build(a)
            part = reduce(G.integrate(out, w, leaves, deltas, sum_to_one=sum_to_one)) if leaves else None
        total = part if total is None else total + part
        per_sample = out.detach().double().reshape(-1, len(a), out.shape[1])  # [B, nodes, C]
        for i, alpha in enumerate(a.tolist()):
            if w[i] == 0 and alpha == 0.0:
                f_b = per_sample[:, i].cpu().numpy()
            elif w[i] == 0 and alpha == 1.0:
                f_x = per_sample[:, i].cpu().numpy()
    return total.double().cpu().numpy(), f_x, f_b


def _token_path(network: Any, batch: Any, tokens: dict, modality: str, task: str) -> Build:
    """The path from zero tokens to the encoder's tokens of ``modality`` (others fixed)."""
    target = tokens[modality]
    x = target.values  # [1, T, d]

    def build(alphas: torch.Tensor):
        n = len(alphas)
        leaf = (alphas[:, None, None] * x[0]).requires_grad_(True)  # [n, T, d]
        toks = {m: G.expand_tokens(t, n) for m, t in tokens.items()}
        toks[modality] = replace(toks[modality], values=leaf)
        out = G.explained_outputs(task, G.outputs_from_tokens(network, toks, G.expand_batch(batch, n)))
        return out, [leaf], [x], lambda parts: parts[0].sum(-1)  # [C, 1, T]: summed over the width

    return build


def _token_columns(source: ModalityBatch, tokens: Any, modality: str) -> tuple[list[str], dict[str, Any]]:
    """The token names and per-token report columns (code, time / slide_id, position, x, y) of one
    sample's tokens, from the batch when the encoder kept its tokens, else from the tokens' meta."""
    n_tokens = tokens.values.shape[1]
    grids = get_modality(modality).token_grids(source if source.n_tokens == n_tokens else None,
                                               G.expand(tokens.meta, 1))
    columns = {}
    for name, grid in grids.items():
        columns[name] = list(grid[0]) if isinstance(grid, list) else as_numpy(grid)[0].astype(float)
    return list(tokens.names[0]), columns
