"""Survival on GSE7390 (gene expression + clinical -> time to distant metastasis), cross-validated.

    python examples/survival_gse7390.py [--data PATH] [--tiny]

Reports the c-index of the default ``FusionModel(task="survival")`` (PersAM with gene tokens as instances,
since the cohort has no images) and of a lifelines Cox model on the clinical variables, on the same folds.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
from clinfuse.datasets import load_gse7390
from clinfuse.fusion import FusionModel, cross_validate
from clinfuse.fusion.metrics import concordance_index

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "gse7390_etc" / \
    "breast_cancer_GSE7390-metastasis.arff"


def cox_baseline(cohort, splits) -> list[float]:
    """lifelines CoxPHFitter(penalizer=0.1) on the clinical variables (one-hot, mean-imputed per fold)."""
    from lifelines import CoxPHFitter

    x = pd.get_dummies(cohort.clinical, drop_first=True, dtype=float)
    surv = cohort.survival
    out = []
    for train, test in splits:
        xt = x.loc[train]
        fill = xt.mean()
        frame = xt.fillna(fill).join(surv.loc[train])
        cph = CoxPHFitter(penalizer=0.1).fit(frame, duration_col="time", event_col="event")
        risk = cph.predict_partial_hazard(x.loc[test].fillna(fill))
        out.append(concordance_index(surv.loc[test, "time"], surv.loc[test, "event"], np.log(risk)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT), help="breast_cancer_GSE7390-metastasis.arff")
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("CLINFUSE_TINY")))
    args = parser.parse_args(argv)

    cohort = load_gse7390(args.data)
    print(cohort.summary())
    if args.tiny:
        cohort = cohort.subset(cohort.sample_ids[:60])
    model = FusionModel(task="survival", verbose=False, seed=0,
                        **({"max_epochs": 1, "d_model": 16, "n_heads": 2} if args.tiny else {}))
    cv = cross_validate(model, cohort, folds=2 if args.tiny else 5, seed=0, repeats=1 if args.tiny else 3)
    cox = cox_baseline(cohort, cv.splits)
    table = cv.metrics[["repeat", "fold", "c_index", "integrated_brier_score", "n_events"]].copy()
    table["cox_clinical_c_index"] = cox
    print(table.to_string(index=False, float_format="{:.3f}".format))
    diff = table["c_index"] - table["cox_clinical_c_index"]
    print(f"FusionModel c-index {table['c_index'].mean():.3f}, Cox (clinical) {np.mean(cox):.3f}, "
          f"paired difference {diff.mean():+.3f} (sd {diff.std():.3f} over {len(diff)} folds)")


if __name__ == "__main__":
    main()
