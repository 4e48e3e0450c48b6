"""SIGINT / SIGTERM as exceptions that say what was stopped, so that no killed run reports success.

Inside :func:`raise_on_signals` both signals raise :class:`Interrupted` (a ``KeyboardInterrupt``), so
``finally`` blocks and the atomic writers clean up and the caller decides what to report. ``fit`` turns
it into :class:`TrainingInterrupted`, which names the checkpoint kept. A script that does not catch it ends
with a traceback and a non-zero status (Python's 130 for an uncaught ``KeyboardInterrupt``, whichever
signal it was); the ``clinfuse`` commands catch it and exit with ``exc.exit_code``: 130 for SIGINT, 143 for
SIGTERM (128 + the signal number, the shell convention).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM.

    Attributes:
        signum: the signal number.
        exit_code: ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, message: str | None = None) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(message or f"interrupted by {signal_name(signum)}")

    def __str__(self) -> str:
        return str(self.args[0])


class TrainingInterrupted(Interrupted):
    """``FusionModel.fit`` stopped by SIGINT or SIGTERM.

    Attributes:
        checkpoint: ``last.ckpt`` of the last finished epoch, or None (no checkpoint folder, or no epoch
            finished); ``fit(..., resume=True)`` continues from it.
        epochs_done: epochs finished (and checkpointed, when a checkpoint folder is set).
    """

    def __init__(self, signum: int, *, checkpoint: Path | None, epochs_done: int) -> None:
        self.checkpoint = checkpoint
        self.epochs_done = int(epochs_done)
        if checkpoint is not None:
            kept = f"their checkpoint is kept at {checkpoint}"
        else:
            kept = "no checkpoint was kept (no checkpoint folder, or no epoch had finished)"
        super().__init__(signum, f"training interrupted by {signal_name(signum)} after {epochs_done} "
                                 f"finished epoch(s); {kept}")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class Received:
    """The first signal seen inside :func:`raise_on_signals` (None while none was)."""

    signum: int | None = None


@contextlib.contextmanager
def raise_on_signals() -> Iterator[Received]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted` (once: later ones are recorded only, so
    the clean-up they interrupt can finish); the previous handlers come back on exit.

    Signal handlers can only be set in the main thread; elsewhere this only yields the record.
    """
    received = Received()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        if received.signum is None:
            received.signum = signum
            raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
