"""Every script in examples/ runs end to end with its --tiny setting (in-process, to share the imports)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml
from clinfuse.fusion.cli import main as cli_main
from clinfuse.fusion.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
pytestmark = pytest.mark.slow  # each test trains an example end to end


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart(tmp_path, capsys):
    _load("quickstart").main(["--tiny", "--out", str(tmp_path / "q")])
    out = capsys.readouterr().out
    assert "test AUC" in out and (tmp_path / "q" / "attention.csv").is_file()


def test_survival_gse7390(capsys, shared_path):
    _load("survival_gse7390").main(["--tiny", "--data", str(shared_path("gse7390_etc"))])
    out = capsys.readouterr().out
    assert "FusionModel c-index" in out and "Cox (clinical)" in out


def test_mortality_mimic3(capsys, shared_path):
    _load("mortality_mimic3").main(["--tiny", "--data", str(shared_path("mimic3_demo"))])
    assert "auc" in capsys.readouterr().out


@pytest.mark.parametrize("encoder", ["cnn", "vit"])
def test_breastmnist(encoder, capsys, shared_path):
    data = shared_path("breastmnist")
    _load("breastmnist").main(["--tiny", "--encoder", encoder, "--data", str(data)])
    assert f"{encoder}: test AUC" in capsys.readouterr().out


def test_run_yaml_trains_with_clinfuse_train(tmp_path):
    _load("export_synthetic").main([str(tmp_path / "data"), "--tiny"])
    shutil.copy(EXAMPLES / "run.yaml", tmp_path / "run.yaml")
    cfg = load_run_config(tmp_path / "run.yaml")  # the shipped config parses as written
    assert cfg.task == "classification" and cfg.model["aggregator"] == "persam"
    raw = yaml.safe_load((tmp_path / "run.yaml").read_text())
    raw["model"].update(max_epochs=1, d_model=16, n_heads=2, verbose=False)  # tiny
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert cli_main(["train", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "weights.pt").is_file()


def test_patient_report_from_a_demo_folder(tmp_path, capsys):
    assert cli_main(["demo", "--tiny", "--out", str(tmp_path / "demo")]) == 0
    capsys.readouterr()
    _load("patient_report").main(["--demo", str(tmp_path / "demo"), "--out", str(tmp_path / "fig")])
    out = capsys.readouterr().out
    assert "exact Shapley" in out and "attention share of each modality:" in out
    assert "top features by attention" in out and "N_eff" in out
    assert "clinical (shares of |attribution|" in out and "planted evidence patches: [" in out
    sample = out.splitlines()[0].split()[-1]
    for name in (f"persam_{sample}.png", f"top_tokens_{sample}.png", "modality_contributions.png",
                 f"evidence_{sample}.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 1000
