"""The default survival model against a penalised Cox on the six survival cohorts, with ablations (issue 13).

Goal: ``FusionModel(task="survival")`` with no arguments beats lifelines ``CoxPHFitter(penalizer=0.1)``
(mean paired c-index difference > 0) on GSE7390 (ours: clinical + 76 genes; Cox: clinical + 10 gene PCs)
and on the clinical-only GBSG2, WHAS500, veteran, actg320 and flchain (``survival_cohorts.py``: loaders,
the Cox design fitted on the training fold only, and the folds ``make_splits(cohort, 5, seed=0,
repeats=3)``, the same for every model).

Models, each fitted on the training fold and scored (Harrell's c-index) on its test fold:

* ``default``: ``FusionModel(task="survival", verbose=False)``, nothing else.
* ablations, each the default with one choice undone: ``no_wide`` (``wide_penalty=None``: no linear term),
  ``monitor_loss`` (``monitor="val_loss"``: weights and early stopping by the validation loss, the earlier
  default), ``batch_16`` (``batch_size=16`` on every cohort size, the earlier default; it differs from the
  default only where the training part left after the inner 20% validation split has more than 512
  samples, actg320 and flchain, and is run there only), ``cox_head``
  (``survival_head="cox"``), ``old`` (all three earlier defaults at once: what main fitted), and
  ``ungated_persam`` (PersAM without its centred, gated instance evidence: the default before it).
* ``cox_ph``: lifelines ``CoxPHFitter(penalizer=0.1)``, the reference.

What the defaults were chosen on (never on these test folds): the linear term (and its learning rate, 10x
``lr``, and penalty 0.1), ``monitor=None`` -> the c-index for survival, and the discrete head over the Cox
head were compared on inner 5-fold splits of the FIRST TRAINING FOLD of repeat 0 of each cohort (the
samples of that training fold only; its test fold was never used) and on ``cgvhd`` (100 patients, survival,
not reported). The batch-size rule (at most 32 steps an epoch) was chosen for fit time, checked on one such
inner fold of flchain. The ablations below are then measured on the reported folds, as results, not used to
choose.

Default and Cox run on all 15 folds of every cohort; the ablations on repeat 0 (5 folds, ``--ablation-
repeats``) to keep the run to a fraction of an hour on a shared 2-core machine; flchain's ablations on its
first ``--flchain-ablation-folds`` folds. Paired differences are per fold against ``cox_ph`` with a 95%
t-interval (folds of repeated k-fold share training samples: optimistic). Fit-time ratio: median over folds
of (our fit seconds / Cox fit seconds on the same fold, Cox timed with its design matrix), same process.

    python benchmarks/bench_survival_defaults.py            # -> benchmarks/out/survival_defaults.json
    python benchmarks/bench_survival_defaults.py --quick    # smoke: 2 folds, 2 epochs, 2 cohorts
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from common import OUT_DIR, base_parser, fmt, markdown_table, paired_difference, provenance, setup, write_json
from survival_cohorts import COHORTS, DATA, load_cohort
from survival_cohorts import folds as cohort_folds
from survival_peers import cox_ph, ours, run_fold

REFERENCE = "cox_ph"
ABLATIONS = {"no_wide": {"wide_penalty": None}, "monitor_loss": {"monitor": "val_loss"},
             "batch_16": {"batch_size": 16}, "cox_head": {"survival_head": "cox"},
             "old": {"wide_penalty": None, "monitor": "val_loss", "batch_size": 16},
             "ungated_persam": {"aggregator_kwargs": {"center_evidence": False,
                                                      "instance_gate_penalty": None}}}
LARGE = "flchain"


def _summary(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Per model: mean c-index, paired difference to Cox and (ablations) to the default on the same folds,
    fit-time ratio to Cox."""
    ref = {r["split"]: r for r in rows[REFERENCE]}
    default = {r["split"]: r["c_index"] for r in rows.get("default", [])}
    out = {}
    for name, rs in rows.items():
        c = np.array([r["c_index"] for r in rs], dtype=float)
        entry = {"c_index": float(np.nanmean(c)), "sd": float(np.nanstd(c, ddof=1)) if len(c) > 1 else None,
                 "n_folds": len(rs), "median_fit_seconds": float(np.median([r["fit_seconds"] for r in rs]))}
        if name != REFERENCE:
            shared = [r for r in rs if r["split"] in ref]
            entry["diff_vs_cox"] = paired_difference([r["c_index"] for r in shared],
                                                     [ref[r["split"]]["c_index"] for r in shared])
            entry["cox_c_index_same_folds"] = float(np.mean([ref[r["split"]]["c_index"] for r in shared]))
            entry["fit_time_ratio_vs_cox"] = float(np.median(
                [r["fit_seconds"] / max(ref[r["split"]]["fit_seconds"], 1e-6) for r in shared]))
        if name not in (REFERENCE, "default") and default:
            both = [r for r in rs if r["split"] in default]
            entry["diff_vs_default"] = paired_difference([r["c_index"] for r in both],
                                                         [default[r["split"]] for r in both])
        out[name] = entry
    return out


def _table(payload: dict) -> str:
    rows = []
    for cohort, s in payload["summary"].items():
        for name, e in s.items():
            if name == REFERENCE:
                continue
            d = e["diff_vs_cox"]
            rows.append([cohort, name, e["n_folds"], fmt(e["c_index"]), fmt(e["cox_c_index_same_folds"]),
                         f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
                         f"{d['wins']}/{d['n']}", f"{e['fit_time_ratio_vs_cox']:.0f}x",
                         "" if "diff_vs_default" not in e else f"{e['diff_vs_default']['mean']:+.3f}"])
    return markdown_table(["cohort", "model", "folds", "c-index", "Cox c-index (same folds)",
                           "paired diff vs Cox [95% t-CI]", "folds better", "fit time / Cox",
                           "ablation minus default (same folds)"], rows)


def main() -> None:
    p = base_parser(__doc__, data_default=DATA)
    p.add_argument("--cohorts", nargs="+", default=list(COHORTS), choices=list(COHORTS))
    p.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=list(ABLATIONS))
    p.add_argument("--repeats", type=int, default=3, help="repeats of 5-fold CV for default and Cox")
    p.add_argument("--ablation-repeats", type=int, default=1, help="repeats for the ablations")
    p.add_argument("--flchain-ablation-folds", type=int, default=1, help="flchain folds for the ablations")
    p.add_argument("--resummarise", type=Path, default=None,
                   help="recompute the summaries and the table of a written JSON from its folds, then exit")
    args = p.parse_args()
    if args.resummarise is not None:
        payload = json.loads(args.resummarise.read_text())
        payload["summary"] = {c: _summary(rows) for c, rows in payload["folds"].items()}
        payload["table_markdown"] = _table(payload)
        write_json(args.resummarise, payload)
        print(payload["table_markdown"])
        return
    setup(args.threads)
    out = args.out or OUT_DIR / ("survival_defaults_quick.json" if args.quick else "survival_defaults.json")
    cohorts = args.cohorts[:2] if args.quick else args.cohorts
    payload = {"benchmark": "default survival model vs penalised Cox, with ablations", **provenance(args),
               "protocol": {"folds": f"make_splits(cohort, 5, seed=0, repeats={args.repeats})",
                            "ablation_folds": f"the first {5 * args.ablation_repeats} of them "
                                              f"({args.flchain_ablation_folds} for flchain)",
                            "models": {"default": "FusionModel(task='survival', verbose=False)",
                                       **{k: f"default + {v}" for k, v in ABLATIONS.items()},
                                       "cox_ph": "lifelines CoxPHFitter(penalizer=0.1) on "
                                                 "survival_cohorts.design"},
                            "chosen_on": "inner 5-fold splits of repeat 0's first training fold of each "
                                         "cohort and the unreported cgvhd cohort; see the docstring"},
               "folds": {}, "summary": {}}
    t_start = time.perf_counter()
    for name in cohorts:
        cohort = load_cohort(name, args.data)
        splits = cohort_folds(name, repeats=args.repeats, cohort=cohort)
        n_abl = 5 * args.ablation_repeats if name != LARGE else args.flchain_ablation_folds
        if args.quick:
            splits, n_abl = splits[:2], 2
        kw_quick = {"max_epochs": 2} if args.quick else {}
        jobs = [(REFERENCE, splits, lambda c, tr, te: cox_ph(c, tr, te, False)),
                ("default", splits, lambda c, tr, te: ours(c, tr, te, False, kw_quick))]
        big = 0.8 * min(len(tr) for tr, _ in splits) > 512  # batch_size=None is then not 16
        jobs += [(a, splits[:n_abl],
                  lambda c, tr, te, a=a: ours(c, tr, te, False, {**ABLATIONS[a], **kw_quick}))
                 for a in args.ablations if a != "batch_16" or big]
        rows: dict[str, list[dict]] = {}
        for model, sp, fn in jobs:
            rows[model] = []
            for i, (tr, te) in enumerate(sp):
                rows[model].append(run_fold(fn, cohort, list(tr), list(te), split=i, record_errors=False))
                print(f"  {name:<8} {model:<13} split {i:>2}: c={rows[model][-1]['c_index']:.4f} "
                      f"({rows[model][-1]['seconds']:.1f} s)", flush=True)
            payload["folds"][name] = rows
            payload["summary"][name] = _summary(rows)
            payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
            write_json(out, payload)  # after every model: a stopped run keeps what it finished
    payload["table_markdown"] = _table(payload)
    write_json(out, payload)
    print(payload["table_markdown"])
    print(f"wrote {out} ({payload['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
