"""Writes ``tests/data/reference_models/``: saved models, their cohort files, predictions and attention.

Run once (``python tests/data/make_reference_models.py``) with the code whose behaviour the reference
pins; ``tests/test_reference_models.py`` then checks that the current code loads these folders and
reproduces the predictions and attention values. Re-run it only when a change of behaviour is intended,
and say so in the commit message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent / "reference_models"
SMALL = {"d_model": 16, "n_heads": 2, "batch_size": 8, "max_epochs": 2, "max_patches": 12,
         "verbose": False, "seed": 0}
MODELS = {
    "persam_classification": {"task": "classification"},
    "persam_survival": {"task": "survival", "n_time_bins": 3},
    "self_attention_classification": {"task": "classification", "aggregator": "self_attention"},
    "hierarchical_survival_cox": {"task": "survival", "aggregator": "hierarchical", "survival_head": "cox"},
}


def main() -> None:
    from clinfuse.datasets import make_synthetic_cohort
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.config import load_data_config, write_cohort_files

    torch.set_num_threads(1)
    if HERE.exists():
        shutil.rmtree(HERE)
    HERE.mkdir(parents=True)
    for name, kw in MODELS.items():
        cohort, _ = make_synthetic_cohort(24, task=kw["task"], n_patches=(4, 10), feature_dim=8, n_genes=16,
                                          n_codes=8, seed=5)
        folder = HERE / name
        spec = write_cohort_files(cohort, folder / "data")
        import yaml

        (folder / "data.yaml").write_text(yaml.safe_dump({"data": {**spec, "images": "data/features",
                                                                  **{k: f"data/{spec[k]}" for k in
                                                                     ("clinical", "genomics", "events")}}}))
        cohort = load_data_config(folder / "data.yaml").to_cohort(task=kw["task"], require_targets=True)
        model = FusionModel(**{**SMALL, **kw}).fit(cohort)
        model.save(folder / "model")
        model = FusionModel.load(folder / "model")
        if kw["task"] == "classification":
            model.predict_proba(cohort).to_csv(folder / "predictions.csv", float_format="%.9g")
        else:
            pred = model.predict_risk(cohort).to_frame()
            if model.survival_head == "discrete":
                surv = model.predict_survival(cohort, times=[10.0, 50.0, 200.0])
                pred = pred.join(surv.rename(columns=lambda t: f"S({t:g})"))
            pred.to_csv(folder / "predictions.csv", float_format="%.9g")
        frame = model.explain(cohort).to_frame()
        frame.to_csv(folder / "attention.csv", index=False, float_format="%.9g")
        (folder / "made_with.json").write_text(json.dumps({"params": {**SMALL, **kw}}, indent=1) + "\n")
        print(name, len(frame), "attention rows")


if __name__ == "__main__":
    main()
