"""Quickstart on the synthetic cohort: fit, evaluate, explain, save, reload, cross-validate.

    python examples/quickstart.py [--tiny] [--out quickstart_out]

The synthetic cohort has all four modalities (clinical table, gene expression, patch-feature bags, timed
events), some missing per patient, and a planted PersAM-style rule. ``--tiny`` (or ``CLINFUSE_TINY=1``)
runs a seconds-long version, used by the tests.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clinfuse.datasets import make_synthetic_cohort, train_validation_split
from clinfuse.fusion import FusionModel, cross_validate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("CLINFUSE_TINY")))
    parser.add_argument("--out", default="quickstart_out",
                        help="folder for the saved model and attention table")
    args = parser.parse_args(argv)
    n, epochs, folds = (30, 1, 2) if args.tiny else (200, 20, 5)

    cohort, _truth = make_synthetic_cohort(n, n_patches=(6, 12) if args.tiny else (20, 60), seed=0)
    print(cohort.summary())
    train_ids, test_ids = train_validation_split(cohort, fraction=0.25, seed=0)
    train, test = cohort.subset(train_ids), cohort.subset(test_ids)

    model = FusionModel(task="classification", aggregator="persam", max_epochs=epochs, verbose=False, seed=0)
    model.fit(train)                                   # early stopping on an inner split of `train`
    print("test AUC:", round(model.score(test), 3))
    print(model.predict_proba(test).head())
    metrics = model.evaluate(test)
    print({k: v for k, v in metrics.items() if k != "by_pattern"})

    report = model.explain(test)                       # tidy attention: one row per sample/token/kind/class
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.to_csv(out / "attention.csv")
    print(report.to_frame().groupby("kind").size())

    model.save(out / "model")
    again = FusionModel.load(out / "model")            # the schema is saved too: new data is checked
    assert (again.predict_proba(test) - model.predict_proba(test)).abs().max().max() < 1e-6

    cv = cross_validate(FusionModel(aggregator="persam", max_epochs=epochs, verbose=False), cohort,
                        folds=folds, seed=0)
    print(cv.metrics[["fold", "auc", "balanced_accuracy"]])
    print(cv.summary())


if __name__ == "__main__":
    main()
