"""Time and memory of ``feature_bag`` on one large bag, as a ratio to the bare matrix multiply it contains.

The cost floor of a bag is projecting its features (N x D x d multiply-adds), so the encoder is reported as
a ratio to that floor measured in the same run. Goal (issue 3): ratio <= 1.5 on a 100,000 x 1,024
bag.

Cases (one bag, B = 1, N = 100,000 patches, D = 1,024, d = 256 by default, float32, CPU):

* ``inference``: ``torch.no_grad()``, eval mode. Floor: ``x @ W.T``. Encoder: ``feature_bag`` forward without
  and with the 2-D positional term (``positional=True``, coordinates on a 256-pixel grid).
* ``training``: train mode (dropout 0.1), forward + backward of ``tokens.values.sum()``. Floor: the same for
  ``x @ W.T`` with ``W`` requiring grad (the forward GEMM plus the weight-gradient GEMM).

Method. All cases run in one process on the same input tensor; each repeat runs every case once, in turn
(interleaved, so machine load drifts affect all alike); after one warm-up round, ``--repeats`` rounds are
timed and the median wall-clock time per case is reported, with ``ratio`` = median(case) / median(floor).
``extra_peak_mb`` is the growth of the process's peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` before each case) during one call: what the call allocated at its peak beyond the
input, measured by the OS; compare with ``output_mb`` (the ``[N, d]`` result) and ``input_mb`` (``[N, D]``).
A copy of the input would show up as about ``input_mb`` extra.

Usage:
``python benchmarks/bench_encoders_images.py [--n 100000] [--dim 1024] [--d-model 256] [--repeats 7]
[--threads N]``; writes ``benchmarks/out/encoders_images.json`` (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from clinfuse.datasets.batch import ModalityBatch
from clinfuse.encoders.images import FeatureBagEncoder
from common import add_device_args, autocast, device_info, device_of, synchronize

OUT = Path(__file__).resolve().parent / "out" / "encoders_images.json"


def _peak_kb() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _extra_peak_mb(fn: Callable[[], object]) -> float | None:
    """Peak RSS growth during one call of ``fn`` (MB), or None where /proc is not available."""
    if not _reset_peak():
        return None
    before = _peak_kb()
    result = fn()
    after = _peak_kb()
    del result
    return None if before is None or after is None else round((after - before) / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1_024)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=OUT)
    add_device_args(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, dim, d = args.n, args.dim, args.d_model
    device = device_of(args)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, n, dim, generator=g).to(device)
    side = int(n ** 0.5) + 1
    coords = torch.stack([torch.arange(n) % side, torch.arange(n) // side], dim=-1).float()[None] * 256
    mask = torch.ones(1, n, dtype=torch.bool)
    batch = ModalityBatch("images", mask, torch.ones(1, dtype=torch.bool),
                          {"features": x, "coords": coords, "position": torch.arange(n)[None]},
                          [[str(i) for i in range(n)]], {"slide_id": [["s"] * n]}).to(device)
    torch.manual_seed(0)
    enc = FeatureBagEncoder(in_dim=dim, d_model=d).to(device)
    enc_pos = FeatureBagEncoder(in_dim=dim, d_model=d, positional=True).to(device)
    enc_pos.load_state_dict(enc.state_dict())
    w = enc.proj.weight.detach().clone()
    w_grad = w.clone().requires_grad_(True)

    def floor_inference() -> torch.Tensor:
        with torch.no_grad():
            return x @ w.T

    def bag_inference(model: FeatureBagEncoder) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model.eval()(batch).values
        return run

    def floor_training() -> torch.Tensor:
        w_grad.grad = None
        y = x @ w_grad.T
        y.sum().backward()
        return w_grad.grad

    def bag_training() -> torch.Tensor:
        enc.train().zero_grad(set_to_none=True)
        enc(batch).values.sum().backward()
        return enc.proj.weight.grad

    cases: dict[str, tuple[str, Callable[[], object]]] = {
        "inference/matmul": ("inference/matmul", floor_inference),
        "inference/feature_bag": ("inference/matmul", bag_inference(enc)),
        "inference/feature_bag_positional": ("inference/matmul", bag_inference(enc_pos)),
        "training/matmul": ("training/matmul", floor_training),
        "training/feature_bag": ("training/matmul", bag_training),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for round_ in range(args.repeats + 1):  # round 0 is the warm-up
        for name, (_, fn) in cases.items():
            t0 = time.perf_counter()
            with autocast(args):  # the floor runs under the same autocast: the ratio compares like with like
                fn()
            synchronize(args)
            if round_:
                times[name].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    memory = {k: _extra_peak_mb(fn) for k, (_, fn) in cases.items()}
    results = {
        name: {"median_s": round(medians[name], 4), "times_s": [round(t, 4) for t in times[name]],
               "ratio": round(medians[name] / medians[floor], 3), "floor": floor,
               "extra_peak_mb": memory[name]}
        for name, (floor, _) in cases.items()
    }
    report = {
        "benchmark": "feature_bag vs the bare matrix multiply it contains",
        "n_patches": n, "feature_dim": dim, "d_model": d, "repeats": args.repeats,
        "input_mb": round(x.numel() * 4 / 2**20, 1), "output_mb": round(n * d * 4 / 2**20, 1),
        "goal": "inference/feature_bag ratio <= 1.5",
        "goal_met": results["inference/feature_bag"]["ratio"] <= 1.5,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        **device_info(args),
        "python": platform.python_version(), "load_average": list(os.getloadavg()),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.out.name}.", dir=args.out.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(report, fh, indent=2)
    os.replace(tmp, args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
