"""Faithfulness of the explanations on a larger synthetic cohort (issue 6), for persam and abmil.

Runs the checks of ``tests/fusion/explain/test_faithfulness.py`` (the metrics and recipe of
``clinfuse.fusion.explain.faithfulness``) on held-out patients of a synthetic cohort with its planted ground
truth and writes the figures to ``benchmarks/out/faithfulness.json``:

* ``planted_auroc``: per-patient AUROC of the image attention for the planted patches (median, mean, and the
  AUROC pooled over all held-out patches), for every image attention kind the aggregator exports;
* ``top3``: share of signal carriers (clinical record, ``biomarker_level`` >= 1 sd from the mean) whose top 3
  clinical variables hold ``biomarker_level``, by ``feature`` attention (if exported) and by |SHAP|; and by
  |SHAP| the share of those with an image bag whose top 3 hold the rule variable ``marker_status``;
* ``deletion``: mean |change of P(poor outcome)| after removing the top 10% patches by attention vs a random
  10% (5 draws), and their ratio;
* ``personalisation`` (persam only): exploratory attention mass on type-A patches with the marker set
  positive vs negative, and the share of patients for whom it is higher when positive.

Several cohort sizes and seeds can be given (``--n 200 1000 --seeds 0 1 2``); each (aggregator, size, seed)
is one run (its own cohort, split and model), run ``--workers`` at a time in separate processes, and
``summary`` gives, per aggregator and size, the planted-patch AUROC (median over held-out patients) of every
seed and how many seeds reach the issue's 0.9.

Aggregators: any registered name, or a named variant of ``VARIANTS`` (``persam_encoded``: the bag passed
through PersAM's encoder, the first default; ``persam_gated``: the second default, without the modality logit
term; ``persam_encoder_free``: ``n_layers=0``).

Usage: ``python benchmarks/bench_faithfulness.py [--n 400] [--seeds 0] [--aggregators persam abmil]
[--threads 1] [--workers 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from clinfuse.datasets import make_synthetic_cohort, train_validation_split
from clinfuse.fusion import FusionModel
from clinfuse.fusion.explain.faithfulness import (
    COHORT_PARAMS,
    MODEL_PARAMS,
    deletion_effects,
    planted_patch_auroc,
    pooled_planted_auroc,
    signal_carriers,
    top3_share,
    type_a_mass,
)
from clinfuse.fusion.explain.shap import shap_values

ROOT = Path(__file__).resolve().parents[1]

# Named variants: (registered aggregator, its aggregator_kwargs)
# persam_encoded: PersAM's first default (the bag through its encoder, no class-route gate, no logit terms);
# persam_gated: its second default (no modality logit terms)
VARIANTS = {"persam_encoded": ("persam", {"encode_instances": True, "gate_class_route": False,
                                          "modality_logits": False}),
            "persam_gated": ("persam", {"modality_logits": False}),
            "persam_encoder_free": ("persam", {"n_layers": 0})}


def run(aggregator: str, n: int, seed: int, n_shap: int, threads: int = 1,
        overrides: dict | None = None) -> dict:
    torch.set_num_threads(threads)
    cohort, truth = make_synthetic_cohort(**{**COHORT_PARAMS, "n_patients": n, "seed": seed})
    train_ids, test_ids = train_validation_split(cohort, fraction=0.3, seed=seed)
    start = time.perf_counter()
    params = {**MODEL_PARAMS, "aggregator": aggregator, "seed": seed, **(overrides or {})}
    if aggregator in VARIANTS:
        base, extra = VARIANTS[aggregator]
        params["aggregator"] = base
        params["aggregator_kwargs"] = {**extra, **params.get("aggregator_kwargs", {})}
    model = FusionModel(**params).fit(cohort.subset(train_ids))
    fit_s = time.perf_counter() - start
    test = cohort.subset(test_ids)
    report = model.explain(test).to_frame()
    out: dict = {"aggregator": aggregator, "overrides": overrides or {}, "seed": seed, "n_patients": n,
                 "n_train": len(train_ids), "n_test": len(test_ids),
                 "fit_seconds": round(fit_s, 1), "epochs_run": model.metrics_["epochs_run"],
                 "best_epoch": model.metrics_["best_epoch"], "test_auc": round(float(model.score(test)), 4)}
    image_kinds = sorted(set(report.loc[report["modality"] == "images", "kind"]))
    predicted = model.predict(test)
    out["planted_auroc"] = {}
    for kind in image_kinds:
        per = planted_patch_auroc(report, truth, kind=kind)
        out["planted_auroc"][kind] = {"median": round(float(np.median(list(per.values()))), 4),
                                      "mean": round(float(np.mean(list(per.values()))), 4),
                                      "pooled": round(pooled_planted_auroc(report, truth, kind=kind), 4),
                                      "n_patients": len(per)}
        rows = (report["kind"] == kind) & (report["modality"] == "images")
        if report.loc[rows, "target_class"].notna().any():
            per = planted_patch_auroc(report, truth, kind=kind, target=predicted)
            median = round(float(np.median(list(per.values()))), 4)
            out["planted_auroc"][kind]["median_predicted_class"] = median
    signal = truth.signal_variables[0]
    carriers = signal_carriers(cohort, list(test.sample_ids), variable=signal)
    top3 = {"n_carriers": len(carriers)}
    feature = report[(report["kind"] == "feature") & (report["modality"] == "clinical")]
    if len(feature):
        top3["attention"] = round(top3_share(feature, carriers, variable=signal), 4)
    shap_ids = carriers[:n_shap]
    shap = shap_values(model, test.subset(shap_ids), modality="clinical", background=test, n_background=10)
    top3["shap"] = round(top3_share(shap.to_frame(), shap_ids, variable=signal), 4)
    with_images = [s for s in shap_ids if test.has(s, "images")]
    top3["shap_rule_variable"] = round(top3_share(shap.to_frame(), with_images,
                                                  variable=truth.rule_variable), 4)
    top3["n_shap"] = len(shap_ids)
    out["top3_biomarker_level"] = top3
    kind = "explanatory" if "explanatory" in image_kinds else "patch"
    d_top, d_rand = deletion_effects(model, test, report, kind=kind)
    out["deletion"] = {"kind": kind, "top10_mean_abs_dp": round(d_top, 5),
                       "random10_mean_abs_dp": round(d_rand, 5),
                       "ratio": round(d_top / max(d_rand, 1e-12), 2)}
    if "exploratory" in image_kinds:
        samples = [s for s in test.sample_ids if test.has(s, "clinical") and test.has(s, "images")
                   and (truth.patch_type[s] == 1).any()]
        pos = type_a_mass(model, test, truth, samples, "positive", kind="exploratory")
        neg = type_a_mass(model, test, truth, samples, "negative", kind="exploratory")
        out["personalisation"] = {"type_a_mass_positive": round(float(pos.mean()), 4),
                                  "type_a_mass_negative": round(float(neg.mean()), 4),
                                  "share_higher_when_positive": round(float((pos > neg).mean()), 4),
                                  "n_patients": len(samples)}
    else:
        out["personalisation"] = None  # no clinical-guided attention to personalise
    return out


def summarise(runs: list[dict]) -> dict:
    """Per aggregator and cohort size: the planted-patch AUROC median of each seed (explanatory if exported,
    else patch) and the number of seeds at or above 0.9."""
    out: dict = {}
    for r in runs:
        kind = "explanatory" if "explanatory" in r["planted_auroc"] else "patch"
        entry = out.setdefault(f"{r['aggregator']} n={r['n_patients']}",
                               {"kind": kind, "by_seed": {}, "test_auc": {}, "top3_attention": {},
                                "top3_shap": {}, "deletion_ratio": {}})
        seed = str(r["seed"])
        entry["by_seed"][seed] = r["planted_auroc"][kind]["median"]
        entry["test_auc"][seed] = r["test_auc"]
        entry["top3_attention"][seed] = r["top3_biomarker_level"].get("attention")
        entry["top3_shap"][seed] = r["top3_biomarker_level"]["shap"]
        shap_rule = r["top3_biomarker_level"]["shap_rule_variable"]
        entry.setdefault("top3_shap_rule_variable", {})[seed] = shap_rule
        entry["deletion_ratio"][seed] = r["deletion"]["ratio"]
    for entry in out.values():
        values = list(entry["by_seed"].values())
        entry["seeds_at_or_above_0.9"] = f"{sum(v >= 0.9 for v in values)} of {len(values)}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[400])
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--aggregators", nargs="+", default=["persam", "abmil"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (separate processes)")
    parser.add_argument("--n-shap", type=int, default=20)
    parser.add_argument("--model-params", type=json.loads, default=None,
                        help="JSON FusionModel keywords over the test's, e.g. "
                             '\'{"aggregator_kwargs": {"n_layers": 0}}\'')
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "faithfulness.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"command": "python benchmarks/bench_faithfulness.py " + " ".join(sys.argv[1:]),
               "model_params": {**{k: v for k, v in MODEL_PARAMS.items() if k != "aggregator"},
                                **(args.model_params or {})},
               "cohort_params": {**COHORT_PARAMS, "n_patients": args.n, "seed": args.seeds},
               "threads": args.threads, "runs": []}
    jobs = [(a, n, seed, args.n_shap, args.threads, args.model_params)
            for a in args.aggregators for n in args.n for seed in args.seeds]
    if args.workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run, *job) for job in jobs]
            for future in futures:
                results["runs"].append(future.result())
                print(json.dumps(results["runs"][-1]), flush=True)
    else:
        for job in jobs:
            results["runs"].append(run(*job))
            print(json.dumps(results["runs"][-1]), flush=True)
    results["summary"] = summarise(results["runs"])
    print(json.dumps(results["summary"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
