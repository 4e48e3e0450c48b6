"""Noise-modality benchmark: attention modality weight vs exact Shapley share on a real cohort.

Cohort: GSE7390 (198 breast cancer patients, 76 probe expression values + 4 clinical variables, time to
distant metastasis), plus an ``images`` modality that is pure Gaussian noise by construction: every patient
gets a bag of 24-48 "patch features" of dimension 32 drawn i.i.d. N(0, 1) (seeded; nothing of the patient
in it). Any credit the images get is credit for noise.

Protocol: ``make_splits(cohort, 3, seed=0, repeats=R)`` folds; on each, these models are fitted on the
training part (``verbose=False``, ``seed`` = fold index): ``default``, ``FusionModel(task="survival")`` with
the library defaults; ``old_default``, the defaults before PersAM centred and gated its instance evidence
(``aggregator_kwargs={"center_evidence": False, "instance_gate_penalty": None}``, what a saved model of
that time rebuilds); ``no_centring``, the default without the centring (the gate alone).
On the test part we read, per model, per modality and over the samples that have it,

* the baseline: the mean attention ``modality`` weight (``report.modality_weights()``, the number the issue
  found at 0.85 for noise images on a TCGA cohort), and
* the mean |Shapley share| of the exact contributions (``modality_contributions``, by masking, with its
  default base: the network's own all-masked output, where a modality the model ignores is a null player
  and gets 0), and the same with ``base="mean"`` (the mean prediction over the training part),

and report the median (and range) over the folds, and the fold c-index for context. A check on the
Shapley values themselves: the mean |change of the predicted risk| when each test patient's noise bag is
redrawn (fresh noise, same patient), beside the mean |phi| of each modality (risk units): if the model
ignored the noise, redrawing it would change nothing. The figure is drawn from
the medians.

    python benchmarks/bench_modality_contributions.py            # 3 folds x 2 repeats, both models
    python benchmarks/bench_modality_contributions.py --quick    # 2 folds, 3 epochs: a smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import (
    DATA,
    OUT_DIR,
    accelerator_of,
    autocast,
    base_parser,
    provenance,
    setup,
    synchronize,
    write_json,
)

DEVICE = argparse.Namespace(device="cpu", autocast="none")
"""``--device`` / ``--autocast`` of the run (set by ``main``)."""

N_PATCHES = (24, 48)
FEATURE_DIM = 32


def with_noise_images(cohort, *, seed: int):
    """``cohort`` plus a pure-noise image-bag modality (Gaussian features, nothing of the patient)."""
    from clinfuse.datasets import Cohort, ImageBags

    rng = np.random.default_rng(seed)
    ids = [str(s) for s in cohort.sample_ids]
    bags = {s: rng.standard_normal((int(rng.integers(N_PATCHES[0], N_PATCHES[1] + 1)), FEATURE_DIM))
            .astype(np.float32) for s in ids}
    return Cohort(clinical=cohort.clinical, genomics=cohort.genomics, images=ImageBags.from_features(bags),
                  survival=cohort.survival, name="GSE7390 + noise images")


VARIANTS = {"old_default": {"aggregator_kwargs": {"center_evidence": False, "instance_gate_penalty": None}},
            "default": {}, "no_centring": {"aggregator_kwargs": {"center_evidence": False}},
            "md_0.3": {"modality_dropout": 0.3}, "md_0.5": {"modality_dropout": 0.5}}
"""Model name -> FusionModel keywords beside the defaults."""
FIGURE_MODELS = ("old_default", "default")


def run_fold(cohort, train_ids, test_ids, *, seed: int, max_epochs: int | None, params: dict) -> dict:
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.explain import modality_contributions
    from clinfuse.fusion.explain.contribution_plot import mean_shares
    from clinfuse.fusion.metrics import concordance_index

    kw = {} if max_epochs is None else {"max_epochs": max_epochs}
    model = FusionModel(task="survival", verbose=False, seed=seed, accelerator=accelerator_of(DEVICE), **kw,
                        **params)
    t0 = time.perf_counter()
    train = cohort.subset(train_ids)
    with autocast(DEVICE):
        model.fit(train)
    fit_s = time.perf_counter() - t0
    test = cohort.subset(test_ids)
    t0 = time.perf_counter()
    with autocast(DEVICE):
        contributions = modality_contributions(model, test)  # default base: the all-masked output
    synchronize(DEVICE)

    contributions_s = time.perf_counter() - t0
    attention = model.explain(test)
    table = mean_shares(contributions, attention)
    risk = model.predict_risk(test)
    surv = test.survival.loc[risk.index]
    # the check on what the Shapley values say: do the predictions move when the noise is redrawn?
    redrawn = model.predict_risk(with_noise_images(test, seed=1000 + seed))
    phi = contributions.modality_contributions().abs()
    # the same values with the mean training prediction as base, which credits a modality the model
    # ignores with about (network base - mean prediction) / M
    table["shapley_share_mean_base"] = mean_shares(modality_contributions(model, test, base="mean",
                                                                          background=train))["shapley_share"]
    for m, row in table.iterrows():
        ids = contributions.to_frame("modality_contribution").query("token == @m")["sample_id"].unique()
        table.loc[m, "mean_abs_phi"] = float(phi.loc[ids, m].mean())
    return {"mean_abs_risk_change_noise_redrawn": float((risk - redrawn.loc[risk.index]).abs().mean()),
            "mean_abs_risk_deviation": float((risk - risk.mean()).abs().mean()),
            "aggregator": model.aggregator_, "fit_s": fit_s, "contributions_s": contributions_s,
            "n_test": len(test_ids),
            "c_index": concordance_index(surv["time"], surv["event"], risk.to_numpy()),
            "modalities": {m: {k: float(v) for k, v in row.items()} for m, row in table.iterrows()}}


def summarise(folds: list[dict]) -> dict:
    out = {}
    for m in folds[0]["modalities"]:
        per = {k: [f["modalities"][m][k] for f in folds] for k in (
            "attention_share", "shapley_share", "mean_abs_phi", "shapley_share_mean_base")}
        out[m] = {f"{k}_median": float(np.median(v)) for k, v in per.items()}
        out[m].update({f"{k}_range": [float(np.min(v)), float(np.max(v))] for k, v in per.items()})
    return out


def plot(summaries: dict, path) -> None:
    """One panel per model (``FIGURE_MODELS``): attention share and |Shapley share| (both bases) per modality
    (median, range bars)."""
    from clinfuse.fusion.explain.plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(summaries), figsize=(5.6 * len(summaries), 3.8), sharey=True,
                             squeeze=False)
    for ax, (variant, summary) in zip(axes[0], summaries.items()):
        names = list(summary)
        x = np.arange(len(names))

        def err(k, names=names, summary=summary):
            return np.array([[summary[m][f"{k}_median"] - summary[m][f"{k}_range"][0],
                              summary[m][f"{k}_range"][1] - summary[m][f"{k}_median"]] for m in names]).T

        bars = (("attention_share", "tab:grey", "attention share (modality weight)"),
                ("shapley_share", "tab:blue", "|Shapley share| (exact; default base: network, all masked)"),
                ("shapley_share_mean_base", "lightsteelblue", "|Shapley share|, base: mean prediction"))
        for j, (key, colour, label) in enumerate(bars):
            drawn = ax.bar(x + (j - 1) * 0.27, [summary[m][f"{key}_median"] for m in names], 0.26,
                           yerr=err(key), color=colour, capsize=2, label=label)
            ax.bar_label(drawn, fmt="%.2f", fontsize=7, padding=2)
        ax.set_xticks(x, [f"{m}\n(pure noise)" if m == "images" else m for m in names])
        ax.set_ylim(0, 1.35)  # room for the legend above the bars
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_title(f"{variant.replace('_', ' ')}: median over folds (bars: range)", fontsize=9)
        ax.legend(fontsize=6.5, loc="upper center", ncol=1)
    axes[0][0].set_ylabel("mean share over test samples")
    fig.suptitle("GSE7390 + noise images", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    p = base_parser(__doc__, data_default=DATA / "gse7390_etc")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--plot-only", action="store_true", help="redraw the figure from the JSON")
    args = p.parse_args()
    DEVICE.device, DEVICE.autocast = args.device, args.autocast
    if args.plot_only:
        stem = "modality_contributions_quick" if args.quick else "modality_contributions"
        saved = json.loads((args.out or OUT_DIR / f"{stem}.json").read_text())
        plot({v: saved["models"][v]["summary"] for v in FIGURE_MODELS}, OUT_DIR / f"{stem}.png")
        return
    setup(args.threads)
    from clinfuse.datasets import load_gse7390, make_splits

    cohort = with_noise_images(load_gse7390(args.data), seed=0)
    k, repeats = (2, 1) if args.quick else (3, args.repeats)
    splits = make_splits(cohort, k, seed=0, repeats=repeats)
    folds: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for i, (train_ids, test_ids) in enumerate(splits):
        for variant, params in VARIANTS.items():
            fold = run_fold(cohort, list(train_ids), list(test_ids), seed=i,
                            max_epochs=3 if args.quick else None, params=params)
            folds[variant].append(fold)
            print(f"fold {i} {variant}: c-index {fold['c_index']:.3f}, " + ", ".join(
                f"{m}: attention {v['attention_share']:.3f} / |Shapley| {v['shapley_share']:.3f}"
                for m, v in fold["modalities"].items()), flush=True)
    stem = "modality_contributions_quick" if args.quick else "modality_contributions"
    models = {}
    for variant, runs in folds.items():
        models[variant] = {
            "params": VARIANTS[variant], "folds": runs, "summary": summarise(runs),
            "c_index_median": float(np.median([f["c_index"] for f in runs])),
            "risk_change_noise_redrawn_median": float(np.median(
                [f["mean_abs_risk_change_noise_redrawn"] for f in runs])),
            "risk_deviation_median": float(np.median([f["mean_abs_risk_deviation"] for f in runs]))}
    ref, new = models["old_default"], models["default"]
    payload = {"benchmark": "noise images on GSE7390: attention modality weight vs exact Shapley share, "
                            "old vs new default",
               **provenance(args),
               "cohort": {"n": len(cohort), "noise_images": {"n_patches": list(N_PATCHES),
                                                             "feature_dim": FEATURE_DIM}},
               "protocol": {"splits": f"make_splits(cohort, {k}, seed=0, repeats={repeats})",
                            "models": {v: f"FusionModel(task='survival', **{p!r})"
                                       for v, p in VARIANTS.items()},
                            "statistic": "per fold: mean over test samples that have the modality; "
                                         "summary: median and range over folds"},
               "models": models,
               "noise_share_ratio_new_over_old": new["summary"]["images"]["shapley_share_median"]
               / ref["summary"]["images"]["shapley_share_median"],
               "c_index_paired_difference_new_minus_old": float(np.median(
                   [n["c_index"] - o["c_index"] for n, o in zip(new["folds"], ref["folds"])]))}
    out = args.out or OUT_DIR / f"{stem}.json"
    write_json(out, payload)
    plot({v: models[v]["summary"] for v in FIGURE_MODELS}, OUT_DIR / f"{stem}.png")
    for variant, model in models.items():
        print(f"== {variant}: c-index {model['c_index_median']:.3f} "
              f"(median over {len(model['folds'])} folds)")
        for m, s in model["summary"].items():
            print(f"{m}: attention {s['attention_share_median']:.3f} vs |Shapley share| "
                  f"{s['shapley_share_median']:.3f} "
                  f"(base='mean': {s['shapley_share_mean_base_median']:.3f})")
        print("mean |risk change| when the noise images are redrawn: "
              f"{model['risk_change_noise_redrawn_median']:.3f} (mean |risk - mean risk|: "
              f"{model['risk_deviation_median']:.3f}); mean |phi|: " + ", ".join(
                  f"{m} {s['mean_abs_phi_median']:.3f}" for m, s in model["summary"].items()))
    print(f"noise share new / old: {payload['noise_share_ratio_new_over_old']:.3f}; median paired c-index "
          f"difference new - old: {payload['c_index_paired_difference_new_minus_old']:+.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
