"""Why a pure-noise image modality got credit, and which training levers remove it (synthetic cohort).

Cohort: the one of the noise-modality tests (``tests/fusion/explain/test_contributions.py``): 400 patients
whose clinical ``biomarker_level`` decides the label (above / below its median), plus image bags of 64-127
i.i.d. N(0, 1) patch features of dimension 16 (nothing of the patient in them). Split: 30% held out
(``train_validation_split(cohort, fraction=0.3, seed=1)``). Every model: ``FusionModel(d_model=16,
n_heads=2, seed=0)`` plus the lever, fitted on the training part.

Per model, on the test part (the class-1 logit; two classes are antisymmetric here): the images' mean
|Shapley share| with the mean training prediction as base (the default) and with ``base="network"``, the
images' mean |phi|, the same when every test patient gets one *common* noise bag (what is left is the
presence of a bag and its interaction with the clinical record, not its content), and the mean
|phi(actual bag) - phi(fresh bag)| when each patient's bag is redrawn (the content).

    python benchmarks/bench_noise_modality_levers.py      # ~10 fits of a few seconds
"""

from __future__ import annotations

import numpy as np
from common import OUT_DIR, base_parser, provenance, setup, write_json

UNGATED = {"center_evidence": False, "instance_gate_penalty": None}
LEVERS = {
    "old_default": {"aggregator_kwargs": UNGATED},
    "old_md_0.5": {"modality_dropout": 0.5, "aggregator_kwargs": UNGATED},
    "old_max_patches_16": {"max_patches": 16, "aggregator_kwargs": UNGATED},
    "old_weight_decay_0.1": {"weight_decay": 0.1, "aggregator_kwargs": UNGATED},
    "old_lr_3e-4": {"lr": 3e-4, "aggregator_kwargs": UNGATED},
    "centre_only": {"aggregator_kwargs": {"instance_gate_penalty": None}},
    "gate_only": {"aggregator_kwargs": {"center_evidence": False}},
    "gate_no_penalty": {"aggregator_kwargs": {"instance_gate_penalty": 0.0}},
    "default": {},
    "default_md_0.5": {"modality_dropout": 0.5},
}
"""Model name -> FusionModel keywords beside ``d_model=16, n_heads=2``."""


def noise_cohort(n: int = 400, *, n_patches: int = 64, seed: int = 0):
    """The tests' cohort: the clinical record decides the label, the image bags are pure noise."""
    from clinfuse.fusion.explain.faithfulness import noise_images_cohort

    return noise_images_cohort(n, n_patches=n_patches, seed=seed)


def with_bags(cohort, *, common: bool, seed: int = 7, n_patches: int = 96):
    """``cohort`` with new noise bags: one bag shared by every patient (``common``) or a fresh one each."""
    from clinfuse.datasets import Cohort, ImageBags

    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n_patches, 16)).astype(np.float32)
    bags = {str(s): shared if common else rng.standard_normal((n_patches, 16)).astype(np.float32)
            for s in cohort.sample_ids}
    return Cohort(clinical=cohort.clinical, images=ImageBags.from_features(bags), labels=cohort.labels)


def run(params: dict, train, test) -> dict:
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.explain import modality_contributions
    from clinfuse.fusion.explain.contribution_plot import mean_shares

    model = FusionModel(verbose=False, seed=0, d_model=16, n_heads=2, **params).fit(train)
    target = str(model.classes_[-1])

    def phi(cohort):
        return modality_contributions(model, cohort, base="mean", background=train).modality_contributions(
            target_class=target)["images"]

    actual = phi(test)
    common, fresh = phi(with_bags(test, common=True)), phi(with_bags(test, common=False))
    return {"auc": float(model.score(test)), "epochs": len(model.history_),
            "images_share": float(mean_shares(modality_contributions(model, test, base="mean",
                                                                     background=train))
                                  .loc["images", "shapley_share"]),
            "images_share_network_base": float(mean_shares(modality_contributions(
                model, test, base="network")).loc["images", "shapley_share"]),
            "images_mean_abs_phi": float(actual.abs().mean()),
            "images_mean_abs_phi_common_bag": float(common.abs().mean()),
            "images_phi_change_fresh_bag": float((actual - fresh.loc[actual.index]).abs().mean())}


def main() -> None:
    p = base_parser(__doc__, data_default=OUT_DIR)
    p.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS))
    args = p.parse_args()
    setup(args.threads)
    from clinfuse.datasets import train_validation_split

    cohort = noise_cohort()
    train_ids, test_ids = train_validation_split(cohort, fraction=0.3, seed=1)
    train, test = cohort.subset(train_ids), cohort.subset(test_ids)
    results = {}
    for name in args.levers:
        results[name] = run(LEVERS[name], train, test)
        r = results[name]
        print(f"{name:22s} auc {r['auc']:.3f}  share {r['images_share']:.3f}  share(base network) "
              f"{r['images_share_network_base']:.3f}  |phi| {r['images_mean_abs_phi']:.3f}  common bag "
              f"{r['images_mean_abs_phi_common_bag']:.3f}  "
              f"fresh-bag change {r['images_phi_change_fresh_bag']:.3f}", flush=True)
    out = args.out or OUT_DIR / "noise_modality_levers.json"
    ratio = None
    if "old_default" in results:
        ratio = {k: v["images_share"] / results["old_default"]["images_share"] for k, v in results.items()}
    write_json(out, {"benchmark": "noise image modality on the synthetic test cohort: levers",
                     **provenance(args), "levers": {k: LEVERS[k] for k in args.levers}, "results": results,
                     "reference": "old_default", "share_ratio_vs_old_default": ratio})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
