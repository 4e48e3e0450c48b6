"""Choosing a survival default on training data only: inner 5-fold CV of the first training fold (issue 13).

The selection protocol of the survival defaults (``bench_survival_defaults.py``), as a script: for each
cohort, the samples of the FIRST TRAINING FOLD of repeat 0 of the reported folds (``survival_cohorts.folds``;
its test fold is never read) are split by ``make_splits(train_part, 5, seed=0)``; every arm is fitted on 4
inner parts and scored (Harrell's c-index) on the fifth, paired per inner fold with lifelines
``CoxPHFitter(penalizer=0.1)`` on the same inner folds. ``cgvhd`` (100 bone-marrow transplant patients,
survival time ``survtime`` / ``stat``; covariates ``dx, tx, extent, agvhdgd, age``; the later event times
are outcomes, not covariates) is never reported and is used whole.

Arms (``ARMS``):

* ``round1``: the default before the wide-first fit (the linear term starts at 0,
  ``clinfuse.fusion.wide_start.WIDE_FIRST_ITERATIONS = 0``);
* ``wide_first``: the linear term fitted first by full-batch L-BFGS (``WIDE_FIRST_ITERATIONS = 100``), the
  deep part a residual from zero, then trained jointly at 10x ``lr`` as in round 1;
* ``wide_first_lr1`` / ``wide_first_frozen``: the same with the linear term's learning rate in the joint
  training at 1x ``lr`` / 0 (kept at its ridge optimum, the deep part a pure residual);
* ``wide_first_select``: ``wide_first`` with the linear model itself (before the first epoch) a candidate of
  the checkpoint selection on the validation c-index (``wide_start.LINEAR_CANDIDATE``);
* ``linear_only``: the wide-first model before any training (``lr=1e-12``, one epoch: the ridge-penalised
  linear discrete-time model alone; a diagnostic);
* ``dropout_03`` / ``d_model_32``: the current default with ``dropout=0.3`` / ``d_model=32`` (a smaller or
  more regularised deep part; a screen for a capacity rule scaled to the number of events).

    python benchmarks/bench_survival_inner.py            # -> benchmarks/out/survival_inner.json
    python benchmarks/bench_survival_inner.py --quick    # smoke: 2 inner folds, 2 epochs, 2 cohorts
"""

from __future__ import annotations

import time

import numpy as np
from common import OUT_DIR, base_parser, markdown_table, paired_difference, provenance, setup, write_json
from survival_cohorts import COHORTS, DATA, _cohort, _read_arff, load_cohort
from survival_cohorts import folds as cohort_folds
from survival_peers import cox_ph, ours

ARMS = {"round1": (0, 10.0, False, {}), "wide_first": (100, 10.0, False, {}),
        "wide_first_lr1": (100, 1.0, False, {}), "wide_first_frozen": (100, 0.0, False, {}),
        "wide_first_select": (100, 10.0, True, {}),
        "linear_only": (100, 0.0, False, {"lr": 1e-12, "max_epochs": 1}),
        "dropout_03": (0, 10.0, False, {"dropout": 0.3}), "d_model_32": (0, 10.0, False, {"d_model": 32})}
"""arm -> (``wide_start.WIDE_FIRST_ITERATIONS``, ``training.WIDE_LR_SCALE``: the linear term's learning rate
in the joint training as a multiple of ``lr``, 0 keeps it at its ridge optimum;
``wide_start.LINEAR_CANDIDATE``; FusionModel keywords)."""
INNER_COHORTS = ("gse7390", "gbsg2", "whas500", "veteran", "actg320", "cgvhd")


def load_cgvhd(data=DATA):
    """The unreported selection cohort (see the module docstring)."""
    df = _read_arff(data, "cgvhd.arff")
    return _cohort("cgvhd", df, time="survtime", event=lambda d: d["stat"].astype(int),
                   numeric=["agvhdgd", "age"], categorical=["dx", "tx", "extent"], excluded=[])


def _selection_part(name: str, data) -> tuple:
    if name == "cgvhd":
        cohort = load_cgvhd(data)
        return cohort, list(cohort.sample_ids)
    cohort = load_cohort(name, data)
    train, _test = cohort_folds(name, repeats=1, cohort=cohort)[0]
    return cohort, list(train)


def main() -> None:
    from clinfuse.datasets import make_splits
    from clinfuse.fusion import training, wide_start

    p = base_parser(__doc__, data_default=DATA)
    p.add_argument("--cohorts", nargs="+", default=list(INNER_COHORTS),
                   choices=list(INNER_COHORTS) + list(COHORTS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = p.parse_args()
    setup(args.threads)
    out = args.out or OUT_DIR / ("survival_inner_quick.json" if args.quick else "survival_inner.json")
    cohorts = args.cohorts[:2] if args.quick else args.cohorts
    kw = {"max_epochs": 2} if args.quick else {}
    payload = {"benchmark": "survival defaults chosen on inner folds of training data", **provenance(args),
               "protocol": {"inner_folds": "make_splits(first training fold of repeat 0, 5, seed=0); cgvhd "
                                           "whole",
                            "arms": {a: f"WIDE_FIRST_ITERATIONS={n}, WIDE_LR_SCALE={r}, "
                                        f"LINEAR_CANDIDATE={c}, {x}" for a, (n, r, c, x) in ARMS.items()},
                            "reference": "lifelines CoxPHFitter(penalizer=0.1)"},
               "folds": {}, "summary": {}}
    defaults = wide_start.WIDE_FIRST_ITERATIONS, training.WIDE_LR_SCALE, wide_start.LINEAR_CANDIDATE
    t0 = time.perf_counter()
    for name in cohorts:
        cohort, part = _selection_part(name, args.data)
        inner = make_splits(cohort.subset(part), 5, seed=0)
        if args.quick:
            inner = inner[:2]
        rows = {"cox_ph": [cox_ph(cohort, list(tr), list(te), False) for tr, te in inner]}
        for arm in args.arms:
            n, scale, wide_start.LINEAR_CANDIDATE, extra = ARMS[arm]
            wide_start.WIDE_FIRST_ITERATIONS, training.WIDE_LR_SCALE = n, scale
            rows[arm] = [ours(cohort, list(tr), list(te), False, {**extra, **kw}) for tr, te in inner]
            print(f"  {name:<8} {arm:<11} " + " ".join(f"{r['c_index']:.3f}" for r in rows[arm]), flush=True)
        wide_start.WIDE_FIRST_ITERATIONS, training.WIDE_LR_SCALE, wide_start.LINEAR_CANDIDATE = defaults
        cox = [r["c_index"] for r in rows["cox_ph"]]
        summary = {"cox_ph": {"c_index": float(np.mean(cox))}}
        for arm in args.arms:
            c = [r["c_index"] for r in rows[arm]]
            summary[arm] = {"c_index": float(np.mean(c)), "diff_vs_cox": paired_difference(c, cox),
                            "median_fit_seconds": float(np.median([r["fit_seconds"] for r in rows[arm]]))}
        for arm in [a for a in args.arms if a != "round1" and "round1" in rows]:
            summary[arm]["diff_vs_round1"] = paired_difference(
                [r["c_index"] for r in rows[arm]], [r["c_index"] for r in rows["round1"]])
        payload["folds"][name], payload["summary"][name] = rows, summary
        payload["wall_seconds"] = round(time.perf_counter() - t0, 1)
        write_json(out, payload)
    table = []
    for name, s in payload["summary"].items():
        for arm in args.arms:
            d = s[arm]["diff_vs_cox"]
            r1 = s[arm].get("diff_vs_round1")
            table.append([name, arm, f"{s[arm]['c_index']:.3f}", f"{s['cox_ph']['c_index']:.3f}",
                          f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
                          "" if r1 is None else f"{r1['mean']:+.3f}"])
    payload["table_markdown"] = markdown_table(
        ["cohort", "arm", "c-index", "Cox c-index", "diff vs Cox [95% CI]", "minus round1"], table)
    write_json(out, payload)
    print(payload["table_markdown"])
    print(f"wrote {out} ({payload['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
