"""Scale-out: ``FusionModel(strategy="ddp", devices=2, accelerator="cpu")`` trains in two clinfuse worker
processes (:mod:`clinfuse.fusion.ddp_launch`) and the user's script runs once.

The training runs in a user-style script (no ``if __name__ == "__main__"`` guard) started as a subprocess,
so that its stdout can be checked: every line it prints appears exactly once. The script builds its cohort
with ``easy_cohort`` of this file, so the test scores the very samples the training held out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from clinfuse.datasets import Cohort, make_synthetic_cohort, train_validation_split
from clinfuse.fusion import FusionModel

SEED = 0
EPOCHS = 15

SCRIPT = textwrap.dedent("""
    import importlib.util
    import sys
    import torch
    torch.set_num_threads(1)
    from clinfuse.fusion import FusionModel

    print("before fit", flush=True)
    spec = importlib.util.spec_from_file_location("ddp_test", sys.argv[2])
    test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test)
    train, _ = test.easy_cohort()
    model = FusionModel(aggregator="self_attention", d_model=16, n_heads=2, max_epochs=test.EPOCHS, lr=3e-3,
                        batch_size=8, early_stopping_patience=None, validation_fraction=0.0, verbose=False,
                        strategy="ddp", devices=2, accelerator="cpu", seed=test.SEED, **eval(sys.argv[3]))
    model.fit(train)
    print(f"after fit world={model.world_size_} global_zero={model.is_global_zero_} "
          f"epochs={len(model.history_)}", flush=True)
    model.save(sys.argv[1])
""")


def easy_cohort(seed: int = SEED) -> tuple[Cohort, Cohort]:
    """``(train, held_out)``: 160 synthetic samples (clinical + genomics, none missing) whose label is
    ``biomarker_level`` above its mean of 50, so a model that learned anything scores near 1."""
    synthetic, _ = make_synthetic_cohort(160, modalities=("clinical", "genomics"), n_genes=12,
                                         missing_rate=0.0, seed=seed)
    labels = (synthetic.clinical["biomarker_level"] > 50.0).astype(np.int64).rename("label")
    cohort = Cohort(clinical=synthetic.clinical, clinical_types=synthetic.clinical_types,
                    genomics=synthetic.genomics, labels=labels)
    train_ids, test_ids = train_validation_split(cohort, fraction=0.3, seed=seed)
    return cohort.subset(train_ids), cohort.subset(test_ids)


def run_script(tmp_path: Path, extra: str = "{}") -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run :data:`SCRIPT` in ``tmp_path`` (its own TMPDIR, to see what the launcher leaves there)."""
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TMPDIR": str(scratch)}
    command = [sys.executable, str(script), str(tmp_path / "model"), str(Path(__file__).resolve()), extra]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path, env=env,
                            timeout=400)
    # (torch itself may put caches there, e.g. torchinductor_<user>: only the launcher's folders count)
    return result, {p.name for p in scratch.iterdir() if p.name.startswith("clinfuse-ddp-")}


@pytest.mark.slow
def test_ddp_script_runs_once_trains_on_two_processes_and_the_saved_model_predicts(tmp_path):
    result, left = run_script(tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert lines.count("before fit") == 1, result.stdout
    after = [line for line in lines if line.startswith("after fit")]
    assert after == [f"after fit world=2 global_zero=True epochs={EPOCHS}"], result.stdout
    assert left == set(), f"the launcher left {left} in the temporary folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "tmp", "train_ddp.py"]  # nothing in cwd
    model = FusionModel.load(tmp_path / "model")
    assert len(model.history_) == EPOCHS  # (world_size_ is not saved: a loaded model is one process)
    _, held_out = easy_cohort()
    proba = model.predict_proba(held_out)
    assert proba.shape == (len(held_out), 2) and np.allclose(proba.sum(axis=1), 1.0)
    auc = model.score(held_out)  # from the DDP-trained weights, on samples the training never saw
    assert auc > 0.8, f"held-out AUC {auc:.3f}: the DDP-trained model did not learn an easy outcome"


@pytest.mark.slow
def test_a_worker_failure_raises_in_the_calling_script_with_its_message_and_leaves_nothing(tmp_path):
    # an encoder keyword is checked when the network is built, i.e. in the workers only
    result, left = run_script(tmp_path, extra="{'encoder_kwargs': {'clinical': {'bogus_option': 1}}}")
    assert result.returncode == 1
    message = "ValueError: encoder (clinical) 'feature_tokens' has no keyword(s) ['bogus_option']"
    assert message in result.stderr
    assert "raised in DDP worker process rank" in result.stderr
    assert result.stdout.splitlines() == ["before fit"]
    assert left == set(), f"the launcher left {left} in the temporary folder"
    assert not (tmp_path / "model").exists()


def test_the_launcher_counts_processes_and_leaves_one_process_and_launched_ranks_alone(monkeypatch):
    from clinfuse.fusion import ddp_launch

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert ddp_launch.world_size(FusionModel(strategy="ddp", devices=2, accelerator="cpu")) == 2
    assert ddp_launch.world_size(FusionModel(strategy="ddp_spawn", devices=3, accelerator="cpu")) == 3
    assert ddp_launch.world_size(FusionModel(strategy="ddp", devices=1, accelerator="cpu")) == 0
    assert ddp_launch.world_size(FusionModel(strategy="auto", devices=2, accelerator="cpu")) == 0
    monkeypatch.setenv("LOCAL_RANK", "0")  # a rank started by torchrun / the launcher: Lightning's own way
    assert ddp_launch.world_size(FusionModel(strategy="ddp", devices=2, accelerator="cpu")) == 0


def test_workers_train_on_an_externally_launched_ddp_strategy(monkeypatch):
    from clinfuse.fusion import ddp_launch
    from clinfuse.fusion.trainer import make_trainer
    from lightning_fabric.plugins.environments import LightningEnvironment

    monkeypatch.setenv(ddp_launch.WORKER_ENV, "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    from lightning_fabric.utilities import rank_zero as fabric_rank_zero
    from lightning_utilities.core import rank_zero as utilities_rank_zero

    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    ranks = [(m.rank_zero_only, getattr(m.rank_zero_only, "rank", 0))
             for m in (fabric_rank_zero, utilities_rank_zero)]
    try:  # Trainer(deterministic=True) switches torch's global mode on (fit_model restores it; do it here)
        trainer = make_trainer(max_epochs=1, gradient_clip=None, accumulate_grad_batches=1,
                               early_stopping_patience=None, has_validation=False, strategy="ddp_spawn",
                               devices=2, accelerator="cpu", verbose=False)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        # a Trainer of rank 1 makes this whole process rank 1 for Lightning's rank-zero-only code (loggers
        # write nothing then): a worker is that rank for good, this test process is not
        for fn, rank in ranks:
            fn.rank = rank
    env = trainer.strategy.cluster_environment
    assert isinstance(env, LightningEnvironment) and env.creates_processes_externally
    assert type(trainer.strategy.launcher).__name__ == "_SubprocessScriptLauncher"  # which launches nothing
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True


INTERRUPTED_SCRIPT = textwrap.dedent("""
    import importlib.util
    import sys
    import torch
    torch.set_num_threads(1)
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.interrupts import TrainingInterrupted

    spec = importlib.util.spec_from_file_location("ddp_test", sys.argv[2])
    test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test)
    train, _ = test.easy_cohort()
    model = FusionModel(aggregator="self_attention", d_model=16, n_heads=2, max_epochs=40, lr=3e-3,
                        batch_size=8, early_stopping_patience=None, validation_fraction=0.0, verbose=False,
                        strategy="ddp", devices=2, accelerator="cpu", seed=test.SEED,
                        checkpoint_dir=sys.argv[1])
    print("before fit", flush=True)
    try:
        model.fit(train)
    except TrainingInterrupted as exc:
        print(f"interrupted signal={exc.signum} epochs={exc.epochs_done} checkpoint={exc.checkpoint}",
              flush=True)
    model.fit(train, resume=True)
    print(f"resumed world={model.world_size_} epochs={len(model.history_)}", flush=True)
""")


@pytest.mark.slow
def test_sigint_stops_the_workers_raises_training_interrupted_and_resume_continues(tmp_path):
    import signal
    import time

    from clinfuse.fusion.interrupts import TrainingInterrupted

    assert issubclass(TrainingInterrupted, KeyboardInterrupt)
    script = tmp_path / "train_ddp.py"
    script.write_text(INTERRUPTED_SCRIPT)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TMPDIR": str(scratch)}
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(Path(__file__).resolve())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 300
    while not (ckpt / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, out + err[-4000:]
    lines = out.splitlines()
    assert lines.count("before fit") == 1, out
    stopped = [line for line in lines if line.startswith("interrupted")]
    assert len(stopped) == 1, out
    assert stopped[0].startswith(f"interrupted signal={int(signal.SIGINT)} epochs=")
    assert stopped[0].endswith(f"checkpoint={ckpt / 'last.ckpt'}")
    assert 1 <= int(stopped[0].split("epochs=")[1].split()[0]) < 40
    assert [line for line in lines if line.startswith("resumed")] == ["resumed world=2 epochs=40"], out
    assert not [p for p in scratch.iterdir() if p.name.startswith("clinfuse-ddp-")]


def test_the_workers_import_the_modules_of_registered_plug_ins_and_a_script_s_own_is_refused():
    from clinfuse.encoders.base import ENCODERS
    from clinfuse.fusion import ddp_launch

    plugin = type("PluginEncoder", (), {"__module__": "my_lab.encoders"})
    ENCODERS.register("ddp_test_plugin")(plugin)
    try:
        assert ddp_launch.plugin_modules() == ["my_lab.encoders"]
        plugin.__module__ = "__main__"
        with pytest.raises(ValueError, match="encoder 'ddp_test_plugin' it registers is unknown to them"):
            ddp_launch.plugin_modules()
    finally:
        ENCODERS.unregister("ddp_test_plugin")
    assert ddp_launch.plugin_modules() == []
