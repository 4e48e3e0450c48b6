"""GSE7390 (76 genes + 4 clinical variables -> time to distant metastasis): c-index, fusion vs Cox.

Protocol (issue 5, "Real results"): the SAME folds for every model, ``make_splits(cohort, 5, seed=0,
repeats=3)`` (5-fold, stratified by event, 3 repeats = 15 test folds of 39-40 samples, about 10 events each).

Models, nothing tuned on these folds (library defaults throughout):

* ``FusionModel(task="survival", aggregator=A, verbose=False)`` for A in ``persam`` (the default: what a
  user gets without tuning), ``hierarchical``, ``self_attention``, ``concat``; each fold's fit uses the
  library's inner early-stopping split of the training fold and the library's preprocessing, fitted on the
  training fold only.
* lifelines ``CoxPHFitter(penalizer=0.1)`` on (a) clinical only, (b) 10 principal components of the genes,
  (c) both. Preprocessing fitted on the training fold only: age / size imputed with training medians;
  grade / er one-hot with the training fold's levels (first level dropped), a missing level imputed with
  the training median of each indicator; genes standardised with training means / sds, PCA fitted on the
  training fold; all Cox columns then standardised with training means / sds.

Every c-index is Harrell's (``clinfuse.fusion.metrics.concordance_index``, lifelines) on the test fold.
The paired difference of each model from the Cox on both is reported with a 95% t-interval over the folds;
repeated k-fold folds overlap, so that interval is optimistic.

    python benchmarks/bench_real_gse7390.py          # full protocol -> benchmarks/out/real_gse7390.json
    python benchmarks/bench_real_gse7390.py --quick  # smoke run (2 folds, 2 epochs)
    python benchmarks/bench_real_gse7390.py --other-repeats 1   # non-default aggregators on repeat 0 only
"""

from __future__ import annotations

import json
import time

import numpy as np
from common import (
    DATA,
    OUT_DIR,
    base_parser,
    provenance,
    run_folds,
    setup,
    summarise,
    summary_table,
    write_json,
)
from survival_cohorts import N_PCS, design

AGGREGATORS = ("persam", "hierarchical", "self_attention", "concat")
REFERENCE = "cox_both"


# ------------------------------------------------------------------------------------------- Cox baselines
def cox_fold(cohort, features: str, train_ids: list[str], test_ids: list[str]) -> dict:
    """Fit ``CoxPHFitter(penalizer=0.1)`` on the training fold; c-index on the test fold.

    The design (train-fold-only imputation, one-hot, gene PCs, standardisation) is
    ``survival_cohorts.design``, shared with ``bench_survival_peers.py``."""
    from clinfuse.fusion.metrics import concordance_index
    from lifelines import CoxPHFitter

    x_tr, x_te = design(cohort, train_ids, test_ids, features=features, n_pcs=N_PCS)
    surv_tr, surv_te = cohort.survival.loc[train_ids], cohort.survival.loc[test_ids]
    frame = x_tr.assign(_time=surv_tr["time"].to_numpy(float), _event=surv_tr["event"].to_numpy(int))
    cph = CoxPHFitter(penalizer=0.1).fit(frame, duration_col="_time", event_col="_event")
    risk = np.asarray(cph.predict_log_partial_hazard(x_te), dtype=float).reshape(-1)
    return {"c_index": concordance_index(surv_te["time"], surv_te["event"], risk), "n_test": len(test_ids),
            "n_events_test": int(surv_te["event"].sum()), "n_features": int(x_tr.shape[1])}


# ------------------------------------------------------------------------------------------- fusion models
def fusion_fold(cohort, aggregator: str, max_epochs: int | None, train_ids: list[str], test_ids: list[str],
                aggregator_kwargs: dict | None = None) -> dict:
    """``FusionModel(task="survival", aggregator=...)`` with library defaults, fitted on the training fold."""
    from clinfuse.fusion import FusionModel

    kw = {} if max_epochs is None else {"max_epochs": max_epochs}
    if aggregator_kwargs:
        kw["aggregator_kwargs"] = aggregator_kwargs
    model = FusionModel(task="survival", aggregator=aggregator, verbose=False, **kw)
    t0 = time.perf_counter()
    model.fit(cohort.subset(train_ids))
    fit_s = time.perf_counter() - t0
    test = cohort.subset(test_ids)
    result = model.evaluate(test)
    return {"c_index": float(result["c_index"]), "ibs": float(result.get("integrated_brier_score", np.nan)),
            "n_test": len(test_ids), "n_events_test": int(result.get("n_events", -1)),
            "epochs": len(getattr(model, "history_", [])), "fit_seconds": round(fit_s, 3)}


def main() -> None:
    p = base_parser(__doc__, data_default=DATA / "gse7390_etc")
    p.add_argument("--repeats", type=int, default=3,
                   help="repeats of 5-fold CV for persam and the Cox models")
    p.add_argument("--other-repeats", type=int, default=None,
                   help="repeats for hierarchical / self_attention / concat (default: --repeats)")
    p.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS), choices=AGGREGATORS)
    p.add_argument("--max-epochs", type=int, default=None, help="default: the library's FusionModel default")
    p.add_argument("--persam-kwargs", type=json.loads, default=None,
                   help="JSON aggregator_kwargs for persam (default: none, the library default), "
                        'e.g. \'{"n_layers": 0}\'')
    args = p.parse_args()
    setup(args.threads)
    from clinfuse.datasets import load_gse7390, make_splits

    out = args.out or OUT_DIR / ("real_gse7390_quick.json" if args.quick else "real_gse7390.json")
    cohort = load_gse7390(args.data)
    splits = make_splits(cohort, 5, seed=0, repeats=args.repeats)
    n_per_repeat = 5
    max_epochs = args.max_epochs
    if args.quick:
        splits, max_epochs = splits[:2], 2
    other = splits[: n_per_repeat * (args.other_repeats or args.repeats)]
    payload = {"benchmark": "GSE7390 time to distant metastasis, c-index", **provenance(args),
               "cohort": {"n": len(cohort), "events": int(cohort.survival["event"].sum()),
                          "genes": int(cohort.genomics.n_vars), "clinical": list(cohort.clinical.columns)},
               "protocol": {"splits": f"make_splits(cohort, 5, seed=0, repeats={args.repeats})",
                            "n_splits": len(splits), "other_aggregator_splits": len(other),
                            "fusion": "FusionModel(task='survival', aggregator=A, verbose=False), library "
                                      "defaults"
                                      + ("" if max_epochs is None else f", max_epochs={max_epochs}")
                                      + ("" if not args.persam_kwargs else
                                         f"; persam aggregator_kwargs={args.persam_kwargs}"),
                            "cox": "lifelines CoxPHFitter(penalizer=0.1); preprocessing fitted per training "
                                   "fold",
                            "ci": "95% t-interval of the mean paired per-fold difference; folds of repeated "
                                  "k-fold overlap, so it is optimistic"},
               "test_folds": [{"split": i, "n_test": len(te),
                               "events": int(cohort.survival.loc[te, "event"].sum())}
                              for i, (_, te) in enumerate(splits)],
               "folds": {}, "summary": {}}
    t_start = time.perf_counter()
    jobs = [(f"cox_{f}", splits, lambda tr, te, f=f: cox_fold(cohort, f, tr, te))
            for f in ("clinical", "genes", "both")]
    jobs += [(a, splits if a == "persam" else other,
              lambda tr, te, a=a: fusion_fold(cohort, a, max_epochs, tr, te,
                                              args.persam_kwargs if a == "persam" else None))
             for a in args.aggregators]
    for name, sp, fn in jobs:
        payload["folds"][name] = run_folds(name, sp, fn)
        payload["summary"] = summarise(payload["folds"], metric="c_index", reference=REFERENCE)
        payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        write_json(out, payload)  # after every model: a stopped run keeps what it finished
    payload["table_markdown"] = summary_table(payload["summary"], metric="c_index", reference=REFERENCE,
                                              label="Cox(both)", n_per_repeat=n_per_repeat)
    write_json(out, payload)
    print(payload["table_markdown"])
    print(f"wrote {out} ({payload['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
