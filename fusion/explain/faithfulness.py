"""Faithfulness of explanations against the synthetic cohort's planted ground truth.

``datasets.synthetic.make_synthetic_cohort`` plants evidence patches (``truth.relevant_patches``), a rule
variable that decides which patch type is evidence, and clinical signal variables. These metrics score a
model's attention (and SHAP) against them: per-patient and pooled AUROC of the planted patches, the lift of
attention mass on them over uniform, top-3 membership of a planted variable, deletion of the top-attention
patches against random deletion, and the attention mass on type-A patches as the rule variable flips.
``tests/fusion/explain/test_faithfulness.py`` asserts thresholds on them;
``benchmarks/bench_faithfulness.py`` reports them over cohort sizes, seeds and aggregators; ``clinfuse demo``
prints :func:`planted_summary`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ...datasets import Cohort, ImageBags
from .table import report_kinds

# The recipe the faithfulness checks are stated for (tests and benchmarks share it): PersAM with library
# defaults and batch 4 (more optimiser steps than the default 16, which the attention needs to learn the
# rule), on a 400-patient cohort of clinical data and image bags.
MODEL_PARAMS: dict[str, Any] = {"task": "classification", "aggregator": "persam", "batch_size": 4,
                                "max_epochs": 30, "early_stopping_patience": 10, "verbose": False, "seed": 0}
COHORT_PARAMS: dict[str, Any] = {"n_patients": 400, "modalities": ("clinical", "images"), "seed": 0}
PATCHES = "images"  # the modality whose tokens the synthetic truth plants evidence in


def noise_images_cohort(n: int, *, n_patches: int, seed: int = 0) -> Cohort:
    """The noise-modality check's cohort (tests and benchmarks share it): clinical data that carry the label
    (``biomarker_level`` above its median is ``"poor"``) and image bags of 16-dimensional pure Gaussian noise,
    ``n_patches`` to ``2 * n_patches - 1`` per sample (nothing of the patient in them)."""
    from ...datasets import make_synthetic_cohort

    base, _ = make_synthetic_cohort(n, modalities=("clinical",), seed=seed)
    clinical = base.clinical
    x = clinical["biomarker_level"].fillna(clinical["biomarker_level"].median())
    labels = pd.Series(np.where(x > x.median(), "poor", "good"), index=clinical.index)
    rng = np.random.default_rng(seed)
    bags = {s: rng.standard_normal((int(rng.integers(n_patches, 2 * n_patches)), 16)).astype(np.float32)
            for s in clinical.index}
    return Cohort(clinical=clinical, images=ImageBags.from_features(bags), labels=labels)


def _patch_rows(report: pd.DataFrame, kind: str) -> pd.DataFrame:
    return report[(report["kind"] == kind) & (report["modality"] == PATCHES)]


def planted_patch_auroc(report: pd.DataFrame, truth: Any, *, kind: str,
                        target: pd.Series | None = None) -> dict[str, float]:
    """Per sample: AUROC of the ``kind`` patch attention for the planted patches.

    ``target``: sample -> class whose attention is scored (e.g. the predicted class: a per-class kind for
    class c says what justifies class c); None averages the classes. Samples whose patches are all or none
    planted are left out.
    """
    from sklearn.metrics import roc_auc_score

    rows = _patch_rows(report, kind)
    if target is not None:
        rows = rows[rows["target_class"].astype(str) == rows["sample_id"].map(target.astype(str))]
    rows = rows.groupby(["sample_id", "position"], as_index=False)["value"].mean()  # average over classes
    out = {}
    for sample, part in rows.groupby("sample_id"):
        relevant = truth.relevant_patches[sample][part["position"].astype(int).to_numpy()]
        if relevant.all() or not relevant.any():
            continue
        out[sample] = float(roc_auc_score(relevant, part["value"].to_numpy()))
    return out


def pooled_planted_auroc(report: pd.DataFrame, truth: Any, *, kind: str) -> float:
    """One AUROC of the planted patches over all samples' patches (class-averaged ``kind`` attention).

    Attention sums to 1 per sample, so each sample's values are scaled by its bag size to rank within it.
    """
    from sklearn.metrics import roc_auc_score

    rows = _patch_rows(report, kind).groupby(["sample_id", "position"], as_index=False)["value"].mean()
    y, score = [], []
    for sample, part in rows.groupby("sample_id"):
        pos = part["position"].astype(int).to_numpy()
        y.append(truth.relevant_patches[sample][pos])
        score.append(part["value"].to_numpy() * len(pos))
    return float(roc_auc_score(np.concatenate(y), np.concatenate(score)))


def planted_patch_lift(report: Any, truth: Any, labels: pd.Series) -> dict[str, Any]:
    """Per patch-level kind: mean over samples of (attention mass on the planted patches) / (their share).

    1 = no better than uniform, higher = the attention finds the evidence. Per-class kinds are read for
    the sample's true class (``labels``). Returns ``{kind: {"lift", "n_samples"}}``.
    """
    out: dict[str, Any] = {}
    frame = report.to_frame()
    present = set(frame.loc[frame["modality"] == PATCHES, "kind"])
    for kind in [k for k in report_kinds() if k in present]:
        ratios = []
        for sid, rows in _patch_rows(frame, kind).groupby("sample_id"):
            relevant = truth.relevant_patches.get(sid)
            if relevant is None or not relevant.any() or relevant.all():
                continue
            if rows["target_class"].notna().any():
                rows = rows[rows["target_class"] == str(labels[sid])]
            if rows.empty:
                continue
            mass = float(rows["value"].to_numpy()[relevant[rows["position"].to_numpy(int)]].sum())
            ratios.append(mass / float(relevant.mean()))
        if ratios:
            out[kind] = {"lift": float(np.mean(ratios)), "n_samples": len(ratios)}
    return out


def planted_summary(report: Any, truth: Any, labels: pd.Series, *,
                    kind: str = "explanatory") -> dict[str, Any]:
    """The planted-evidence figures ``clinfuse demo`` prints for ``kind`` patch attention.

    ``auroc_median`` / ``auroc_min``: over samples of :func:`planted_patch_auroc` (class-averaged);
    ``auroc_pooled``: :func:`pooled_planted_auroc`; ``mass_ratio``: :func:`planted_patch_lift` (true
    class); ``n_patients``: samples scored by the AUROC. NaN figures when no sample could be scored.
    """
    frame = report.to_frame()
    per = planted_patch_auroc(frame, truth, kind=kind)
    lift = planted_patch_lift(report, truth, labels).get(kind, {"lift": float("nan"), "n_samples": 0})
    scored = bool(per)
    return {"kind": kind, "n_patients": len(per),
            "auroc_median": float(np.median(list(per.values()))) if scored else float("nan"),
            "auroc_min": float(min(per.values())) if scored else float("nan"),
            "auroc_pooled": pooled_planted_auroc(frame, truth, kind=kind) if scored else float("nan"),
            "mass_ratio": float(lift["lift"]), "per_patient_auroc": per}


def top3_share(frame: pd.DataFrame, samples: list[str], *, variable: str) -> float:
    """Share of ``samples`` whose top 3 tokens (by |value|, averaged over classes) hold ``variable``."""
    mag = frame.assign(value=frame["value"].abs()).groupby(["sample_id", "token"])["value"].mean()
    hits = []
    for sample in samples:
        ranked = mag.loc[sample].sort_values(ascending=False)
        hits.append(variable in set(ranked.index[:3]))
    return float(np.mean(hits))


def signal_carriers(cohort: Cohort, samples: list[str], *, variable: str) -> list[str]:
    """Samples with a clinical record whose ``variable`` is >= 1 sd from the cohort mean (it moves the
    outcome for them)."""
    level = cohort.clinical[variable]
    z = (level - level.mean()) / level.std()
    return [s for s in samples if cohort.has(s, "clinical") and abs(z.get(s, 0.0)) >= 1.0]


def with_bags(cohort: Cohort, bags: dict[str, np.ndarray], clinical: pd.DataFrame | None = None) -> Cohort:
    """The samples of ``bags`` with these feature bags (and ``clinical``, default the cohort's)."""
    ids = list(bags)
    clinical = cohort.clinical if clinical is None else clinical
    return Cohort(clinical=clinical.loc[[s for s in ids if s in clinical.index]],
                  images=ImageBags.from_features(bags), labels=cohort.labels.loc[ids],
                  clinical_types=dict(cohort.clinical_types))


def deletion_effects(model: Any, cohort: Cohort, report: pd.DataFrame, *, kind: str, fraction: float = 0.1,
                     n_random: int = 5, seed: int = 0) -> tuple[float, float]:
    """Mean |change of P(last class)| when a patient's top ``fraction`` patches by ``kind`` attention are
    removed, and when a random ``fraction`` is (averaged over ``n_random`` draws per patient)."""
    rng = np.random.default_rng(seed)
    rows = _patch_rows(report, kind)
    att = rows.groupby(["sample_id", "position"])["value"].mean()
    samples = sorted(set(rows["sample_id"]))
    full = {s: cohort.images.load(s).data for s in samples}
    top, rand = {}, [{} for _ in range(n_random)]
    for s in samples:
        x = full[s]
        k = max(1, int(np.ceil(fraction * len(x))))
        a = att.loc[s].reindex(range(len(x))).to_numpy()
        keep_top = np.sort(np.argsort(-a)[k:])
        top[s] = x[keep_top]
        for r in range(n_random):
            rand[r][s] = x[np.sort(rng.permutation(len(x))[k:])]
    positive = model.classes_[-1]

    def proba(bags):
        return model.predict_proba(with_bags(cohort, bags))[positive]

    base = proba(full)
    d_top = (proba(top) - base).abs().mean()
    d_rand = float(np.mean([(proba(b) - base).abs().mean() for b in rand]))
    return float(d_top), d_rand


def type_a_mass(model: Any, cohort: Cohort, truth: Any, samples: list[str], marker: str, *,
                kind: str) -> pd.Series:
    """Per sample: ``kind`` attention mass on type-A patches with the rule variable set to ``marker``."""
    clinical = cohort.clinical.copy()
    clinical.loc[samples, truth.rule_variable] = marker
    bags = {s: cohort.images.load(s).data for s in samples}
    frame = model.explain(with_bags(cohort, bags, clinical=clinical), kinds=[kind]).to_frame()
    frame = frame[frame["modality"] == PATCHES]
    mass = {}
    for s, part in frame.groupby("sample_id"):
        is_a = truth.patch_type[s][part["position"].astype(int).to_numpy()] == 1
        mass[s] = float(part["value"].to_numpy()[is_a].sum())
    return pd.Series(mass)
