"""Fault injection: ``save`` and ``clinfuse explain`` killed with SIGKILL at random (seeded) moments, and a
load running while another process saves. After every kill the model folder holds one of the two models,
whole, the explanation's files are complete, and the next write removes the killed runs' temporaries.

Writers run in forked processes (started in milliseconds, so many kills fit in a few seconds)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion import FusionModel, commands
from clinfuse.fusion.config import write_cohort_files

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
FORK = multiprocessing.get_context("fork")
TINY = {"d_model": 8, "n_heads": 2, "n_layers": 1, "max_epochs": 1, "batch_size": 8,
        "validation_fraction": 0.0, "verbose": False, "max_patches": 8}
PNG_END = b"IEND\xaeB`\x82"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two attention-MIL models that differ in preprocessor and weights (trained on different samples), the
    cohort's files and a data.yaml; ``pa``/``pb``: each model's predictions on the cohort."""
    root = tmp_path_factory.mktemp("faults")
    cohort, _ = make_synthetic_cohort(16, modalities=("clinical", "images"), n_patches=(4, 6), feature_dim=8,
                                      missing_rate=0.0, seed=5)
    ids = list(cohort.sample_ids)
    a = FusionModel(aggregator="abmil", seed=0, **TINY).fit(cohort.subset(ids[:12]))
    b = FusionModel(aggregator="abmil", seed=1, **TINY).fit(cohort.subset(ids[4:]))
    spec = write_cohort_files(cohort, root / "data")
    (root / "data" / "data.yaml").write_text(yaml.safe_dump({k: v for k, v in spec.items() if k != "label"}))
    pa, pb = a.predict_proba(cohort).to_numpy(), b.predict_proba(cohort).to_numpy()
    assert not np.array_equal(pa, pb)
    return SimpleNamespace(a=a, b=b, cohort=cohort, data=root / "data" / "data.yaml", pa=pa, pb=pb)



def _save_forever(a, b, path):
    while True:
        a.save(path)
        b.save(path)


def _explain_forever(args):
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the command's report lines
    while True:
        commands.run_explain(args)


def _kill_at(rng, target, args, low: float, high: float) -> None:
    proc = FORK.Process(target=target, args=args, daemon=True)
    proc.start()
    time.sleep(rng.uniform(low, high))
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_save_killed_at_30_random_moments_leaves_the_old_or_the_new_model(which_model, models, tmp_path):
    rng = np.random.default_rng(2024)
    path = tmp_path / "m"
    models.a.save(path)
    seen = []
    for _ in range(30):
        _kill_at(rng, _save_forever, (models.a, models.b, path), 0.0, 0.6)
        seen.append(which_model(models, path))  # loads, and is one of the two
    assert set(seen) == {"a", "b"}  # the kills fell all over the save loop
    models.b.save(path)
    assert _temporaries(tmp_path) == []  # the killed saves' temporaries are gone
    assert which_model(models, path) == "b"


def _check_complete(out: Path) -> None:
    """Every final file of an explanation parses, and together they are the files one run listed."""
    names = {p.name for p in out.iterdir()}
    assert {"attention.parquet", "predictions.parquet", "kinds.json"} <= names, names  # Parquet by default
    for p in out.iterdir():
        if p.suffix == ".parquet":
            pq.read_table(p)
        elif p.suffix == ".png":
            assert p.read_bytes().endswith(PNG_END), p
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".csv":
            pd.read_csv(p)
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert set(manifest) == names - {"manifest.json"}
    assert all((out / n).stat().st_size == e["size"] for n, e in manifest.items())


def test_explain_killed_at_random_moments_never_leaves_a_truncated_or_mixed_output(models, tmp_path):
    rng = np.random.default_rng(7)
    model_dir = models.a.save(tmp_path / "model")
    args = SimpleNamespace(model=str(model_dir), data=str(models.data), out=str(tmp_path / "expl"))
    start = time.perf_counter()
    commands.run_explain(args)
    one_run = time.perf_counter() - start
    for _ in range(10):  # most of a run is computing: the kills fall in its second half and just after
        _kill_at(rng, _explain_forever, (args,), 0.4 * one_run, 1.2 * one_run)
        _check_complete(tmp_path / "expl")
    commands.run_explain(args)
    _check_complete(tmp_path / "expl")
    assert _temporaries(tmp_path) == []


def test_loads_while_another_process_saves_are_never_mixed(which_model, models, tmp_path):
    path = tmp_path / "m"
    models.a.save(path)
    saver = FORK.Process(target=_save_forever, args=(models.a, models.b, path), daemon=True)
    saver.start()
    seen: list[str] = []
    try:
        end = time.perf_counter() + 8.0
        while time.perf_counter() < end:
            seen.append(which_model(models, path))  # raises on a mixed model or a missing folder
    finally:
        os.kill(saver.pid, signal.SIGKILL)
        saver.join()
    assert len(seen) >= 10 and set(seen) == {"a", "b"}, seen
