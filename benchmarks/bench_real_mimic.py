"""MIMIC-III demo in-hospital mortality from the first 48 h: AUC, event-transformer fusion vs bag of codes.

Cohort: ``load_mimic3_demo(path)`` with its defaults (prediction at 48 h after admission; admissions that
ended before then are excluded, recorded in ``cohort.excluded``; the events of earlier admissions of the
same patient are kept as history). Folds: ``make_splits(cohort, 5, seed=0, repeats=R)``, grouped by patient
(``subject_id``) and stratified by the label; the SAME folds for every model.

Models, nothing tuned on these folds:

* ``FusionModel(task="classification", verbose=False)``: library defaults, i.e. the default encoders
  (``event_transformer`` for the events, ``feature_tokens`` for age / gender / admission type) and the
  default ``persam`` aggregator; its early stopping uses the library's inner split of the training fold.
* ``logreg_codes``: scikit-learn ``LogisticRegression`` (L2, C=1, lbfgs) on ``log1p`` counts of each event
  code (bag of codes: the same events the fusion model sees, before the prediction time); the vocabulary is
  the codes seen in the training fold.
* ``logreg_codes_clinical``: the same plus age (standardised on the training fold) and one-hot gender /
  admission type (training-fold levels): the bag-of-codes counterpart of what the fusion model gets.

The paired per-fold AUC difference from ``logreg_codes`` comes with a 95% t-interval over the folds; with
about 6 deaths per test fold and overlapping repeated folds, that interval is optimistic.

    python benchmarks/bench_real_mimic.py                # -> benchmarks/out/real_mimic.json
    python benchmarks/bench_real_mimic.py --quick        # smoke run (2 folds, 2 epochs)
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
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

REFERENCE = "logreg_codes"


def code_counts(cohort) -> pd.DataFrame:
    """``[samples x codes]`` event counts (all events the cohort kept, i.e. before the prediction time)."""
    ev = cohort.events
    counts = ev.groupby(["sample_id", "code"], observed=True).size().unstack(fill_value=0)
    return counts.reindex(index=[str(s) for s in cohort.sample_ids], fill_value=0)


def clinical_design(train: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Age standardised with training statistics; categorical columns one-hot over the training levels."""
    out_tr, out_te = pd.DataFrame(index=train.index), pd.DataFrame(index=test.index)
    mu, sd = float(train["age"].mean()), float(train["age"].std(ddof=0)) or 1.0
    med = float(train["age"].median())
    out_tr["age"], out_te["age"] = (train["age"].fillna(med) - mu) / sd, (test["age"].fillna(med) - mu) / sd
    for col in ("gender", "admission_type"):
        for level in sorted(train[col].dropna().astype(str).unique()):
            out_tr[f"{col}={level}"] = (train[col].astype(str) == level).astype(float)
            out_te[f"{col}={level}"] = (test[col].astype(str) == level).astype(float)
    return out_tr, out_te


def logreg_fold(cohort, counts: pd.DataFrame, with_clinical: bool, train_ids: list[str], test_ids: list[str]):
    from clinfuse.fusion.metrics import roc_auc
    from sklearn.linear_model import LogisticRegression

    tr, te = counts.loc[train_ids], counts.loc[test_ids]
    vocab = tr.columns[(tr > 0).any(axis=0)]  # codes seen in the training fold only
    x_tr, x_te = np.log1p(tr[vocab].astype(float)), np.log1p(te[vocab].astype(float))
    if with_clinical:
        c_tr, c_te = clinical_design(cohort.clinical.loc[train_ids], cohort.clinical.loc[test_ids])
        x_tr, x_te = pd.concat([x_tr, c_tr], axis=1), pd.concat([x_te, c_te], axis=1)
    y_tr = cohort.labels.loc[train_ids].to_numpy()
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(x_tr.to_numpy(), y_tr)
    proba = pd.DataFrame(clf.predict_proba(x_te.to_numpy()), index=test_ids, columns=list(clf.classes_))
    y_te = cohort.labels.loc[test_ids].tolist()
    return {"auc": roc_auc(y_te, proba), "n_test": len(test_ids),
            "deaths_test": int(np.sum(np.asarray(y_te) == 1)),
            "n_features": int(x_tr.shape[1])}


def fusion_fold(cohort, max_epochs: int | None, train_ids: list[str], test_ids: list[str]) -> dict:
    from clinfuse.fusion import FusionModel

    kw = {} if max_epochs is None else {"max_epochs": max_epochs}
    model = FusionModel(task="classification", verbose=False, **kw)
    t0 = time.perf_counter()
    model.fit(cohort.subset(train_ids))
    fit_s = time.perf_counter() - t0
    result = model.evaluate(cohort.subset(test_ids))
    return {"auc": float(result["auc"]), "balanced_accuracy": float(result.get("balanced_accuracy", np.nan)),
            "n_test": len(test_ids), "epochs": len(getattr(model, "history_", [])),
            "fit_seconds": round(fit_s, 3),
            "encoders": {m: type(e).__name__ for m, e in model.network_.encoders.items()},
            "aggregator": model.aggregator}


def main() -> None:
    p = base_parser(__doc__, data_default=DATA / "mimic3_demo")
    p.add_argument("--folds", type=int, default=5, help="k of the grouped, stratified k-fold")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the k-fold (seed 0, 1, ...)")
    p.add_argument("--fusion-repeats", type=int, default=None,
                   help="repeats for the fusion model (its splits are the first of the shared ones; "
                        "default: --repeats)")
    p.add_argument("--max-epochs", type=int, default=None, help="default: the library's FusionModel default")
    args = p.parse_args()
    setup(args.threads)
    from clinfuse.datasets import load_mimic3_demo, make_splits

    out = args.out or OUT_DIR / ("real_mimic_quick.json" if args.quick else "real_mimic.json")
    cohort = load_mimic3_demo(args.data)
    splits = make_splits(cohort, args.folds, seed=0, repeats=args.repeats)
    max_epochs = args.max_epochs
    if args.quick:
        splits, max_epochs = splits[:2], 2
    labels = cohort.labels
    payload = {"benchmark": "MIMIC-III demo in-hospital mortality (48 h), AUC", **provenance(args),
               "cohort": {"n_admissions": len(cohort), "n_patients": len(cohort.patients),
                          "deaths": int((labels == 1).sum()), "n_events": len(cohort.events),
                          "n_codes": int(cohort.events["code"].nunique()), "excluded": cohort.excluded},
               "protocol": {"splits": f"make_splits(cohort, {args.folds}, seed=0, repeats={args.repeats}) "
                                      "(grouped by subject_id, stratified by label)", "n_splits": len(splits),
                            "fusion": "FusionModel(task='classification', verbose=False), library defaults"
                                      + ("" if max_epochs is None else f", max_epochs={max_epochs}"),
                            "ci": "95% t-interval of the mean paired per-fold difference; folds overlap, "
                                  "so it is optimistic"},
               "test_folds": [{"split": i, "n_test": len(te), "deaths": int((labels.loc[te] == 1).sum()),
                               "patients_test": int(cohort.groups.loc[te].nunique())}
                              for i, (_, te) in enumerate(splits)],
               "folds": {}, "summary": {}}
    counts = code_counts(cohort)
    t_start = time.perf_counter()
    fusion_splits = splits[: args.folds * (args.fusion_repeats or args.repeats)]
    payload["protocol"]["fusion_splits"] = len(fusion_splits)
    jobs = [("logreg_codes", splits, lambda tr, te: logreg_fold(cohort, counts, False, tr, te)),
            ("logreg_codes_clinical", splits, lambda tr, te: logreg_fold(cohort, counts, True, tr, te)),
            ("fusion_event_transformer", fusion_splits,
             lambda tr, te: fusion_fold(cohort, max_epochs, tr, te))]

    def save(name: str, rows: list[dict]) -> None:  # after every fold: a stopped run keeps what it finished
        payload["folds"][name] = rows
        payload["summary"] = summarise(payload["folds"], metric="auc", reference=REFERENCE)
        payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        write_json(out, payload)

    for name, sp, fn in jobs:
        save(name, run_folds(name, sp, fn, after_fold=lambda rows, name=name: save(name, rows)))
    payload["table_markdown"] = summary_table(payload["summary"], metric="auc", reference=REFERENCE,
                                              label="logreg(codes)", n_per_repeat=args.folds)
    write_json(out, payload)
    print(payload["table_markdown"])
    print(f"wrote {out} ({payload['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
