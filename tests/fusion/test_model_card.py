"""MODEL_CARD.md: written by every save, its numbers those of the model, verified by load's manifest."""

from __future__ import annotations

import json

import pytest
import torch
from clinfuse.fusion import FusionModel


def _card(model, path):
    folder = model.save(path)
    return folder, (folder / "MODEL_CARD.md").read_text(encoding="utf-8")


def _split(fitted):
    model = fitted.model
    return (fitted.train.subset(model.training_ids_), fitted.train.subset(model.validation_ids_))


SECTIONS = ["# Model card", "## Task", "## Data", "## Model", "## Metrics", "## Intended use and limits",
            "## Versions"]


def test_card_of_a_classifier_matches_the_model(fitted_classifier, tmp_path):
    model = fitted_classifier.model
    folder, card = _card(model, tmp_path / "m")
    positions = [card.index(s) for s in SECTIONS]
    assert positions == sorted(positions)  # every section, in order
    train, val = _split(fitted_classifier)
    assert f"| training | {len(train)} | {len(train.patients)} |" in card
    assert f"| validation | {len(val)} | {len(val.patients)} |" in card
    for m in model.modalities_:  # coverage: samples holding each modality, of each split
        n_t, n_v = int(train.presence()[m].sum()), int(val.presence()[m].sum())
        assert f"| {m} | {n_t} of {len(train)} ({n_t / len(train):.0%}) | {n_v} of {len(val)} " in card
    for c in model.classes_:
        n_t, n_v = (int((part.labels.astype(str) == str(c)).sum()) for part in (train, val))
        assert f"| {c} | {n_t} | {n_v} |" in card
    assert f"Classification into {len(model.classes_)} classes" in card
    assert f"Aggregator: `{model.aggregator_}`" in card and "images `feature_bag`" in card
    assert f"| d_model | {model.d_model} |" in card and f"| seed | {model.seed} |" in card
    val_metrics = model.metrics_["validation"]
    assert f"| auc | {val_metrics['auc']:.3f} |" in card and f"| n | {len(val)} |" in card
    assert f"({len(val)} samples, validation_fraction={model.validation_fraction:.3f}" in card
    assert f"weights kept from epoch {model.metrics_['best_epoch']}" in card
    for pattern, m in val_metrics["by_pattern"].items():
        assert f"| {pattern} | {m['n']} |" in card
    assert f"| torch | {torch.__version__} |" in card and "Research use only" in card
    assert "n_time_bins" not in card  # survival-only keys stay off a classifier's card
    sha = json.loads((folder / "provenance.json").read_text())["training_data"]["sha256"]
    assert sha in card


def test_card_of_a_survival_model_counts_events(fitted_survival, tmp_path):
    model = fitted_survival.model
    _, card = _card(model, tmp_path / "s")
    train, val = _split(fitted_survival)
    for name, part in (("training", train), ("validation", val)):
        ev = part.survival["event"].astype(int)
        assert f"| {name} | {int(ev.sum())} | {int((ev == 0).sum())} | " in card
    assert f"| c_index | {model.metrics_['validation']['c_index']:.3f} |" in card
    assert "Survival with censoring (discrete head" in card and "| n_time_bins | 3 |" in card
    assert "nothing is evaluable past the last training time" in card


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_card_survives_load_and_is_checked_by_the_manifest(fitted_classifier, tmp_path):
    folder, card = _card(fitted_classifier.model, tmp_path / "m")
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    assert "MODEL_CARD.md" in manifest
    _, again = _card(FusionModel.load(folder), tmp_path / "again")  # a loaded model writes the same card
    assert again == card
    (folder / "MODEL_CARD.md").write_text(card.replace("Research use only", "Clinical use"), encoding="utf-8")
    with pytest.raises(ValueError, match="MODEL_CARD.md"):
        FusionModel.load(folder)
    (folder / "MODEL_CARD.md").unlink()
    with pytest.raises((ValueError, FileNotFoundError), match="MODEL_CARD.md"):
        FusionModel.load(folder)


def test_a_model_saved_before_cards_loads_and_gets_one(tmp_path):
    from pathlib import Path

    reference = Path(__file__).resolve().parents[1] / "data" / "reference_models"
    folder = next(p / "model" for p in sorted(reference.iterdir()) if (p / "model").is_dir())
    assert not (folder / "MODEL_CARD.md").exists()  # saved before the card existed
    model = FusionModel.load(folder)
    _, card = _card(model, tmp_path / "again")
    n = json.loads((folder / "provenance.json").read_text())["training_data"]["n_samples"]
    assert f"Training samples: {n}. The coverage of each modality and the targets were not recorded" in card
    assert f"Aggregator: `{model.aggregator_}`" in card and "## Versions" in card
