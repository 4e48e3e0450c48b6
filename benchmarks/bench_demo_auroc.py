"""The demo's planted-evidence figures over seeds: the current ``clinfuse demo`` recipe against the previous.

For each recipe and seed: the demo's cohort (four modalities, images as the instances) of that seed, its
split, PersAM fitted as the demo fits it, then on the held-out patients the planted-patch AUROC of
explanatory attention (per-patient median and min, pooled), the attention mass ratio on the planted patches
(1.0 = uniform), the held-out AUC, and the seconds (wall and CPU) of cohort + fit + evaluation + explanation.
Seed 0 of ``current`` is what ``clinfuse demo`` prints. ``--demo`` also times the real command once
(``clinfuse demo``, wall and CPU of the child process), which adds the figures and the writing.

Recipes: ``current`` is :data:`clinfuse.fusion.commands.DEMO_SIZES` ``["default"]``; ``previous`` the recipe
before it (240 patients, batch 16, d_model 32, patience 6, 25 epochs); ``current, d_model 32`` isolates the
width.

    python benchmarks/bench_demo_auroc.py --seeds 0 1 2 3 4 --workers 2 --demo  # -> out/demo_auroc.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

PREVIOUS = {"n_patients": 240, "n_patches": (20, 60), "max_epochs": 25, "batch_size": 16, "d_model": 32,
            "early_stopping_patience": 6}


def recipes() -> dict[str, dict]:
    from clinfuse.fusion.commands import DEMO_SIZES

    current = dict(DEMO_SIZES["default"])
    return {"current": current, "previous": PREVIOUS, "current, d_model 32": {**current, "d_model": 32},
            # PersAM before its instance evidence was centred and gated (its default until then)
            "current, ungated PersAM": {**current, "aggregator_kwargs": {"center_evidence": False,
                                                                           "instance_gate_penalty": None}}}


def run(name: str, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.commands import demo_cohort, demo_model_params
    from clinfuse.fusion.explain.faithfulness import planted_summary

    size = recipes()[name]
    t0, c0 = time.perf_counter(), time.process_time()
    _, train, test, truth = demo_cohort(size, seed=seed)
    params = demo_model_params(size, seed=seed)
    if "aggregator_kwargs" in size:
        params["aggregator_kwargs"] = size["aggregator_kwargs"]
    model = FusionModel(**params).fit(train)
    auc = float(model.evaluate(test)["auc"])
    summary = planted_summary(model.explain(test), truth, test.labels, kind="explanatory")
    return {"recipe": name, "seed": seed, "auroc_median": round(summary["auroc_median"], 4),
            "auroc_min": round(summary["auroc_min"], 4), "auroc_pooled": round(summary["auroc_pooled"], 4),
            "mass_ratio": round(summary["mass_ratio"], 3), "n_patients": summary["n_patients"],
            "test_auc": round(auc, 4), "best_epoch": model.best_epoch_,
            "epochs_run": model.metrics_["epochs_run"], "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1)}


def time_demo() -> dict:
    """Wall and CPU seconds of one ``clinfuse demo`` (the current recipe, end to end)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        command = [str(Path(sys.executable).with_name("clinfuse")), "demo", "--out", str(Path(tmp) / "demo")]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"clinfuse demo failed:\n{done.stderr[-2000:]}")
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("planted evidence patches"))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "printed": line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=list(recipes()))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--demo", action="store_true", help="also time the real `clinfuse demo` once")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "demo_auroc.json"))
    args = parser.parse_args()
    jobs = [(name, seed) for seed in args.seeds for name in args.recipes]  # paired by seed
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = list(pool.map(run, *zip(*jobs)))
    for r in runs:
        print(json.dumps(r), flush=True)
    results: dict = {"command": "python benchmarks/bench_demo_auroc.py " + " ".join(sys.argv[1:]),
                     "recipes": {n: recipes()[n] for n in args.recipes}, "runs": runs,
                     "load_average_at_end": os.getloadavg(), "summary": {}}
    for name in args.recipes:
        mine = [r for r in runs if r["recipe"] == name]
        results["summary"][name] = {
            **{f"{k}_median": float(np.median([r[k] for r in mine]))
               for k in ("auroc_median", "auroc_pooled", "mass_ratio", "test_auc", "wall_s", "cpu_s")},
            "auroc_median_min_over_seeds": float(min(r["auroc_median"] for r in mine)),
            "auroc_pooled_min_over_seeds": float(min(r["auroc_pooled"] for r in mine)),
            "seeds_with_auroc_median_at_least_0.9": f"{sum(r['auroc_median'] >= 0.9 for r in mine)} of "
                                                    f"{len(mine)}"}
    if "previous" in results["summary"]:
        base = results["summary"]["previous"]
        for entry in results["summary"].values():  # ratios to the previous recipe, medians over seeds
            entry["cpu_ratio_to_previous"] = round(entry["cpu_s_median"] / base["cpu_s_median"], 2)
            ratio = entry["mass_ratio_median"] / base["mass_ratio_median"]
            entry["mass_ratio_ratio_to_previous"] = round(ratio, 2)
    if args.demo:
        results["clinfuse_demo"] = time_demo()
        print(json.dumps(results["clinfuse_demo"]))
    print(json.dumps(results["summary"], indent=1))
    print(f"wrote {write_json(Path(args.out), results)}")


if __name__ == "__main__":
    main()
