"""The ``clinfuse`` command: demo, train (YAML), predict and explain, with atomic outputs and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion.cli import main
from clinfuse.fusion.config import load_run_config, write_cohort_files

TINY_MODEL = {"max_epochs": 1, "d_model": 16, "n_heads": 2, "batch_size": 8, "verbose": False}


def test_cli_prints_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "predict", "explain"):
        assert command in out
    assert main([]) == 0  # no command: help, not a traceback


@pytest.mark.slow
def test_demo_writes_its_outputs_and_reruns_identically(tmp_path, capsys):
    assert main(["demo", "--tiny", "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "held-out test metrics" in printed and "auc" in printed
    a = tmp_path / "a"
    names = {p.name for p in a.iterdir()}
    assert {"metrics.json", "predictions.parquet", "attention.parquet", "training_curve.png",
            "model"} <= names
    assert not {"attention.csv", "predictions.csv"} & names  # CSV only with --csv
    assert any(n.startswith("attention_") and n.endswith(".png") for n in names)
    metrics = json.loads((a / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"auc", "balanced_accuracy", "by_pattern"}
    planted = metrics["planted_evidence"]  # printed, and in metrics.json, with the figures it is about
    assert planted["kind"] == "explanatory" and planted["n_patients"] == len(planted["per_patient_auroc"]) > 0
    assert 0.0 <= planted["auroc_min"] <= planted["auroc_median"] <= 1.0 and planted["mass_ratio"] > 0
    assert (f"planted evidence patches, held-out ({planted['n_patients']} patients): AUROC of explanatory "
            f"attention {planted['auroc_median']:.3f} (per-patient median") in printed
    index = json.loads((a / "figures.json").read_text())
    drawn = index["sample_figures"]
    # the exact contributions are printed as mean |share| per modality, beside the attention share
    shares = pd.read_parquet(a / "modality_contributions.parquet")
    assert set(shares["kind"]) == {"modality_contribution"}
    line = index["modality_contributions"]
    assert line.startswith("clinical ") and "(attention " in line
    assert "modality contributions, mean |exact Shapley share|" in printed
    assert line in printed
    assert {f"evidence_{n[len('attention_'):]}" for n in drawn} <= names  # the same samples, truth outlined
    att = pd.read_parquet(a / "attention.parquet")
    assert {"explanatory", "exploratory", "class_wise", "patch"} <= set(att["kind"])
    predictions = pd.read_parquet(a / "predictions.parquet")
    # Rerunning gives the same numbers (and replaces the folder it wrote before, leaving no temp folder).
    assert main(["demo", "--tiny", "--out", str(a)]) == 0
    assert json.loads((a / "metrics.json").read_text()) == metrics
    pd.testing.assert_frame_equal(pd.read_parquet(a / "predictions.parquet"), predictions)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


@pytest.mark.slow
def test_the_full_demo_finds_the_planted_evidence(tmp_path, capsys):
    """The default demo (about 45 s of one core): explanatory attention ranks the planted patches of held-out
    patients (issue 14: per-patient median AUROC >= 0.9), well above uniform in attention mass."""
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    planted = json.loads((tmp_path / "demo" / "metrics.json").read_text())["planted_evidence"]
    assert planted["n_patients"] >= 80
    assert planted["auroc_median"] >= 0.9 and planted["auroc_pooled"] >= 0.9 and planted["mass_ratio"] >= 1.5
    assert f"AUROC of explanatory attention {planted['auroc_median']:.3f}" in printed


def test_demo_refuses_to_overwrite_a_foreign_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CLINFUSE_DEBUG", raising=False)
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["demo", "--tiny", "--out", str(tmp_path)]) == 2
    assert "not written by clinfuse" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def file_cohort(tmp_path_factory):
    """A small synthetic cohort written as files, with run.yaml and data.yaml next to them."""
    root = tmp_path_factory.mktemp("files")
    cohort, _ = make_synthetic_cohort(30, n_patches=(4, 8), feature_dim=8, n_genes=12, n_codes=8, seed=2)
    spec = write_cohort_files(cohort, root)
    run = {"task": "classification", "data": spec, "model": TINY_MODEL}
    (root / "run.yaml").write_text(yaml.safe_dump(run))
    score = {k: v for k, v in spec.items() if k != "label"}  # new data to score: no labels
    (root / "data.yaml").write_text(yaml.safe_dump(score))
    return root, cohort


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_train_predict_explain_from_yaml(file_cohort, tmp_path):
    root, cohort = file_cohort
    assert main(["train", "--config", str(root / "run.yaml"), "--out", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "weights.pt").is_file()
    assert main(["predict", "--model", str(tmp_path / "model"), "--data", str(root / "data.yaml"),
                 "--out", str(tmp_path / "pred")]) == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "predictions.parquet"]  # Parquet only: CSV only when asked
    pred = pd.read_parquet(tmp_path / "pred" / "predictions.parquet")
    assert list(pred.index.astype(str)) == list(cohort.sample_ids)
    assert {"proba_0", "proba_1", "prediction", "pattern"} <= set(pred.columns) and "label" not in pred
    assert not (tmp_path / "pred" / "metrics.json").exists()  # no labels given, no metrics
    assert main(["explain", "--model", str(tmp_path / "model"), "--data", str(root / "data.yaml"),
                 "--out", str(tmp_path / "expl")]) == 0
    att = pd.read_parquet(tmp_path / "expl" / "attention.parquet")
    assert set(att["sample_id"]) <= set(cohort.sample_ids) and "patch" in set(att["kind"])
    assert list((tmp_path / "expl").glob("*.png"))
    assert (tmp_path / "expl" / "modality_contributions.parquet").is_file()
    spread = pd.read_parquet(tmp_path / "expl" / "attention_spread.parquet")
    assert spread["rule"].str.startswith("null").any()
    # for large cohorts: no contributions, and the spread judged by the fallback rule (no untrained copies)
    assert main(["explain", "--model", str(tmp_path / "model"), "--data", str(root / "data.yaml"),
                 "--out", str(tmp_path / "quick"), "--no-contributions", "--no-null"]) == 0
    assert not list((tmp_path / "quick").glob("modality_contributions*"))
    quick = pd.read_parquet(tmp_path / "quick" / "attention_spread.parquet")
    assert quick["rule"].dropna().str.startswith("fallback").all() and len(quick) == len(spread)


def test_run_config_unknown_keys_are_named(file_cohort, tmp_path):
    root, _ = file_cohort
    run = yaml.safe_load((root / "run.yaml").read_text())
    bad_model = {**run, "model": {**run["model"], "epochs": 3}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(bad_model))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epochs'\].*max_epochs"):
        load_run_config(tmp_path / "a.yaml")
    bad_data = {**run, "data": {**run["data"], "clinical_file": "x.csv"}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad_data))
    with pytest.raises(ValueError, match=r"clinical_file.*valid keys are: name, id_column, clinical"):
        load_run_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**run, "tasks": "survival"}))
    with pytest.raises(ValueError, match="tasks"):
        load_run_config(tmp_path / "c.yaml")


def test_data_config_errors_name_the_column(file_cohort, tmp_path, capsys, monkeypatch):
    root, _ = file_cohort
    run = yaml.safe_load((root / "run.yaml").read_text())
    run["data"] = {k: (str(root / v) if k in ("clinical", "genomics", "images", "events") else v)
                   for k, v in run["data"].items()}
    run["data"]["label"] = "outcome"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(run))
    monkeypatch.delenv("CLINFUSE_DEBUG", raising=False)
    assert main(["train", "--config", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clinfuse train: error:") and "'outcome'" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
    monkeypatch.setenv("CLINFUSE_DEBUG", "1")
    with pytest.raises(ValueError, match="'outcome'"):
        main(["train", "--config", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "m")])


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_predict_reports_survival_metrics_at_the_given_times(tmp_path, capsys):
    from pathlib import Path

    ref = Path(__file__).resolve().parents[1] / "data" / "reference_models" / "persam_survival"
    args = ["predict", "--model", str(ref / "model"), "--data", str(ref / "data.yaml")]
    # a model saved before the training follow-up was kept: the evaluated cohort weighs, and it says so
    with pytest.warns(UserWarning, match="saved without the follow-up"):
        assert main([*args, "--out", str(tmp_path / "p"), "--times", "10", "20"]) == 0
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert {"c_index", "auc@10", "auc@20", "brier@10", "brier@20", "calibration_error@10", "mean_auc",
            "integrated_brier_score", "n_after_follow_up"} <= set(metrics)
    assert "auc@10" in capsys.readouterr().out
    with pytest.warns(UserWarning):
        assert main([*args, "--out", str(tmp_path / "q"), "--times", "1e5"]) == 2
    assert "times [100000.0] lie outside" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.slow  # a training and two explains / a PersAM explain with figures (~6-8 s)
def test_explain_writes_parquet_unless_csv_is_asked_and_says_why_each_sample_was_drawn(file_cohort, tmp_path,
                                                                                       capsys):
    root, cohort = file_cohort
    assert main(["train", "--config", str(root / "run.yaml"), "--out", str(tmp_path / "model")]) == 0
    base = ["explain", "--model", str(tmp_path / "model"), "--data", str(root / "data.yaml")]
    assert main([*base, "--out", str(tmp_path / "e")]) == 0
    names = {p.name for p in (tmp_path / "e").iterdir()}
    assert {"attention.parquet", "predictions.parquet", "figures.json"} <= names
    assert not [n for n in names if n.endswith(".csv")]
    index = json.loads((tmp_path / "e" / "figures.json").read_text())
    pred = pd.read_parquet(tmp_path / "e" / "predictions.parquet")
    # the modalities' exact contributions: base + their sum = each class's predicted log-odds
    contributions = pd.read_parquet(tmp_path / "e" / "modality_contributions.parquet")
    assert set(contributions["kind"]) == {"modality_contribution"} and "modality_contributions.png" in names
    ones = contributions[contributions["target_class"] == "1"].groupby("sample_id")
    p1 = pred.loc[list(ones.groups), "proba_1"].to_numpy()
    np.testing.assert_allclose((ones["value"].sum() + ones["raw_value"].first()).to_numpy(),
                               np.log(p1 / (1 - p1)), atol=1e-4)
    drawn = list(index["sample_figures"].values())
    assert drawn[:2] == [pred["proba_0"].idxmax(), pred["proba_1"].idxmax()]  # most confident per class
    assert set(index["reasons"]) == set(index["sample_figures"])
    assert index["reasons"][next(iter(index["reasons"]))].startswith("most confident for class 0 no. 1")
    printed = capsys.readouterr().out
    assert "most confident for class 1 no. 1" in printed
    assert main([*base, "--out", str(tmp_path / "c"), "--csv", "--figure-format", "svg"]) == 0
    att = pd.read_csv(tmp_path / "c" / "attention.csv")
    assert len(att) == len(pd.read_parquet(tmp_path / "c" / "attention.parquet"))
    assert (tmp_path / "c" / "predictions.csv").is_file()
    assert len(pd.read_csv(tmp_path / "c" / "modality_contributions.csv")) == len(contributions)
    assert (tmp_path / "c" / "modality_contributions.svg").is_file()
    svgs = [p for p in (tmp_path / "c").iterdir() if p.suffix == ".svg"]
    assert svgs and not list((tmp_path / "c").glob("*.png"))


@pytest.mark.slow  # several seconds: CI runs it, the quick suite does not
def test_explain_skips_one_patch_bags_for_patch_maps(tmp_path):
    from clinfuse.datasets import Cohort
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.commands import write_attention

    base, _ = make_synthetic_cohort(24, modalities=("clinical", "images"), n_patches=(2, 4), feature_dim=8,
                                    missing_rate=0.0, seed=5)
    bags = {s: base.images.load(s).data[: 1 if i % 3 == 0 else None] for i, s in enumerate(base.sample_ids)}
    cohort = Cohort(clinical=base.clinical, images=bags, labels=base.labels)
    model = FusionModel(aggregator="abmil", seed=0, **TINY_MODEL).fit(cohort)
    sizes = {s: len(cohort.images.load(s).data) for s in cohort.sample_ids}
    assert sum(n == 1 for n in sizes.values()) == 8  # every third of the 24 bags cut to one patch
    _, written = write_attention(model, cohort, tmp_path, max_figures=30)
    index = json.loads((tmp_path / "figures.json").read_text())
    assert sorted(index["skipped_one_patch_bags"]) == sorted(s for s, n in sizes.items() if n == 1)
    assert sorted(index["sample_figures"].values()) == sorted(s for s, n in sizes.items() if n > 1)


@pytest.mark.slow  # a training and two explains / a PersAM explain with figures (~6-8 s)
def test_explain_draws_the_risk_groups_of_a_survival_model(tmp_path):
    from pathlib import Path

    ref = Path(__file__).resolve().parents[1] / "data" / "reference_models" / "persam_survival"
    assert main(["explain", "--model", str(ref / "model"), "--data", str(ref / "data.yaml"),
                 "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "risk_groups.png").is_file()
    index = json.loads((tmp_path / "e" / "figures.json").read_text())
    reasons = list(index["reasons"].values())
    assert reasons[0].startswith("highest predicted risk no. 1") and reasons[1].startswith("lowest")
