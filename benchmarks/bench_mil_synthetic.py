"""Synthetic classic-MIL cohorts shaped like Fox / Tiger / Elephant: where the small-cohort MIL defaults are
chosen (never on the reported sets' folds).

Each cohort (``--cohort-seeds``): 200 bags (100 positive), bag sizes uniform in 2..13 instances, 230
features. Instances come from 24 clusters: centres ``N(0, 1)`` in a random 16-dimensional subspace scaled
by ``--amplitude``, plus isotropic ``N(0, 1)`` noise in all 230 dimensions, then a ReLU-like sparsity on a
third of the features (negative values set to 0, as the Corel features hold many zeros) and global
standardisation. Negative bags draw their instances from clusters 1..23; a positive bag additionally holds
1-3 instances of cluster 0, the target concept. Folds: ``StratifiedKFold(5, shuffle=True, random_state=0)``;
each variant of ``--variant NAME=JSON`` (FusionModel keywords) is fitted on the same folds, seed 0.

    python benchmarks/bench_mil_synthetic.py --variant base='{}' --variant lr='{"lr": 0.003}'
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
from bench_mil_benchmarks import fit_ours, scores
from common import DATA, OUT_DIR, base_parser, paired_difference, provenance, setup, spread, write_json


def make_mil_cohort(seed: int, *, amplitude: float, n_bags: int = 200, dim: int = 230):
    """The generator of the module docstring -> a Cohort of feature bags, labels negative / positive."""
    from clinfuse.datasets import Cohort, ImageBags

    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, 16)))[0]  # [dim, 16] orthonormal
    centres = amplitude * rng.normal(size=(24, 16)) @ basis.T
    sparse = rng.choice(dim, dim // 3, replace=False)
    bags, labels = [], []
    for b in range(n_bags):
        positive = b % 2 == 1
        n = int(rng.integers(2, 14))
        k = int(rng.integers(1, 4)) if positive else 0
        which = np.concatenate([np.zeros(min(k, n), int), rng.integers(1, 24, n - min(k, n))])
        bags.append(centres[which] + rng.normal(size=(n, dim)))
        labels.append("positive" if positive else "negative")
    allx = np.concatenate(bags)
    allx[:, sparse] = np.maximum(allx[:, sparse], 0)
    mu, sd = allx.mean(0), allx.std(0) + 1e-8
    ids = [f"syn{seed}_{b:03d}" for b in range(n_bags)]
    feats, start = {}, 0
    for sid, x in zip(ids, bags, strict=True):
        xs = allx[start:start + len(x)]
        feats[sid] = ((xs - mu) / sd).astype(np.float32)
        start += len(x)
    labels = pd.Series(dict(zip(ids, labels, strict=True)))
    return Cohort(images=ImageBags.from_features(feats), labels=labels, name=f"synthetic MIL {seed}")


def main() -> None:
    p = base_parser(__doc__, data_default=DATA)
    p.add_argument("--cohort-seeds", type=int, nargs="+", default=[101, 102, 103])
    p.add_argument("--amplitude", type=float, default=0.6)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON")
    args = p.parse_args()
    setup(args.threads)
    from sklearn.model_selection import StratifiedKFold

    variants = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.variant)} or {"default": {}}
    ref = next(iter(variants))
    out = args.out or OUT_DIR / "mil_synthetic.json"
    payload = {"benchmark": "synthetic classic-MIL cohorts (where the MIL defaults are chosen)",
               **provenance(args), "variants": variants, "amplitude": args.amplitude, "cohorts": {}}
    acc: dict[str, list[float]] = {k: [] for k in variants}
    secs: dict[str, list[float]] = {k: [] for k in variants}
    for cs in args.cohort_seeds:
        cohort = make_mil_cohort(cs, amplitude=args.amplitude)
        ids = np.asarray(cohort.sample_ids)
        y = cohort.labels.loc[ids].to_numpy()
        rows: dict[str, list] = {k: [] for k in variants}
        for tr, te in StratifiedKFold(args.folds, shuffle=True, random_state=0).split(ids, y):
            for name, kw in variants.items():
                t0 = time.perf_counter()
                fit = fit_ours(kw, cohort, list(ids[tr]), list(ids[te]), 0)
                row = {**scores(cohort, list(ids[te]), fit.pop("p_positive")), "epochs": fit["epochs"],
                       "seconds": time.perf_counter() - t0}
                rows[name].append(row)
                acc[name].append(row["accuracy"])
                secs[name].append(row["seconds"])
        payload["cohorts"][str(cs)] = rows
        print(f"cohort {cs}: " + "  ".join(f"{k} {np.mean([r['accuracy'] for r in v]):.3f}"
                                           for k, v in rows.items()), flush=True)
        write_json(out, payload)
    payload["summary"] = {k: {"accuracy": spread(v), "diff_vs_" + ref: paired_difference(v, acc[ref]),
                              "seconds_median": float(np.median(secs[k]))} for k, v in acc.items()}
    for k, s in payload["summary"].items():
        d = s["diff_vs_" + ref]
        print(f"{k:<24} acc {s['accuracy']['mean']:.3f}  diff {d['mean']:+.3f} [{d['ci_low']:+.3f}, "
              f"{d['ci_high']:+.3f}]  {s['seconds_median']:.1f} s", flush=True)
    write_json(out, payload)


if __name__ == "__main__":
    main()
