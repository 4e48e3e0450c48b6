"""Multi-process training without re-running the user's script: the launcher of ``strategy="ddp"``.

Lightning's own launchers start the other ranks by re-running the calling script (``ddp``) or by
re-importing its main module (``ddp_spawn``), so every line of a user script after ``fit`` ran once per
process. Instead, ``FusionModel.fit`` with a DDP strategy over several devices (and no cluster manager that
started the processes itself, e.g. ``torchrun`` or SLURM) does this:

1. pickles the cohort, the validation cohort and the estimator's hyperparameters into a private temporary
   folder (``tempfile.mkdtemp``; never the working directory);
2. starts ``N`` processes ``python -m clinfuse.fusion.ddp_worker <folder>`` with ``MASTER_ADDR``,
   ``MASTER_PORT`` (a free port), ``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK`` and ``RANK`` set, so that
   Lightning sees an externally launched cluster (``LightningEnvironment``) and launches nothing; each
   worker trains on its ``LOCAL_RANK`` device of ``devices`` (CPU processes or GPUs alike);
3. streams rank 0's output to this process's stdout / stderr (the other ranks' go to log files, shown
   when they fail); rank 0 writes the fitted state back atomically and the estimator assigns it as
   after a one-process fit (``world_size_ == N``, ``is_global_zero_`` True);
4. a worker's exception is raised here (same type and message, the worker's traceback as its cause);
   SIGINT / SIGTERM here stop the workers and raise ``TrainingInterrupted``; the folder is removed in
   every case.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

JOB, RESULT, ERROR, INTERRUPTED = "job.pkl", "result.pt", "error-{rank}.pkl", "interrupted-{rank}.pkl"
TAIL_BYTES = 8000
"""How much of a failed worker's output the error message quotes."""
STOP_GRACE_S = 30.0
"""How long stopped workers get to exit by themselves before they are killed."""


WORKER_ENV = "CLINFUSE_DDP_WORKER"
"""Set in the workers' environment: their Trainer takes :func:`worker_strategy`."""


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def worker_strategy(user_strategy: str) -> Any:
    """The workers' strategy: DDP in an externally launched ``LightningEnvironment`` (it reads
    ``LOCAL_RANK`` / ``NODE_RANK`` / ``MASTER_*`` and starts no process); unused parameters are searched
    for unless the user's strategy says ``find_unused_parameters_false``."""
    from lightning_fabric.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(cluster_environment=LightningEnvironment(),
                       find_unused_parameters="find_unused_parameters_false" not in user_strategy)


class WorkerFailed(RuntimeError):
    """A DDP worker process failed; the message holds its traceback or, when it died without one, the
    end of its output."""


def world_size(model: Any) -> int:
    """The number of processes ``model``'s ``strategy`` / ``devices`` / ``accelerator`` train on when
    this launcher starts them, else 0 (no DDP strategy string, one device, or processes started by a
    cluster manager: Lightning handles those in this process as before)."""
    strategy = model.strategy
    if not isinstance(strategy, str) or not strategy.startswith("ddp") or _launched_externally():
        return 0
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

    accelerator = str(model.accelerator).lower()
    if accelerator == "auto":
        accelerator = "cuda" if CUDAAccelerator.is_available() else "cpu"
    if accelerator not in ("cpu", "cuda", "gpu"):
        return 0  # other accelerators: Lightning's own launchers, as before
    cls = CPUAccelerator if accelerator == "cpu" else CUDAAccelerator
    devices = cls.auto_device_count() if model.devices in ("auto", None) else model.devices
    n = len(cls.get_parallel_devices(cls.parse_devices(devices)))
    return n if n > 1 else 0


def plugin_modules() -> list[str]:
    """The modules outside clinfuse that registered an encoder, aggregator or modality: the workers import
    them before training. One registered by the running script itself is a ``ValueError`` (the workers do
    not run the script, so they could not know it)."""
    from ..datasets.modalities.registry import MODALITY_REGISTRY
    from ..encoders.base import ENCODERS
    from .base import AGGREGATORS

    entries = ([(f"encoder {n!r}", ENCODERS.get(n)) for n in ENCODERS]
               + [(f"aggregator {n!r}", AGGREGATORS.get(n)) for n in AGGREGATORS]
               + [(f"modality {m.name!r}", type(m)) for m in MODALITY_REGISTRY])
    modules = []
    for label, cls in entries:
        module = str(getattr(cls, "__module__", "") or "")
        if module == "__main__":
            raise ValueError(f"strategy='ddp' trains in clinfuse worker processes, which do not run your "
                             f"script: the {label} it registers is unknown to them; move its class into a "
                             "module that the script imports")
        if module and module.split(".")[0] != "clinfuse":
            modules.append(module)
    return list(dict.fromkeys(modules))


def _launched_externally() -> bool:
    """Whether this process is itself one rank of a launched job (Lightning's environment detection)."""
    from lightning_fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if "LOCAL_RANK" in os.environ:
        return True
    return any(env.detect() for env in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment,
                                        MPIEnvironment))


def fit_in_workers(model: Any, cohort: Any, validation: Any | None, *, resume: bool, n: int) -> Any:
    """Train ``model`` on ``cohort`` in ``n`` worker processes; returns the ``TrainingRun`` of rank 0."""
    import torch

    from .interrupts import Interrupted, TrainingInterrupted, raise_on_signals
    from .training import TrainingRun, _split

    folder = Path(tempfile.mkdtemp(prefix="clinfuse-ddp-"))
    workers: list[_Worker] = []
    try:
        job = {"params": model.get_params(), "cohort": cohort, "validation": validation, "resume": resume}
        try:
            data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(f"strategy={model.strategy!r} hands the cohort and the hyperparameters to its "
                            f"worker processes by pickling them, which failed: {exc}") from exc
        # the plug-ins are imported before the job is unpickled (a cohort may hold their modalities)
        (folder / JOB).write_bytes(pickle.dumps({"plugins": plugin_modules(), "parent": os.getpid(),
                                                 "job": data}))
        env = _worker_env(n)
        with raise_on_signals() as received:
            try:
                for rank in range(n):  # one by one: the finally below stops those started if one fails
                    workers.append(_Worker(rank, folder, env))
                _wait(workers)
            except Interrupted:
                _stop(workers, received.signum or signal.SIGINT)
                info = _read(folder / INTERRUPTED.format(rank=0)) or {}
                from .checkpoints import last_checkpoint

                raise TrainingInterrupted(int(received.signum or signal.SIGINT),
                                          checkpoint=last_checkpoint(model.checkpoint_dir),
                                          epochs_done=int(info.get("epochs_done", 0))) from None
        failed = [w for w in workers if w.returncode != 0]
        if failed:
            _raise_failure(folder, failed, model)
        state = torch.load(folder / RESULT, map_location="cpu", weights_only=False)
    finally:
        _stop(workers, signal.SIGTERM)
        shutil.rmtree(folder, ignore_errors=True)
    train, validation = _split(model, cohort, validation)
    return TrainingRun(state=state, train=train, validation=validation)


class _Worker:
    """One worker process; rank 0's output is copied to this process's streams as it comes."""

    def __init__(self, rank: int, folder: Path, env: dict[str, str]) -> None:
        self.rank = rank
        self.tail: collections.deque[bytes] = collections.deque()
        self.threads: list[threading.Thread] = []
        self.log = None if rank == 0 else open(folder / f"rank{rank}.log", "wb")  # noqa: SIM115
        out = subprocess.PIPE if rank == 0 else self.log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clinfuse.fusion.ddp_worker", str(folder)], stdin=subprocess.DEVNULL,
            stdout=out, stderr=out if rank else subprocess.PIPE, env={**env, "LOCAL_RANK": str(rank),
                                                                     "RANK": str(rank)},
            start_new_session=True)  # a Ctrl+C in the terminal reaches this process only; it stops them
        if rank == 0:
            for pipe, stream in ((self.proc.stdout, sys.stdout), (self.proc.stderr, sys.stderr)):
                thread = threading.Thread(target=self._copy, args=(pipe, stream), daemon=True)
                thread.start()
                self.threads.append(thread)
        self.exited_at: float | None = None

    def _copy(self, pipe: Any, stream: Any) -> None:
        size, decoder = 0, codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks split characters
        for chunk in iter(lambda: os.read(pipe.fileno(), 65536), b""):
            self.tail.append(chunk)
            size += len(chunk)
            while size - len(self.tail[0]) > TAIL_BYTES:
                size -= len(self.tail.popleft())
            try:
                stream.write(decoder.decode(chunk))
                stream.flush()
            except (OSError, ValueError):  # the stream was closed: keep draining the pipe
                pass

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def output_tail(self, folder: Path) -> str:
        if self.rank == 0:
            for thread in self.threads:
                thread.join(timeout=5)
            data = b"".join(self.tail)
        else:
            path = folder / f"rank{self.rank}.log"
            data = path.read_bytes() if path.exists() else b""
        return data[-TAIL_BYTES:].decode("utf-8", errors="replace")

    def close(self) -> None:
        for thread in self.threads:
            thread.join(timeout=5)
        if self.log is not None:
            self.log.close()


def _worker_env(n: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GROUP_RANK", "LOCAL_WORLD_SIZE")}
    # the workers import what this process can (a plug-in next to the user's script, a source checkout)
    paths = [p if p else os.getcwd() for p in sys.path]
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(n), NODE_RANK="0",
               PYTHONUNBUFFERED="1", **{WORKER_ENV: "1"}, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(workers: list[_Worker]) -> None:
    """Until every worker exited; once one fails, the others get a moment to report, then are stopped
    (a rank left waiting for a dead peer would otherwise wait for the collective's timeout)."""
    failed_at = None
    while True:
        codes = [w.returncode for w in workers]
        for w, code in zip(workers, codes):
            if code is not None and w.exited_at is None:
                w.exited_at = time.monotonic()
        if all(c is not None for c in codes):
            break
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > 5.0:
            _stop(workers, signal.SIGTERM)
            break
        time.sleep(0.05)
    for w in workers:
        w.close()


def _stop(workers: list[_Worker], signum: int) -> None:
    """Send ``signum`` to the live workers, wait ``STOP_GRACE_S`` for them, then kill what is left."""
    live = [w for w in workers if w.proc.poll() is None]
    for w in live:
        w.proc.send_signal(signum)
    deadline = time.monotonic() + STOP_GRACE_S
    for w in live:
        try:
            w.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
    for w in workers:
        w.close()


def _read(path: Path) -> Any:
    try:
        return pickle.loads(path.read_bytes())
    except Exception:  # absent (the worker died before writing it) or unreadable
        return None


def _raise_failure(folder: Path, failed: list[_Worker], model: Any) -> None:
    """Raise the error of the first worker that failed: its own exception (type and message kept, its
    traceback as the cause) when it wrote one, else ``WorkerFailed`` with the end of its output."""
    from .checkpoints import last_checkpoint
    from .interrupts import TrainingInterrupted

    failed = sorted(failed, key=lambda w: (_read(folder / ERROR.format(rank=w.rank)) is None,
                                           w.exited_at or float("inf")))
    worker = failed[0]
    report = _read(folder / ERROR.format(rank=worker.rank))
    if report is not None:
        cause = WorkerFailed(f"DDP worker rank {worker.rank} failed:\n{report['traceback']}")
        exc = report.get("exception")
        if isinstance(exc, BaseException):
            exc.add_note(f"(raised in DDP worker process rank {worker.rank}; its traceback is above)")
            raise exc from cause
        raise cause
    interrupted = _read(folder / INTERRUPTED.format(rank=worker.rank))
    if interrupted is not None:  # a worker stopped by a signal that did not come from here
        raise TrainingInterrupted(int(interrupted["signum"]), epochs_done=int(interrupted["epochs_done"]),
                                  checkpoint=last_checkpoint(model.checkpoint_dir))
    raise WorkerFailed(f"DDP worker rank {worker.rank} exited with status {worker.returncode}; the end of "
                       f"its output:\n{worker.output_tail(folder)}")
