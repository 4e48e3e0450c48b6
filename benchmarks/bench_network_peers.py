"""The network at the floor: clinfuse's networks beside torchmil's ABMIL, TransMIL and DSMIL on one huge bag.

Setup (issue 16): one bag of ``--n`` (100,000) patch features of width 1,024, two classes. The floor is the
bare ``Linear(1024 -> d)`` over the bag (d = 64, ``FusionModel``'s ``d_model``), the projection every model
must pay. clinfuse rows are the whole :class:`~clinfuse.fusion.network.FusionNetwork` as ``fit`` builds it
for an images-only cohort (``feature_bag`` encoder, token types, the aggregator, the head; at inference the
network's attention records too; ``cross_attention``, which needs two modalities, also gets the synthetic
cohort's clinical record); torchmil rows are ``torchmil.models`` 1.0.2 with ``in_shape=(1024,)``
(TransMIL with ``att_dim=128, n_landmarks=8`` as in ``bench_mil_benchmarks.py``).

Two modes: ``inference`` (eval mode, ``torch.no_grad``, forward) and ``training`` (train mode, forward +
backward of the outputs' sum, the input needing no gradient as in training; the floor is then the Linear's
forward + backward). Each (model, mode) runs in its own subprocess (so that the peak memory is its own);
inside it the floor and the model alternate, ``--warmup`` untimed rounds then ``--repeats`` timed ones, and
the ratio is median(model) / median(floor) measured in that process; ``spread`` is the interquartile range
of the per-round ratios over their median. Memory: ``peak_minus_input_mb``, the peak resident set (CPU;
``torch.cuda.max_memory_allocated`` on CUDA) beyond the process before the step, less nothing else: the
input is allocated before the baseline is read, so it is what the model needs beyond the bag.

    python benchmarks/bench_network_peers.py                  # writes benchmarks/out/network_peers.json
    python benchmarks/bench_network_peers.py --device cuda --autocast bf16
    python benchmarks/bench_network_peers.py --n 10000 --models persam torchmil_dsmil --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "network_peers.json"
D_IN, D_MODEL, N_CLASSES = 1024, 64, 2
OURS = ("persam", "abmil", "hierarchical", "self_attention", "cross_attention", "concat")
PEERS = ("torchmil_abmil", "torchmil_dsmil", "torchmil_transmil")
TORCHMIL_KWARGS = {"torchmil_transmil": {"att_dim": 128, "n_landmarks": 8}}
GOALS = {"persam": {"inference": 1.2, "training": 1.3}}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _ours(name: str, n: int, device: str):
    """(network, batch, outputs): the FusionNetwork ``fit`` builds for an images-only cohort, one sample."""
    import torch
    from clinfuse.datasets import Batch, ModalityBatch, Preprocessor, make_synthetic_cohort
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.build import build_network, output_names, resolve_network_config

    mods = ("clinical", "images") if name == "cross_attention" else ("images",)  # it needs two
    small, _ = make_synthetic_cohort(8, modalities=mods, n_patches=(4, 4), feature_dim=D_IN, seed=0)
    schema = Preprocessor().fit(small).schema_
    classes = list(schema["task"]["classes"])
    names = output_names("classification", "discrete", classes=classes, time_bins=None)
    params = FusionModel(aggregator=name, d_model=D_MODEL).get_params()
    config = resolve_network_config(schema, params, n_outputs=len(names), class_names=names)
    torch.manual_seed(0)
    net = build_network(schema, config).to(device)
    one = torch.ones(1, dtype=torch.bool, device=device)
    images = ModalityBatch(
        modality="images", mask=torch.ones(1, n, dtype=torch.bool, device=device), present=one,
        tensors={"features": torch.randn(1, n, D_IN, device=device),
                 "coords": torch.rand(1, n, 2, device=device) * 25_600,
                 "position": torch.arange(n, device=device)[None]},
        names=[[str(i) for i in range(n)]], meta={"slide_id": [["s"] * n]})
    modalities = {"images": images}
    if "clinical" in mods:  # one sample's clinical record (cross_attention's second modality)
        from clinfuse.datasets.testing import random_modality_batch

        modalities["clinical"] = random_modality_batch("clinical", schema["clinical"], lengths=[1]).to(device)
    batch = Batch(sample_ids=["s0"], patient_ids=["s0"], modalities=modalities,
                  labels=torch.zeros(1, dtype=torch.long, device=device))
    return net, batch, lambda out: out.outputs


def _peer(name: str, n: int, device: str):
    import torch
    from torchmil.models import ABMIL, DSMIL, TransMIL

    cls = {"torchmil_abmil": ABMIL, "torchmil_dsmil": DSMIL, "torchmil_transmil": TransMIL}[name]
    torch.manual_seed(0)
    net = cls(in_shape=(D_IN,), **TORCHMIL_KWARGS.get(name, {})).to(device)
    x = torch.randn(1, n, D_IN, device=device)

    def outputs(out):
        return out[0] if isinstance(out, tuple) else out

    return net, x, outputs


def worker(name: str, mode: str, n: int, warmup: int, repeats: int, threads: int, device: str,
           amp: str) -> dict:
    """Runs in the subprocess: the floor and the model alternately; times, ratio and memory."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    net, x, outputs = (_ours if name in OURS else _peer)(name, n, device)
    floor = nn.Linear(D_IN, D_MODEL).to(device)
    bag = x.modalities["images"].tensors["features"] if name in OURS else x
    training = mode == "training"
    net.train(training)
    floor.train(training)
    cast = torch.autocast(device_type=device, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def run(model, inp, out_fn) -> float:
        sync()
        start = time.perf_counter()
        if training:
            with cast:
                value = out_fn(model(inp)).float().sum()
            value.backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.no_grad(), cast:
                out_fn(model(inp))
        sync()
        return time.perf_counter() - start

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _current_rss_mb()
    peak_before = _peak_rss_mb()
    model_t, floor_t = [], []
    for i in range(warmup + repeats):
        f = run(floor, bag, lambda o: o)
        m = run(net, x, outputs)
        if i >= warmup:
            floor_t.append(f)
            model_t.append(m)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mb()
    ratios = sorted(a / b for a, b in zip(model_t, floor_t))
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    ratio = statistics.median(model_t) / statistics.median(floor_t)
    return {"model": name, "mode": mode, "n": n, "model_s": statistics.median(model_t),
            "floor_s": statistics.median(floor_t), "ratio_to_floor": ratio,
            "spread": (q[2] - q[0]) / statistics.median(ratios), 
            "model_times": model_t, "floor_times": floor_t,
            "peak_minus_input_mb": max(peak - base, 0.0), "rss_peak_before_mb": peak_before}


def main(argv: list[str] | None = None) -> int:
    from common import add_device_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(p)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--models", nargs="+", default=[*OURS, *PEERS], choices=[*OURS, *PEERS])
    p.add_argument("--modes", nargs="+", default=["inference", "training"], choices=["inference", "training"])
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per (model, mode) subprocess")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.worker:
        row = worker(*args.worker, n=args.n, warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                     device=args.device, amp=args.autocast)
        print("RESULT " + json.dumps(row))
        return 0

    # freed blocks above 128 KB go back to the OS at once, so the peak RSS measures live tensors
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = []
    for mode in args.modes:
        for name in args.models:
            cmd = [sys.executable, __file__, "--worker", name, mode, "--n", str(args.n), "--warmup",
                   str(args.warmup), "--repeats", str(args.repeats), "--threads", str(args.threads),
                   "--device", args.device, "--autocast", args.autocast]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                row = (json.loads(lines[-1][7:]) if lines else
                       {"model": name, "mode": mode, "error": done.stderr.strip().splitlines()[-1:]})
            except subprocess.TimeoutExpired:
                row = {"model": name, "mode": mode, "error": f"timeout after {args.timeout} s"}
            rows.append(row)
            if "error" in row:
                print(f"{mode:9s} {name:18s} ERROR {row['error']}", flush=True)
            else:
                print(f"{mode:9s} {name:18s} {row['ratio_to_floor']:6.2f}x floor "
                      f"(spread {row['spread']:.2f}) "
                      f"{row['model_s'] * 1e3:8.1f} ms  +{row['peak_minus_input_mb']:7.0f} MB", flush=True)
    table = {(r["model"], r["mode"]): r for r in rows if "error" not in r}
    goals = {}
    for mode, limit in GOALS["persam"].items():
        ours, dsmil = table.get(("persam", mode)), table.get(("torchmil_dsmil", mode))
        if ours is not None:
            r, theirs = ours["ratio_to_floor"], None if dsmil is None else dsmil["ratio_to_floor"]
            goals[f"persam/{mode}"] = {"ratio_to_floor": r, "goal": limit, "met_goal": r <= limit,
                                       "torchmil_dsmil": theirs,
                                       "at_least_as_close_as_dsmil": None if theirs is None else r <= theirs}
    import torch

    result = {"command": " ".join(["bench_network_peers.py", *(argv if argv is not None else sys.argv[1:])]),
              "torch": torch.__version__, "device": args.device, "autocast": args.autocast,
              "threads": args.threads, "n": args.n, "d_in": D_IN, "d_floor": D_MODEL, "repeats": args.repeats,
              "rows": rows, "goals": goals}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, suffix=".tmp", delete=False) as f:
        json.dump(result, f, indent=1)
    os.replace(f.name, args.out)
    for key, g in goals.items():
        print(key, json.dumps(g))
    return 0


if __name__ == "__main__":
    sys.exit(main())
