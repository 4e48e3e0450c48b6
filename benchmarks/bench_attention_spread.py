"""How often attention is flagged uniform: a trained model vs the same model untrained vs a refit on
permuted labels, on the demo cohort (``clinfuse demo``'s recipe), with the untrained null and without it.

For each seed: the demo cohort and split, the demo's PersAM fitted on the training part ("trained"), a
freshly initialised copy of it ("untrained", the seed of the fit), and the same recipe fitted on the
training part with its labels permuted ("permuted"). Each is explained on the held-out part and judged by
:func:`clinfuse.fusion.explain.spread.attention_spread` twice: against the untrained null of the trained
model (``untrained_null``, copies seeded 1000 + draw, so never the "untrained" arm's own weights) and by the
fallback rule (ratio >= 0.95). Reported per kind: the fraction of (sample, class) rows flagged uniform and
the median N_eff / N; and the null's cost against the explain pass it accompanies (median over seeds).
Then the same for a model whose attention does find the planted patches (the faithfulness recipe,
``explain.faithfulness``, 400 patients, clinical + images) against its own untrained null.

    python benchmarks/bench_attention_spread.py --seeds 0 1 2     # -> benchmarks/out/attention_spread.json
    python benchmarks/bench_attention_spread.py --seeds 0 1 2 --null-draws 1 --skip-planted \
        --out benchmarks/out/attention_spread_one_copy.json      # a null of one untrained copy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

OUT = Path(__file__).resolve().parent / "out" / "attention_spread.json"


def fit_demo(train, seed: int):
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.commands import DEMO_SIZES

    return FusionModel(task="classification", aggregator="persam", d_model=32, n_heads=4,
                       max_epochs=DEMO_SIZES["default"]["max_epochs"], batch_size=16,
                       early_stopping_patience=6, verbose=False, seed=seed).fit(train)


def run_planted(seed: int, draws: int) -> dict:
    """The faithfulness recipe (``explain.faithfulness``: its explanatory attention finds the planted
    patches) on its cohort: how much of its held-out attention is flagged, against its own untrained null."""
    from clinfuse.datasets import make_synthetic_cohort, train_validation_split
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.explain.faithfulness import COHORT_PARAMS, MODEL_PARAMS, planted_patch_auroc
    from clinfuse.fusion.explain.spread import attention_spread, untrained_copy, untrained_null

    cohort, truth = make_synthetic_cohort(**{**COHORT_PARAMS, "seed": seed})
    train_ids, test_ids = train_validation_split(cohort, fraction=0.3, seed=seed)
    model = FusionModel(**{**MODEL_PARAMS, "seed": seed}).fit(cohort.subset(train_ids))
    test = cohort.subset(test_ids)
    report = model.explain(test)
    null = untrained_null(model, test, seed=1000, n_draws=draws)
    auroc = planted_patch_auroc(report.frame, truth, kind="explanatory")
    fresh = untrained_copy(model, seed=seed).explain(test)
    median_auroc = round(float(np.median(list(auroc.values()))), 4)
    return {"seed": seed, "n_test": len(test), "planted_patch_auroc": median_auroc,
            "trained": per_kind(attention_spread(report, null=null)),
            "untrained": per_kind(attention_spread(fresh, null=null))}


def per_kind(spread: pd.DataFrame) -> dict:
    judged = spread[spread["uniform"].notna()]
    return {kind: {"fraction_uniform": round(float(rows["uniform"].astype(bool).mean()), 4),
                   "median_ratio": round(float(rows["ratio"].median()), 4), "rows": int(len(rows))}
            for kind, rows in judged.groupby("kind", sort=False)}


def run(seed: int, draws: int) -> dict:
    from clinfuse.datasets import make_synthetic_cohort, train_validation_split
    from clinfuse.fusion.commands import DEMO_SIZES
    from clinfuse.fusion.explain.spread import attention_spread, untrained_copy, untrained_null

    size = DEMO_SIZES["default"]
    cohort, _ = make_synthetic_cohort(size["n_patients"], task="classification", n_patches=size["n_patches"],
                                      seed=seed)
    train_ids, test_ids = train_validation_split(cohort, fraction=0.25, seed=seed)
    train, test = cohort.subset(train_ids), cohort.subset(test_ids)
    t0 = time.perf_counter()
    trained = fit_demo(train, seed)
    fit_s = time.perf_counter() - t0
    shuffled = cohort.subset(train_ids)
    rng = np.random.default_rng(seed)
    shuffled.labels = pd.Series(rng.permutation(shuffled.labels.to_numpy()), index=shuffled.labels.index)
    models = {"trained": trained, "untrained": untrained_copy(trained, seed=seed),
              "permuted": fit_demo(shuffled, seed)}
    t0 = time.perf_counter()
    trained.explain(test)
    explain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    null = untrained_null(trained, test, seed=1000, n_draws=draws)
    null_s = time.perf_counter() - t0
    arms = {}
    for name, model in models.items():
        report = model.explain(test)
        arms[name] = {"test_auc": round(float(model.score(test)), 4),
                      "null_rule": per_kind(attention_spread(report, null=null)),
                      "fallback_rule": per_kind(attention_spread(report))}
    return {"seed": seed, "n_test": len(test), "fit_seconds": round(fit_s, 1),
            "explain_seconds": round(explain_s, 2), "null_seconds": round(null_s, 2),
            "null_over_explain": round(null_s / explain_s, 2),
            "null_thresholds": null.thresholds().round(5).to_dict(orient="records"), "arms": arms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--null-draws", type=int, default=5, help="untrained copies in the null (default 5)")
    parser.add_argument("--skip-planted", action="store_true", help="only the demo cohort")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = [run(seed, args.null_draws) for seed in args.seeds]
    planted = [] if args.skip_planted else [run_planted(seed, args.null_draws) for seed in args.seeds]
    kinds = sorted({k for r in runs for arm in r["arms"].values() for k in arm["null_rule"]})
    summary = {}
    for arm in ("trained", "untrained", "permuted"):
        summary[arm] = {rule: {kind: float(np.median([r["arms"][arm][rule][kind]["fraction_uniform"]
                                                      for r in runs if kind in r["arms"][arm][rule]]))
                               for kind in kinds}
                        for rule in ("null_rule", "fallback_rule")}
        summary[arm]["median_ratio"] = {
            kind: float(np.median([r["arms"][arm]["null_rule"][kind]["median_ratio"]
                                   for r in runs if kind in r["arms"][arm]["null_rule"]]))
            for kind in kinds}
    summary["null_over_explain_median"] = float(np.median([r["null_over_explain"] for r in runs]))
    planted_kinds = ("explanatory", "exploratory", "patch")
    summary["planted"] = {}
    if planted:
        for arm in ("trained", "untrained"):
            summary["planted"][arm] = {
                kind: float(np.median([r[arm][kind]["fraction_uniform"] for r in planted]))
                for kind in planted_kinds}
        summary["planted"]["trained_median_ratio"] = {
            kind: float(np.median([r["trained"][kind]["median_ratio"] for r in planted]))
            for kind in planted_kinds}
        summary["planted"]["planted_patch_auroc"] = [r["planted_patch_auroc"] for r in planted]
    result = {"command": "python benchmarks/bench_attention_spread.py " + " ".join(sys.argv[1:]),
              "threads": 1, "runs": runs, "planted": planted, "summary": summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
