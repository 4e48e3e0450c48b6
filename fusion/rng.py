"""The process-wide random generators a fit draws from (python ``random``, numpy's legacy global generator,
torch's CPU and CUDA generators) and Lightning's seed variables: captured as checkpoint-safe values
(tensors, lists, ints: loadable with ``torch.load(weights_only=True)``), restored, and kept from leaking
out of ``fit``."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")  # what pytorch_lightning.seed_everything sets


def rng_state() -> dict[str, Any]:
    """The current state of every global generator."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [int(version), list(internal), gauss],
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
        # only once CUDA is in use: asking would initialise it
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` output."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Inside, seed and draw freely; on exit every global generator and Lightning's seed variables are as
    they were on entry."""
    state = rng_state()
    env = {k: os.environ.get(k) for k in SEED_ENV}
    try:
        yield
    finally:
        set_rng_state(state)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
