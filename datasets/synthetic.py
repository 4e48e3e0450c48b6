"""A synthetic multimodal cohort with planted, checkable ground truth.

No public cohort pairs slides, clinical records, expression and EHR events for the same patients, so the
generator below is how the whole pipeline (and PersAM's personalised attention in particular) is tested.

The planted rule (as in PersAM's lymphoma cases, where the clinical record decides which cells matter):

* Every patch bag ``[N, D]`` holds background patches and two patch types, A and B, that lie along two
  orthogonal directions of feature space (``SyntheticTruth.directions``), at distance 4 from the origin
  against isotropic patch noise of sd 0.5, so the types are clearly separable.
* The binary clinical variable ``marker_status`` (the ``rule_variable``) decides which type is evidence:
  ``"positive"`` patients are judged on their type-A patches, ``"negative"`` ones on type-B patches. The
  other type is a distractor. ``relevant_patches[s]`` marks the evidence patches of sample ``s``.
* Type-A and type-B patches also carry a "severity" along a fifth direction (``severity_direction``):
  the evidence patches show the patient's severity ``v`` (one value per patient, small per-patch jitter);
  distractor patches an unrelated, smaller one (sd 0.6), background patches none. The outcome is driven by the
  linear predictor ``lp = 4 * v + z(biomarker_level) + g + e``, where ``g`` shifts the signal
  genes' expression and ``e`` raises the rate of the signal event codes. The marker has no marginal
  effect, so a model must learn the rule to read the images. The amount of evidence (a uniform fraction
  of 5-50% of the bag) does not enter ``lp``: softmax attention pooling is invariant to it, so an
  amount-driven outcome would teach attention models to spread their weight rather than find the
  evidence; a severity shown only by the evidence patches is what attention must find.
* Classification: ``label = 1`` (poor outcome) when ``lp`` plus logistic noise (scale 0.5) exceeds 0.
  Survival: exponential event times with hazard ``exp(0.4 * lp)`` (median about 24 time units at
  ``lp = 0``) and independent exponential censoring calibrated to censor about 30% of the samples.

Random draws come from independent child streams of one ``SeedSequence(seed)`` (latents, images,
clinical, genomics, events, missingness), so a cohort is deterministic per seed and the outcome and the
latent factors do not change when ``modalities`` or ``missing_rate`` change.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .atomic import atomic_path

SYNTHETIC_MODALITIES: tuple[str, ...] = ("clinical", "genomics", "images", "events")
"""The modalities this generator makes, in canonical order (a registered fifth one is not synthesised)."""

RULE_VARIABLE = "marker_status"
"""The clinical column whose value decides which patch type is evidence."""

_EVIDENCE_LOW, _EVIDENCE_HIGH = 0.05, 0.5  # each patch type covers a uniform fraction of the bag
_W_IMAGE, _W_CLINICAL, _W_GENES, _W_EVENTS = 4.0, 1.0, 1.0, 1.0
_TYPE_AMPLITUDE = 4.0  # distance of the type-A / type-B centres from the origin, in noise sd units
_BACKGROUND_AMPLITUDE = 2.0  # background patches sit at two other centres so norm alone is no cue
_SEVERITY_AMPLITUDE = 3.0  # severity (sd 1 over patients) is shown at three times the noise sd
_SEVERITY_JITTER = 0.3
_DISTRACTOR_SEVERITY = 0.6  # sd of the unrelated severity distractor patches show (evidence: sd 1)
_PATCH_NOISE = 0.5  # isotropic per-patch noise sd
_PATCH_PIXELS = 256.0  # grid spacing of the patch coordinates (level-0 pixels)
_SURVIVAL_SCALE = 0.4
_TARGET_CENSORING = 0.3


@dataclass(frozen=True)
class SyntheticTruth:
    """The planted ground truth of a synthetic cohort.

    Attributes:
        relevant_patches: sample id -> bool ``[N]``, the patches the planted rule makes evidence for that
            sample (type A when its ``rule_variable`` is "positive", type B when "negative"). Only samples
            whose image bag is in the cohort are keys.
        patch_type: sample id -> int ``[N]``: 0 background, 1 type A, 2 type B (same keys).
        rule_variable: the clinical column that decides whether type A or type B is the evidence.
        signal_variables: clinical columns that drive the outcome directly.
        signal_genes: genes whose expression drives the outcome.
        signal_codes: event codes whose rate drives the outcome.
        description: a readable account of the generating process.
        rule_value: sample id -> bool, True where the rule variable is "positive" (all samples, observed or
            not).
        evidence_fraction: sample id -> fraction of the sample's patches that are evidence (all samples).
        severity: sample id -> the severity ``v`` shown by the evidence patches (all samples).
        linear_predictor: sample id -> the outcome's linear predictor ``lp`` (all samples).
        directions: float32 ``[2, D]`` unit directions of type A (row 0) and type B (row 1).
        severity_direction: float32 ``[D]`` unit direction along which patches of type A / B show severity.
    """

    relevant_patches: dict[str, np.ndarray]
    patch_type: dict[str, np.ndarray]
    rule_variable: str
    signal_variables: list[str]
    signal_genes: list[str]
    signal_codes: list[str]
    description: str
    rule_value: pd.Series = field(default_factory=lambda: pd.Series(dtype=bool))
    evidence_fraction: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    severity: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    linear_predictor: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    directions: np.ndarray = field(default_factory=lambda: np.zeros((2, 0), dtype=np.float32))
    severity_direction: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def _check_args(n_patients, task, modalities, n_patches, feature_dim, n_genes, n_codes, missing_rate):
    if not isinstance(n_patients, int | np.integer) or n_patients < 2:
        raise ValueError(f"n_patients must be an int >= 2, got {n_patients!r}")
    if task not in ("classification", "survival"):
        raise ValueError(f"task must be 'classification' or 'survival', got {task!r}")
    mods = tuple(modalities)
    unknown = [m for m in mods if m not in SYNTHETIC_MODALITIES]
    if not mods or unknown:
        raise ValueError(f"modalities must be a non-empty subset of {SYNTHETIC_MODALITIES}, got {mods!r}")
    lo, hi = n_patches
    if not (2 <= lo <= hi):
        raise ValueError(f"n_patches must be (low, high) with 2 <= low <= high, got {n_patches!r}")
    if feature_dim < 5:
        raise ValueError(f"feature_dim must be >= 5 (five orthogonal patch directions), got {feature_dim}")
    if n_genes < 4:
        raise ValueError(f"n_genes must be >= 4, got {n_genes}")
    if n_codes < 4:
        raise ValueError(f"n_codes must be >= 4, got {n_codes}")
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    # canonical order, duplicates removed
    return tuple(m for m in SYNTHETIC_MODALITIES if m in mods)


def _images(rng, ids, rule_pos, severity, n_patches, feature_dim):
    """Patch bags, types and grid coordinates; returns (features, types, coords, evidence_fraction,
    centres)."""
    lo, hi = n_patches
    # [5, D] orthonormal: type A, type B, two background centres, the severity direction
    centres = np.linalg.qr(rng.normal(size=(feature_dim, 5)))[0].T.astype(np.float32)
    sizes = rng.integers(lo, hi + 1, size=len(ids))
    frac = rng.uniform(_EVIDENCE_LOW, _EVIDENCE_HIGH, size=(len(ids), 2))
    feats, types, coords, evidence = {}, {}, {}, np.empty(len(ids))
    for i, sid in enumerate(ids):
        n = int(sizes[i])
        n_a = max(1, int(np.rint(frac[i, 0] * n)))
        n_b = max(1, min(n - n_a - 1, int(np.rint(frac[i, 1] * n))))
        t = np.zeros(n, dtype=np.int64)
        t[:n_a], t[n_a : n_a + n_b] = 1, 2
        t = rng.permutation(t)
        x = (_PATCH_NOISE * rng.normal(size=(n, feature_dim))).astype(np.float32)
        x[t == 1] += _TYPE_AMPLITUDE * centres[0]
        x[t == 2] += _TYPE_AMPLITUDE * centres[1]
        evidence_type = 1 if rule_pos[i] else 2
        # Evidence patches show the severity; distractor patches a smaller unrelated one. Attending to them
        # dilutes and blurs the signal: a consistent cue that teaches attention the rule in a few epochs
        # (a full-size unrelated severity made the gradient too noisy to learn from 150 patients).
        for typ, sev in (
            (evidence_type, severity[i]),
            (3 - evidence_type, _DISTRACTOR_SEVERITY * rng.normal()),
        ):
            k = np.flatnonzero(t == typ)
            shown = _SEVERITY_AMPLITUDE * sev + _SEVERITY_JITTER * rng.normal(size=k.size)
            x[k] += shown[:, None].astype(np.float32) * centres[4]
        bg = np.flatnonzero(t == 0)
        x[bg] += _BACKGROUND_AMPLITUDE * centres[2 + rng.integers(0, 2, size=bg.size)]
        width = int(np.ceil(np.sqrt(n)))
        pos = np.arange(n)
        coords[sid] = (np.stack([pos % width, pos // width], axis=1) * _PATCH_PIXELS).astype(np.float32)
        feats[sid], types[sid] = x, t
        evidence[i] = np.mean(t == evidence_type)
    return feats, types, coords, evidence, centres


def _clinical(rng, ids, rule_pos, z_clin):
    n = len(ids)
    lab = rng.normal(1.0, 0.3, size=n)
    lab[rng.random(n) < 0.15] = np.nan  # MCAR missing values inside the table (not a missing modality)
    return pd.DataFrame(
        {
            RULE_VARIABLE: np.where(rule_pos, "positive", "negative"),
            "biomarker_level": np.round(50.0 + 10.0 * z_clin, 2),
            "age": np.round(rng.normal(62.0, 10.0, size=n)).clip(25, 95),
            "lab_value": np.round(lab, 3),
            "site": rng.choice(np.array(["site_a", "site_b", "site_c"]), size=n),
            "noise_1": rng.normal(size=n),
            "noise_2": rng.normal(size=n),
        },
        index=pd.Index(ids, name="sample_id"),
    )


def _genomics(rng, ids, g, n_genes):
    genes = [f"GENE{j:03d}" for j in range(n_genes)]
    signal_idx = np.sort(rng.choice(n_genes, size=4, replace=False))
    x = rng.uniform(4.0, 10.0, size=n_genes)[None, :] + rng.normal(size=(len(ids), n_genes))
    x[:, signal_idx] += 2.0 * g[:, None]
    adata = ad.AnnData(
        X=x.astype(np.float32),
        obs=pd.DataFrame(index=pd.Index(ids, name="sample_id")),
        var=pd.DataFrame(index=pd.Index(genes, name="gene")),
    )
    n_sets = max(1, n_genes // 10)
    gene_sets = {f"PATHWAY_{k + 1:02d}": genes[k::n_sets] for k in range(n_sets)}
    return adata, gene_sets, [genes[j] for j in signal_idx]


def _events(rng, ids, e, n_codes):
    codes = np.array([f"EV{j:03d}" for j in range(n_codes)])
    signal_idx = np.sort(rng.choice(n_codes, size=3, replace=False))
    rate = np.full((len(ids), n_codes), 0.6)
    rate[:, signal_idx] = 1.5 * np.exp(1.0 * e)[:, None]
    counts = rng.poisson(rate)
    empty = counts.sum(axis=1) == 0
    counts[empty, rng.integers(0, n_codes, size=int(empty.sum()))] = 1  # every sample has >= 1 event
    row, col = np.nonzero(counts)
    rep = counts[row, col]
    sample = np.repeat(np.asarray(ids, dtype=object)[row], rep)
    code_idx = np.repeat(col, rep)
    time = np.round(rng.uniform(-720.0, 0.0, size=code_idx.size), 2)
    value = np.where(code_idx % 2 == 1, np.round(rng.normal(size=code_idx.size), 3), np.nan)
    df = pd.DataFrame(
        {
            "sample_id": sample,
            "time": time,
            "code": codes[code_idx],
            "value": value,
            # events older than a year belong to an "earlier visit" (segment 1)
            "segment": (time < -365.0).astype(np.int64),
        }
    )
    df = df.sort_values(["sample_id", "time", "code"], kind="stable").reset_index(drop=True)
    return df, [str(c) for c in codes[signal_idx]]


def _censoring_rate(hazard: np.ndarray, target: float) -> float:
    """Rate mu of exponential censoring with mean P(C < T) = mean(mu / (mu + hazard)) = target."""
    lo, hi = 1e-12, 1e12
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if np.mean(mid / (mid + hazard)) < target:
            lo = mid
        else:
            hi = mid
    return float(np.sqrt(lo * hi))


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # file object: np.save would append ".npy"
        np.save(fh, array)


def _missingness(rng, n, mods, missing_rate):
    """bool ``[n, len(mods)]`` presence; a sample never loses every modality (clinical is kept then)."""
    present = rng.random((n, len(mods))) >= missing_rate
    keep = mods.index("clinical") if "clinical" in mods else 0
    present[~present.any(axis=1), keep] = True
    return present


def make_synthetic_cohort(
    n_patients: int = 200,
    *,
    task: str = "classification",
    modalities: Sequence[str] = SYNTHETIC_MODALITIES,
    n_patches: tuple[int, int] = (20, 60),
    feature_dim: int = 32,
    n_genes: int = 50,
    n_codes: int = 30,
    missing_rate: float = 0.1,
    seed: int = 0,
    feature_dir: str | os.PathLike | None = None,
):
    """A cohort of ``n_patients`` samples (one per patient) with a planted, PersAM-style rule.

    See the module docstring for the generating process. Sample ids are ``S0000``, ``S0001``, ...

    Args:
        task: "classification" (``labels`` 0/1, 1 = poor outcome) or "survival" (``survival`` time/event).
        modalities: which of "clinical", "genomics", "images", "events" the cohort holds.
        n_patches: (low, high) inclusive range of the bag size N of each sample.
        feature_dim: D of the patch features ``[N, D]``.
        n_genes: genes in the AnnData (4 of them are signal genes); gene sets of about 10 genes each.
        n_codes: distinct event codes (3 of them are signal codes).
        missing_rate: probability that a sample lacks a modality (independently per modality; a sample
            never lacks all of them).
        seed: the cohort is a deterministic function of all arguments, including the seed.
        feature_dir: if given, each bag is written to ``feature_dir/<sample_id>.npy`` (atomically) and the
            cohort reads them memory-mapped; by default the bags stay in memory.

    Returns:
        ``(cohort, truth)``: a :class:`~clinfuse.datasets.Cohort` and its :class:`SyntheticTruth`.
    """
    from .cohort import Cohort  # imported here so that the data generation works on its own
    from .images import ImageBags

    mods = _check_args(n_patients, task, modalities, n_patches, feature_dim, n_genes, n_codes, missing_rate)
    n = int(n_patients)
    width = max(4, len(str(n - 1)))
    ids = [f"S{i:0{width}d}" for i in range(n)]
    r_latent, r_img, r_clin, r_gen, r_ev, r_miss, r_out = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)
    )

    rule_pos = r_latent.random(n) < 0.5
    z_clin, g, e, severity = r_latent.normal(size=(4, n))
    feats, types, coords, evidence, centres = _images(r_img, ids, rule_pos, severity, n_patches, feature_dim)
    lp = _W_IMAGE * severity + _W_CLINICAL * z_clin + _W_GENES * g + _W_EVENTS * e

    labels = survival = None
    if task == "classification":
        noise = r_out.logistic(scale=0.5, size=n)
        labels = pd.Series((lp + noise > 0).astype(np.int64), index=ids, name="label")
    else:
        hazard = np.exp(_SURVIVAL_SCALE * lp) * np.log(2.0) / 24.0
        t_event = r_out.exponential(1.0 / hazard)
        t_cens = r_out.exponential(1.0 / _censoring_rate(hazard, _TARGET_CENSORING), size=n)
        survival = pd.DataFrame(
            {"time": np.maximum(np.minimum(t_event, t_cens), 1e-3), "event": (t_event <= t_cens).astype(int)},
            index=pd.Index(ids, name="sample_id"),
        )

    present = _missingness(r_miss, n, mods, missing_rate)
    has = {m: [sid for sid, p in zip(ids, present[:, k]) if p] for k, m in enumerate(mods)}

    clinical = _clinical(r_clin, ids, rule_pos, z_clin)
    adata, gene_sets, signal_genes = _genomics(r_gen, ids, g, n_genes)
    events, signal_codes = _events(r_ev, ids, e, n_codes)

    kw = {}
    if "clinical" in mods:
        kw["clinical"] = clinical.loc[has["clinical"]]
        kw["clinical_types"] = {RULE_VARIABLE: "categorical", "site": "categorical"}
    if "genomics" in mods:
        kw["genomics"] = adata[has["genomics"]].copy()
        kw["gene_sets"] = gene_sets
    if "images" in mods:
        img_ids = has["images"]
        if feature_dir is not None:
            folder = Path(feature_dir)
            folder.mkdir(parents=True, exist_ok=True)
            source = {}
            for sid in img_ids:
                _write_npy(folder / f"{sid}.npy", feats[sid])
                source[sid] = str(folder / f"{sid}.npy")
        else:
            source = {sid: feats[sid] for sid in img_ids}
        kw["images"] = ImageBags.from_features(source, coords={sid: coords[sid] for sid in img_ids})
    if "events" in mods:
        ev_ids = has["events"]
        kw["events"] = events[events["sample_id"].isin(set(ev_ids))].reset_index(drop=True)
        kw["index_time"] = pd.Series(0.0, index=ev_ids, name="index_time")  # times are days before index
    cohort = Cohort(
        labels=labels, survival=survival, name=f"synthetic(n={n}, task={task}, seed={seed})", **kw
    )

    img_ids = has.get("images", [])
    rule = pd.Series(rule_pos, index=ids, name=RULE_VARIABLE)
    truth = SyntheticTruth(
        relevant_patches={s: types[s] == (1 if rule[s] else 2) for s in img_ids},
        patch_type={s: types[s] for s in img_ids},
        rule_variable=RULE_VARIABLE,
        signal_variables=["biomarker_level"],
        signal_genes=signal_genes,
        signal_codes=signal_codes,
        description=(
            f"{n} synthetic patients ({task}). Patch types A and B lie along two orthogonal directions "
            f"(amplitude {_TYPE_AMPLITUDE} vs noise sd {_PATCH_NOISE}). '{RULE_VARIABLE}' = positive makes "
            f"type-A patches the evidence, negative makes type-B patches the evidence; the evidence patches "
            f"show the patient's severity v along a fifth direction, the distractor type an unrelated "
            f"smaller one. "
            f"Linear predictor lp = {_W_IMAGE}*v + {_W_CLINICAL}*z(biomarker_level) + {_W_GENES}*g + "
            f"{_W_EVENTS}*e, with g raising genes {signal_genes} and e raising the rate of codes "
            f"{signal_codes}. "
            + (
                "label = 1 when lp + Logistic(0, 0.5) > 0."
                if task == "classification"
                else f"time ~ Exponential(hazard = ln2/24 * exp({_SURVIVAL_SCALE}*lp)), ~30% censored."
            )
            + f" Each modality is missing with probability {missing_rate}; seed {seed}."
        ),
        rule_value=rule,
        evidence_fraction=pd.Series(evidence, index=ids, name="evidence_fraction"),
        severity=pd.Series(severity, index=ids, name="severity"),
        linear_predictor=pd.Series(lp, index=ids, name="linear_predictor"),
        directions=centres[:2].copy(),
        severity_direction=centres[4].copy(),
    )
    return cohort, truth
