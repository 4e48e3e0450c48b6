"""SIGINT / SIGTERM stop ``fit`` and the ``clinfuse`` commands with a non-zero status and a message naming
what was kept: ``fit`` raises ``TrainingInterrupted`` (a ``KeyboardInterrupt``, never a ``SystemExit``),
the commands exit 130 / 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion import FusionModel, training
from clinfuse.fusion.cli import main
from clinfuse.fusion.config import write_cohort_files
from clinfuse.fusion.interrupts import Interrupted, TrainingInterrupted

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "batch_size": 8, "max_patches": 4, "verbose": False,
        "seed": 0, "early_stopping_patience": None}


@pytest.fixture
def recorded_signals():
    """SIGINT / SIGTERM only recorded while the test runs: a signal that lands outside the code under test
    (or on code that ignores it) fails the test instead of killing pytest."""
    seen: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: seen.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    yield seen
    for s, handler in previous.items():
        signal.signal(s, handler)


def _signal_when(path: Path, signum: int) -> threading.Thread:
    def send() -> None:
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def slow_steps(monkeypatch):
    """Training steps that take a little time, so a signal sent after the first checkpoint lands
    mid-training."""
    step = training.FusionLightningModule.training_step

    def slow(self, batch, batch_idx):
        time.sleep(0.02)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(training.FusionLightningModule, "training_step", slow)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_fit_raises_training_interrupted_naming_the_checkpoint(tmp_path, signum, recorded_signals,
                                                               slow_steps):
    cohort, _ = make_synthetic_cohort(24, modalities=("clinical", "genomics"), n_genes=12, seed=3)
    model = FusionModel(**TINY, max_epochs=200, checkpoint_dir=tmp_path / "ckpt")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = _signal_when(tmp_path / "ckpt" / "last.ckpt", signum)
    with pytest.raises(TrainingInterrupted) as info:
        model.fit(cohort)
    thread.join()
    exc = info.value
    assert isinstance(exc, KeyboardInterrupt) and not isinstance(exc, SystemExit)
    assert exc.signum == signum and exc.exit_code == 128 + signum
    assert exc.checkpoint == tmp_path / "ckpt" / "last.ckpt" and exc.epochs_done >= 1
    assert signal.Signals(signum).name in str(exc) and str(exc.checkpoint) in str(exc)
    ckpt = torch.load(exc.checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] < 199  # stopped mid-training, the kept checkpoint is whole
    assert not hasattr(model, "network_")
    # Lightning leaves SIGINT ignored after a Ctrl-C; the caller's handlers come back.
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert recorded_signals == []  # the signal was fit's, not left to land elsewhere


def test_predict_interrupted_by_sigterm_exits_143_and_writes_nothing(fitted_classifier, tmp_path,
                                                                    monkeypatch, recorded_signals, capsys):
    from clinfuse.fusion import commands

    root = tmp_path / "files"
    spec = write_cohort_files(fitted_classifier.test, root)
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    fitted_classifier.model.save(tmp_path / "model")
    frame = commands.prediction_frame

    def killed(model, cohort, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the signal is delivered here
        return frame(model, cohort, **kwargs)

    monkeypatch.setattr(commands, "prediction_frame", killed)
    code = main(["predict", "--model", str(tmp_path / "model"), "--data", str(root / "data.yaml"),
                 "--out", str(tmp_path / "pred")])
    assert code == 143
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("clinfuse predict: interrupted by SIGTERM") and "left as it was" in err
    assert not (tmp_path / "pred").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    assert recorded_signals == []


# ------------------------------------------------------------------------------------------ subprocesses
def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"{path} never appeared (rc {proc.returncode}):\n{err[-3000:]}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def run_yaml(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    cohort, _ = make_synthetic_cohort(24, n_patches=(4, 8), feature_dim=8, n_genes=12, n_codes=8, seed=2)
    spec = write_cohort_files(cohort, root)
    model = {**TINY, "max_epochs": 300}
    (root / "run.yaml").write_text(yaml.safe_dump({"task": "classification", "data": spec, "model": model}))
    return root / "run.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_train_signal_exits_128_plus_signum_and_keeps_the_checkpoint(run_yaml, tmp_path, signum):
    out = tmp_path / "model"
    proc = subprocess.Popen([sys.executable, "-m", "clinfuse.fusion.cli", "train", "--config", str(run_yaml),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "model.checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"clinfuse train: training interrupted by {signal.Signals(signum).name}")
    assert str(last) in line and "--resume" in line
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] < 299
    assert not out.exists()


@pytest.mark.slow
def test_script_whose_fit_gets_sigterm_exits_nonzero(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        from clinfuse.datasets import make_synthetic_cohort
        from clinfuse.fusion import FusionModel
        cohort, _ = make_synthetic_cohort(24, modalities=("clinical", "genomics"), n_genes=12, seed=3)
        FusionModel(**{TINY!r}, max_epochs=300, checkpoint_dir={str(tmp_path / "ckpt")!r}).fit(cohort)
        print("finished")
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(tmp_path / "ckpt" / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "finished" not in out
    assert "TrainingInterrupted: training interrupted by SIGTERM" in err


def test_interrupted_is_a_keyboard_interrupt_with_the_shell_status():
    assert issubclass(TrainingInterrupted, Interrupted) and issubclass(Interrupted, KeyboardInterrupt)
    assert Interrupted(signal.SIGTERM).exit_code == 143 and Interrupted(signal.SIGINT).exit_code == 130
