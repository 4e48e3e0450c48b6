"""SHAP attributions for the clinical or genomic inputs of a fitted model, and their agreement with attention.

The explainer is shap's permutation explainer over one modality's *preprocessed* inputs (standardised
numeric clinical values with NaN for missing, category codes, scaled gene values); every other modality is
held at the sample's own values. Attributions are signed and not normalised (kind ``shap`` in the report):
for classification one row per class (the class probability), for survival the risk score.

``method="integrated_gradients"`` gives the gradient attributions of :mod:`.attributions` instead (rows of
kind ``attribution``, in the same units, tens to thousands of times faster, not Shapley values).
Attention is not attribution: :func:`attention_shap_agreement` reports, per sample, the Spearman rank
correlation between attention and |SHAP| over the same tokens so that users see where the two disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ...datasets.batch import Batch, ModalityBatch
from .contributions import network_device
from .report import AttentionReport
from .table import conform_frame

SHAP_MODALITIES = ("clinical", "genomics")


def _fitted_network(model: Any) -> torch.nn.Module:
    """The model's network; NotFittedError (a ValueError) for a model that is not fitted."""
    check = getattr(model, "_check_fitted", None)
    if check is not None:
        check()
    network = getattr(model, "network_", None)
    if network is None:
        raise ValueError("this FusionModel is not fitted yet: call fit first")
    return network


def _repeat(mb: ModalityBatch, n: int) -> ModalityBatch:
    """``mb`` (B = 1) repeated ``n`` times along the batch dimension."""
    def rep(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.expand(n, *value.shape[1:]).clone()
        if isinstance(value, list) and len(value) == 1:
            return value * n
        if isinstance(value, dict):
            return {k: rep(v) for k, v in value.items()}
        return value

    return ModalityBatch(mb.modality, rep(mb.mask), rep(mb.present), rep(mb.tensors), rep(mb.names),
                         rep(mb.meta))


def _features(mb: ModalityBatch) -> np.ndarray:
    """The modality's inputs of one sample as a flat float vector (NaN = missing numeric value)."""
    if mb.modality == "clinical":
        numeric = mb.tensors["numeric"].float().masked_fill(mb.tensors["numeric_missing"], float("nan"))
        return torch.cat([numeric, mb.tensors["categorical"].float()], dim=1)[0].numpy()
    return mb.tensors["values"][0].float().numpy()


def _with_features(mb: ModalityBatch, x: np.ndarray) -> ModalityBatch:
    """``mb`` (already repeated to len(x) rows) with its inputs replaced by the rows of ``x``."""
    x_t = torch.as_tensor(x, dtype=torch.float32)
    tensors = dict(mb.tensors)
    if mb.modality == "clinical":
        kn = tensors["numeric"].shape[1]
        numeric = x_t[:, :kn]
        tensors["numeric_missing"] = torch.isnan(numeric)
        tensors["numeric"] = torch.nan_to_num(numeric, nan=0.0)
        n_codes = tensors["categorical"]
        tensors["categorical"] = x_t[:, kn:].round().long().clamp_min(0).reshape(n_codes.shape[0], -1)
    else:
        tensors["values"] = x_t
    return ModalityBatch(mb.modality, mb.mask, mb.present, tensors, mb.names, mb.meta)


def _scalar_outputs(model: Any, outputs: torch.Tensor) -> torch.Tensor:
    """Network outputs -> what SHAP explains: class probabilities ``[n, C]`` or a risk ``[n]`` (the units of
    :func:`.gradients.explained_outputs`, which keeps the risk as one column)."""
    from .gradients import explained_outputs

    explained = explained_outputs(model.task, outputs)
    return explained if model.task == "classification" else explained[:, 0]


def shap_values(model: Any, cohort: Any, *, modality: str = "clinical", background: Any = None,
                n_background: int = 20, max_evals: int | None = None, chunk_size: int = 64,
                seed: int = 0, method: str = "permutation") -> AttentionReport:
    """Signed SHAP attributions of ``modality``'s inputs for every sample of ``cohort`` that has it.

    Args:
        model: a fitted :class:`~clinfuse.fusion.FusionModel`.
        cohort: the samples to explain (samples without ``modality`` are skipped: they have nothing to
            attribute, and are listed in the returned report's ``skipped`` attribute).
        modality: ``"clinical"`` or ``"genomics"``.
        background: a cohort whose samples' inputs fill masked features (default: ``cohort`` itself);
            up to ``n_background`` of its samples are used.
        max_evals: model evaluations per sample (default ``2 * (2K + 1)`` for K input features).
        method: ``"permutation"`` (default: shap's exact permutation explainer) or
            ``"integrated_gradients"`` (:func:`.attributions.attributions` with the background mean as
            baseline; ``n_background``, ``max_evals``, ``chunk_size`` and ``seed`` do not apply).

    Returns:
        An :class:`AttentionReport` whose rows have kind ``shap`` (``value`` = ``raw_value`` = the SHAP
        value), with attributes ``base_values`` and ``outputs`` (sample -> array over outputs) such that
        the SHAP values of a sample sum to ``outputs - base_values``, and ``skipped`` (samples without the
        modality).
    """
    from ...datasets.loading import make_loader
    from .agreement import model_gene_sets

    if modality not in SHAP_MODALITIES:
        raise ValueError(f"shap_values: modality must be one of {SHAP_MODALITIES}, got {modality!r}")
    if method == "integrated_gradients":
        from .attributions import attributions

        return attributions(model, cohort, modality=modality, background=background)
    if method != "permutation":
        raise ValueError("shap_values: method must be 'permutation' or 'integrated_gradients', "
                         f"got {method!r}")
    import shap

    network = _fitted_network(model)
    if modality not in model.preprocessor_.schema_:
        raise ValueError(f"shap_values: the model was trained without {modality!r} data "
                         f"(its modalities: {[m for m in model.preprocessor_.schema_ if m != 'task']})")
    background = cohort if background is None else background
    rng = np.random.default_rng(seed)
    bg_ids = [s for s in background.sample_ids if background.has(s, modality)]
    if not bg_ids:
        raise ValueError(f"shap_values: the background cohort has no sample with {modality!r} data")
    bg_ids = list(rng.choice(bg_ids, size=min(n_background, len(bg_ids)), replace=False))
    bg_rows = [_features(batch.modalities[modality])
               for batch in make_loader(background.subset(bg_ids), model.preprocessor_, batch_size=1)]
    masker = shap.maskers.Independent(np.stack(bg_rows), max_samples=len(bg_rows))

    network.eval()
    frames, skipped = [], []
    base_values: dict[str, np.ndarray] = {}
    outputs: dict[str, np.ndarray] = {}
    device = network_device(network)
    for batch in make_loader(cohort, model.preprocessor_, batch_size=1):
        sample = batch.sample_ids[0]
        target = batch.modalities[modality]
        if not bool(target.present[0]):
            skipped.append(sample)
            continue
        x = _features(target)
        names = [n for n in target.names[0]]

        def predict(rows: np.ndarray, batch: Batch = batch) -> np.ndarray:
            outs = []
            for start in range(0, len(rows), chunk_size):
                chunk = rows[start:start + chunk_size]
                repeated = {m: _repeat(mb, len(chunk)) for m, mb in batch.modalities.items()}
                repeated[modality] = _with_features(repeated[modality], chunk)
                rep = Batch([batch.sample_ids[0]] * len(chunk), [batch.patient_ids[0]] * len(chunk), repeated)
                with torch.no_grad():
                    out = _scalar_outputs(model, network(rep.to(device)).outputs)
                    outs.append(out.double().cpu().numpy())
            return np.concatenate(outs)

        evals = max_evals or 2 * (2 * len(x) + 1)
        explainer = shap.PermutationExplainer(predict, masker, seed=seed)
        explanation = explainer(x[None], max_evals=max(evals, 2 * len(x) + 1), silent=True)
        values = np.asarray(explanation.values)[0]
        values = values[:, None] if values.ndim == 1 else values  # [K, outputs]
        # Additivity: values.sum(0) == f(x) - base; kept so users (and tests) can check it.
        base_values[sample] = np.atleast_1d(np.asarray(explanation.base_values)[0]).astype(float)
        outputs[sample] = predict(x[None])[0]
        classes = [str(c) for c in model.classes_] if model.task == "classification" else [None]
        for c, cls in enumerate(classes):
            frames.append(pd.DataFrame({
                "sample_id": sample, "patient_id": batch.patient_ids[0], "modality": modality, "token": names,
                "kind": "shap", "target_class": cls, "value": values[:, c], "raw_value": values[:, c],
            }))
    frame = conform_frame(pd.concat(frames, ignore_index=True)) if frames else conform_frame(pd.DataFrame())
    report = AttentionReport(frame, aggregator=getattr(model, "aggregator", None))
    report.skipped = skipped
    report.base_values = base_values  # sample -> [outputs] expected output over the background
    report.outputs = outputs  # sample -> [outputs] the model's output for the sample itself
    report.gene_sets = model_gene_sets(model) if modality == "genomics" else None
    return report


def attention_shap_agreement(attention: AttentionReport, shap_report: AttentionReport, *,
                             kind: str | None = None, gene_sets: Any = None) -> pd.DataFrame:
    """Per sample: Spearman correlation between attention and |SHAP| (or |attribution|) over the same
    tokens; genes are mapped to the model's gene sets when attention is on sets. See
    :func:`.agreement.attention_attribution_agreement` (this is it, under the name it has always had)."""
    from .agreement import attention_attribution_agreement

    return attention_attribution_agreement(attention, shap_report, kind=kind, gene_sets=gene_sets)
