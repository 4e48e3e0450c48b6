"""In-hospital mortality on the MIMIC-III demo from the first 48 hours of timed EHR events.

    python examples/mortality_mimic3.py [--data FOLDER] [--tiny]

Each sample is an admission; ``groups`` are the patients, so cross-validation never splits a patient.
The events (prescriptions, inputs, outputs, procedures, microbiology, transfers; earlier admissions as
history segments) go through the event transformer; attention is exported per event.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clinfuse.datasets import load_mimic3_demo
from clinfuse.fusion import FusionModel, cross_validate

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mimic3_demo"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT), help="folder of the MIMIC-III demo CSV files")
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("CLINFUSE_TINY")))
    args = parser.parse_args(argv)

    cohort = load_mimic3_demo(args.data, prediction_hours=48)
    print(cohort.summary())
    if args.tiny:
        kw = {"max_epochs": 1, "d_model": 16, "n_heads": 2, "preprocessor_kwargs": {"max_events": 256}}
    else:
        kw = {"max_epochs": 30, "preprocessor_kwargs": {"max_events": 2048}}
    model = FusionModel(task="classification", aggregator="persam", class_weights="balanced", batch_size=8,
                        verbose=False, seed=0, **kw)
    cv = cross_validate(model, cohort, folds=2 if args.tiny else 5, seed=0)
    print(cv.metrics[["fold", "auc", "balanced_accuracy", "n_test"]].to_string(index=False))
    print(cv.summary())


if __name__ == "__main__":
    main()
