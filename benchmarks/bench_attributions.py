"""Integrated gradients against shap's permutation explainer, on the same samples, in one run.

Two models on the synthetic cohort (all four modalities, 50 genes; clinical has 7 variables), 24 held-out
samples explained by both methods: time (median over ``--repeats``, torch at 1 thread), the speed ratio
(goal >= 10x), and the rank agreement: per sample, the Spearman correlation of |attribution| over the
inputs between the two methods (median over samples, class 1), and the Spearman of the mean |attribution|
per input over the samples. Also: integrated gradients of event and patch tokens (no permutation
counterpart), and a 1,554-gene model (permutation on ``--wide-samples`` samples only, timed per sample).

    python benchmarks/bench_attributions.py            # writes benchmarks/out/attributions.json
    python benchmarks/bench_attributions.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    OUT_DIR,
    accelerator_of,
    add_device_args,
    autocast,
    provenance,
    setup,
    synchronize,
    write_json,
)


def fit(n_genes: int, seed: int, epochs: int):
    from clinfuse.datasets import make_synthetic_cohort, train_validation_split
    from clinfuse.fusion import FusionModel

    cohort, truth = make_synthetic_cohort(160, n_genes=n_genes, seed=seed)
    train_ids, test_ids = train_validation_split(cohort, fraction=0.25, seed=1)
    train, test = cohort.subset(train_ids), cohort.subset(test_ids)
    model = FusionModel(d_model=32, n_heads=2, n_layers=1, max_epochs=epochs, max_patches=64, verbose=False,
                        seed=seed, top_genes=None, accelerator=accelerator_of(DEVICE)).fit(train)
    return model, train, test, truth


def per_class_one(report, kind):
    frame = report.to_frame(kinds=[kind])
    return frame[frame["target_class"] == "1"].set_index(["sample_id", "token"])["value"]


def agreement(ig, perm) -> dict[str, float]:
    a = per_class_one(ig, "attribution")
    b = per_class_one(perm, "shap").reindex(a.index)
    per_sample = [spearmanr(x.abs(), b.loc[s].abs()).statistic for s, x in a.groupby(level=0)]
    mean_a, mean_b = a.abs().groupby(level=1).mean(), b.abs().groupby(level=1).mean()
    big = a.abs() > a.abs().quantile(0.75)
    return {"spearman_per_sample_median": float(np.nanmedian(per_sample)),
            "spearman_of_mean_abs": float(spearmanr(mean_a, mean_b.reindex(mean_a.index)).statistic),
            "sign_agreement_top_quartile": float((np.sign(a[big]) == np.sign(b[big])).mean()),
            "top_input_ig": str(mean_a.idxmax()), "top_input_permutation": str(mean_b.idxmax())}


DEVICE = argparse.Namespace(device="cpu", autocast="none")
"""``--device`` / ``--autocast`` of the run (set by ``main``)."""


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with autocast(DEVICE):
            out = fn()
        synchronize(DEVICE)
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times)), times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--perm-repeats", type=int, default=1, help="repeats of the (slow) permutation explainer")
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--wide-samples", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT_DIR / "attributions.json")
    add_device_args(p)
    args = p.parse_args()
    setup(args.threads)
    DEVICE.device, DEVICE.autocast = args.device, args.autocast
    torch.set_num_threads(args.threads)
    epochs, n = (2, 4) if args.quick else (8, args.samples)
    model, train, test, truth = fit(50, 0, epochs)
    results: dict = {"samples": n, "epochs": epochs, "test_auc": float(model.score(test))}
    for modality in ("clinical", "genomics"):
        ids = [s for s in test.sample_ids if test.has(s, modality)][:n]
        sub = test.subset(ids)
        model.shap_values(sub.subset(ids[:1]), modality=modality, background=train)  # compile numba once
        perm, t_perm, perm_times = timed(lambda: model.shap_values(sub, modality=modality, background=train),
                                         args.perm_repeats)
        ig, t_ig, ig_times = timed(lambda: model.attributions(sub, modality=modality, background=train),
                                   args.repeats)
        gap = max(float(np.abs(ig.to_frame().query("sample_id == @s").groupby("target_class")["value"].sum()
                               .to_numpy() - (ig.outputs[s] - ig.base_values[s])).max()) for s in ig.outputs)
        results[modality] = {"n_samples": len(ids), "n_inputs": int(per_class_one(ig, "attribution")
                                                                    .groupby(level=0).size().iloc[0]),
                             "permutation_s": t_perm, "permutation_runs": perm_times,
                             "integrated_gradients_s": t_ig, "integrated_gradients_runs": ig_times,
                             "speedup": t_perm / t_ig, "completeness_gap_max": gap, **agreement(ig, perm)}
        print(modality, {k: v for k, v in results[modality].items() if not k.endswith("runs")}, flush=True)
    for modality in ("events", "images"):
        ids = [s for s in test.sample_ids if test.has(s, modality)][:n]
        report, t, runs = timed(lambda: model.attributions(test.subset(ids), modality=modality), args.repeats)
        frame = report.to_frame()
        results[modality] = {"n_samples": len(ids), "integrated_gradients_s": t, "runs": runs,
                             "tokens_per_sample_mean": float(frame.groupby(["sample_id", "target_class"])
                                                             .size().mean())}
        print(modality, results[modality], flush=True)
    if not args.quick:  # the 1,554-gene panel of the issue
        wide, wtrain, wtest, _ = fit(1554, 0, 3)
        ids = [s for s in wtest.sample_ids if wtest.has(s, "genomics")][:n]
        ig, t_ig, _ = timed(lambda: wide.attributions(wtest.subset(ids), modality="genomics",
                                                      background=wtrain), 1)
        few = wtest.subset(ids[:args.wide_samples])
        perm, t_perm, _ = timed(lambda: wide.shap_values(few, modality="genomics", background=wtrain), 1)
        results["genomics_1554"] = {"n_samples_ig": len(ids), "integrated_gradients_s": t_ig,
                                    "ig_per_sample_s": t_ig / len(ids), "n_samples_permutation": len(few),
                                    "permutation_s": t_perm, "permutation_per_sample_s": t_perm / len(few),
                                    "speedup_per_sample": (t_perm / len(few)) / (t_ig / len(ids))}
        print("genomics_1554", results["genomics_1554"], flush=True)
    write_json(args.out, {"provenance": provenance(args), "results": results})
    print("wrote", args.out)


if __name__ == "__main__":
    main()
