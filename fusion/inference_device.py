"""The device a fitted model predicts and explains on: its ``accelerator``, as training used it.

``"cpu"`` predicts on the CPU; ``"cuda"`` / ``"gpu"`` on the GPU (the first of ``devices`` when that is a
list of indices), and a ``ValueError`` when this process has no CUDA; ``"auto"`` on the GPU when CUDA is
available, else the CPU; ``"mps"`` on Apple's GPU when available (else ``ValueError``). Other accelerators
(e.g. TPUs, which plain PyTorch inference does not drive) predict on the CPU. Outputs come back as CPU
arrays whatever the device, and the network is back on the CPU once a pass ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch


def inference_device(accelerator: Any, devices: Any = None) -> torch.device:
    """The ``torch.device`` of ``accelerator`` (see the module docstring)."""
    name = str(accelerator).lower()
    if name in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ValueError(f"this model has accelerator={accelerator!r} but CUDA is not available in this "
                             "process; predict on the CPU with model.set_params(accelerator='cpu') (or "
                             "'auto', which uses a GPU when there is one)")
        return _cuda(devices)
    if name == "auto":
        return _cuda(devices) if torch.cuda.is_available() else torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"this model has accelerator={accelerator!r} but MPS is not available in this "
                             "process; predict on the CPU with model.set_params(accelerator='cpu')")
        return torch.device("mps")
    return torch.device("cpu")


def _cuda(devices: Any) -> torch.device:
    if isinstance(devices, list | tuple) and devices and isinstance(devices[0], int):
        return torch.device("cuda", int(devices[0]))
    return torch.device("cuda")


def network_outputs(model: Any, batches: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """``(cpu_batch, network_output)`` per batch, the fitted network (eval mode) run on the model's device.

    ``network_output`` lives on that device (``AttentionRecord.detach`` and the predictions bring it to the
    CPU); the network is moved back to the CPU when the pass ends or is abandoned.
    """
    with network_on_device(model) as (net, device):
        for batch in batches:
            yield batch, net(batch.to(device))


@contextlib.contextmanager
def network_on_device(model: Any) -> Iterator[tuple[torch.nn.Module, torch.device]]:
    """``(network, device)``: the fitted network (eval mode) on the model's device for the ``with`` block,
    back on the CPU when it ends or is abandoned."""
    device = inference_device(model.accelerator, model.devices)
    net = model._network_for_inference().to(device)
    try:
        yield net, device
    finally:
        net.cpu()
