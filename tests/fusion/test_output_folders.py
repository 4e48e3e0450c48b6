"""Output folders: a model is replaced whole or not at all (Ctrl-C at any step), never by another kind of
output, never by predictions written onto the model being read; leftovers of killed writes are removed;
load checks the manifest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from clinfuse.datasets import atomic, make_synthetic_cohort
from clinfuse.fusion import FusionModel, commands
from clinfuse.fusion.cli import main
from clinfuse.fusion.config import write_cohort_files

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference_models"
TINY = {"d_model": 8, "n_heads": 2, "n_layers": 1, "max_epochs": 1, "batch_size": 8,
        "validation_fraction": 0.0, "verbose": False}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two different clinical models (different training samples, so different preprocessors and weights),
    their data folder and a data.yaml."""
    root = tmp_path_factory.mktemp("two")
    cohort, _ = make_synthetic_cohort(30, modalities=("clinical",), seed=4)
    ids = list(cohort.sample_ids)
    a = FusionModel(aggregator="concat", seed=0, **TINY).fit(cohort.subset(ids[:20]))
    b = FusionModel(aggregator="concat", seed=1, **TINY).fit(cohort.subset(ids[10:]))
    spec = write_cohort_files(cohort, root / "data")
    (root / "data" / "data.yaml").write_text(yaml.safe_dump({k: v for k, v in spec.items() if k != "label"}))
    return SimpleNamespace(a=a, b=b, cohort=cohort, data=root / "data" / "data.yaml",
                           pa=a.predict_proba(cohort).to_numpy(), pb=b.predict_proba(cohort).to_numpy())



# ------------------------------------------------------------------------------ predict onto the model
def _predict(models, model_dir, out):
    return commands.run_predict(SimpleNamespace(model=str(model_dir), data=str(models.data), out=str(out)))


def test_predict_out_onto_its_own_model_folder_is_refused_before_any_work(which_model, two_models, tmp_path,
                                                                          monkeypatch):
    model_dir = two_models.a.save(tmp_path / "M")
    (tmp_path / "link").symlink_to(model_dir)
    (model_dir / "notes.txt").write_text("mine")  # a user's file inside the model folder
    loads = []
    monkeypatch.setattr(FusionModel, "load", classmethod(lambda cls, p: loads.append(p)))
    for out in (model_dir, tmp_path / "link", model_dir / "sub", tmp_path / "link" / "sub", tmp_path):
        with pytest.raises(ValueError, match="that this command reads"):
            _predict(two_models, model_dir, out)
    assert not loads  # refused before the model was even read
    monkeypatch.undo()
    assert (model_dir / "notes.txt").read_text() == "mine" and not (model_dir / "sub").exists()
    assert {".clinfuse", "config.json", "MODEL_CARD.md"} <= {p.name for p in model_dir.iterdir()}
    (model_dir / "notes.txt").unlink()
    assert which_model(two_models, model_dir) == "a"


def test_cli_predict_onto_the_model_exits_2_and_keeps_the_model(which_model, two_models, tmp_path, capsys):
    model_dir = two_models.a.save(tmp_path / "M")
    assert main(["predict", "--model", str(model_dir), "--data", str(two_models.data),
                 "--out", str(model_dir)]) == 2
    assert "that this command reads" in capsys.readouterr().err
    assert which_model(two_models, model_dir) == "a"


def test_an_output_replaces_only_the_same_kind_of_clinfuse_output(which_model, two_models, tmp_path):
    model_dir = two_models.a.save(tmp_path / "M")
    pred = tmp_path / "pred"
    _predict(two_models, model_dir, pred)
    assert json.loads((pred / ".clinfuse").read_text())["kind"] == "predictions"
    _predict(two_models, model_dir, pred)  # predictions replace predictions
    with pytest.raises(ValueError, match="holds a clinfuse predictions, not model"):
        two_models.b.save(pred)
    with pytest.raises(ValueError, match="holds a clinfuse model, not predictions"):
        _predict(two_models, model_dir, two_models.b.save(tmp_path / "other_model"))
    assert which_model(two_models, tmp_path / "other_model") == "b"
    (pred / "my_analysis.R").write_text("keep")  # a user's file put into a clinfuse folder
    with pytest.raises(ValueError, match="did not write.*my_analysis.R"):
        _predict(two_models, model_dir, pred)
    assert (pred / "my_analysis.R").read_text() == "keep"


def test_a_folder_saved_by_an_older_clinfuse_is_replaced_as_a_model_but_not_with_user_files(
        which_model, two_models, tmp_path):
    old = Path(shutil.copytree(REFERENCE / "persam_classification" / "model", tmp_path / "old"))
    two_models.b.save(old)  # flat layout, plain marker: still recognised as a model
    assert which_model(two_models, old) == "b"
    legacy = Path(shutil.copytree(REFERENCE / "persam_classification" / "model", tmp_path / "legacy"))
    (legacy / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="did not write.*thesis.txt"):
        two_models.b.save(legacy)
    assert (legacy / "thesis.txt").read_text() == "precious"


# --------------------------------------------------------------------------------- atomic replacement
_STEPS = ("replace", "rename")  # the renames that publish files and folders


def _interrupt_at(monkeypatch, k: int) -> list[str]:
    """Raise KeyboardInterrupt at the k-th file-system step (os.replace / rename, the exchange);
    returns the log of steps taken."""
    log: list[str] = []

    def wrap(owner, name):
        real = getattr(owner, name)

        def step(*args, **kwargs):
            log.append(name)
            if len(log) == k:
                raise KeyboardInterrupt(f"step {k}: {name}")
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, step)

    for name in _STEPS:
        wrap(os, name)
    if hasattr(atomic, "exchange"):
        wrap(atomic, "exchange")
    return log


def test_ctrl_c_at_any_step_of_a_save_leaves_the_old_or_the_new_model(which_model, two_models, tmp_path,
                                                                      monkeypatch):
    path = tmp_path / "m"
    two_models.a.save(path)
    current, k = "a", 1
    while True:
        new = "b" if current == "a" else "a"
        log = _interrupt_at(monkeypatch, k)
        try:
            getattr(two_models, new).save(path)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.undo()
        found = which_model(two_models, path)  # never missing, never mixed
        assert found in ({new} if finished else {current, new}), (k, log)
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m"]
        assert not leftovers, (k, log, leftovers)  # an interrupted save removes its temporary
        if finished:
            break
        current, k = found, k + 1
    assert k > 3  # the loop went through the steps of a save


def test_leftovers_of_killed_writers_are_removed_by_the_next_write(which_model, two_models, tmp_path):
    path = tmp_path / "m"
    two_models.a.save(path)
    dead = tmp_path / f".m.{2 ** 22 + 12345}-deadbeef.tmp"  # above the usual pid_max: no such process
    dead.mkdir()
    (dead / "weights.pt").write_bytes(b"\0" * 1_000_000)
    legacy = tmp_path / ".m.k3j_x9q2.tmp"  # a temporary of an older clinfuse (tempfile's name)
    legacy.mkdir()
    live = tmp_path / f".m.{os.getppid()}-cafef00d.tmp"  # its writer still runs: left alone
    live.mkdir()
    two_models.b.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", live.name])
    assert which_model(two_models, path) == "b"


def test_load_refuses_a_file_that_does_not_match_the_manifest(two_models, tmp_path):
    path = two_models.a.save(tmp_path / "m")
    state = json.loads((path / "preprocessor.json").read_text())
    text = json.dumps(state).replace("0.", "0.9", 1)  # a valid file, different from what was saved
    (path / "preprocessor.json").write_text(text)
    with pytest.raises(ValueError, match=r"preprocessor\.json do\(es\) not match manifest\.json"):
        FusionModel.load(path)
