"""Time and peak memory of gene_transformer and event_transformer on long token sequences (not a test).

Cases (batch of 8, forward + backward of ``(tokens ** 2).mean()`` in train mode, d_model=64, 4 heads,
2 layers, ffn_mult=2, the encoders' default dropout 0.1 on block outputs):

* ``gene_transformer`` gene tokens (``use_gene_sets=False``) on 2,000 and 20,000 genes, full attention;
* ``gene_transformer`` with ``attention="latent"`` (32 latents) on 20,000 genes, the linear-time option;
* ``event_transformer`` on 1,024 and 8,192 events per patient (all real), full attention.

Method. Every case runs in its own fresh Python process (``--case``), so the process's peak resident set
size is the case's own. The child builds the encoder and the batch, then reads ``ru_maxrss`` (the high-water
mark of RSS, in KiB on Linux) as the baseline; it runs one warm-up iteration and ``--repeats`` timed ones
(the warm-up counts as the only measurement when it alone takes longer than ``--budget`` seconds, one-time
costs being negligible at that size), then reads ``ru_maxrss`` again. ``peak_mb`` is the growth of that
high-water mark: everything forward + backward allocated at its peak (activations kept for backward,
transient attention buffers, gradients), measured by the OS, so it includes allocations that torch's own
counters would miss on CPU. ``mb_per_token`` = peak_mb / (B * T); ``per_token_ratio`` (large / small case
of the same encoder) near 1 means memory grows linearly in T; a kept T x T attention matrix would make it
grow with T (``quadratic_mb`` is what one layer's [B, H, T, T] float32 weights alone would take).
Times are medians of wall-clock seconds on whatever CPU runs this (the development machine is 2 shared
cores, so they are noisy); full attention's time grows as T^2, the latent option's as T.

Usage: ``python benchmarks/bench_encoders_sequences.py [--repeats 3] [--budget 60] [--quick]``; writes
``benchmarks/out/encoders_sequences.json`` (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_device_args

B, D_MODEL, N_HEADS, N_LAYERS = 8, 64, 4, 2
CASES = {
    "gene_transformer-2000": ("genomics", 2_000, {}),
    "gene_transformer-20000": ("genomics", 20_000, {}),
    "gene_transformer_latent-20000": ("genomics", 20_000, {"attention": "latent", "n_latents": 32}),
    "event_transformer-1024": ("events", 1_024, {}),
    "event_transformer-8192": ("events", 8_192, {}),
}
RATIOS = {"gene_transformer": ("gene_transformer-2000", "gene_transformer-20000"),
          "event_transformer": ("event_transformer-1024", "event_transformer-8192")}
OUT = Path(__file__).resolve().parent / "out" / "encoders_sequences.json"


def _build(modality: str, n_tokens: int, extra: dict):
    import torch
    from clinfuse.datasets.batch import ModalityBatch
    from clinfuse.encoders.events import EventTransformer
    from clinfuse.encoders.genomics import GeneTransformer

    g = torch.Generator().manual_seed(0)
    mask, present = torch.ones(B, n_tokens, dtype=torch.bool), torch.ones(B, dtype=torch.bool)
    torch.manual_seed(0)
    if modality == "genomics":
        genes = [f"g{i}" for i in range(n_tokens)]
        enc = GeneTransformer(genes=genes, use_gene_sets=False, d_model=D_MODEL, n_heads=N_HEADS,
                              n_layers=N_LAYERS, **extra)
        batch = ModalityBatch("genomics", mask, present, {"values": torch.randn(B, n_tokens, generator=g)},
                              [genes] * B)
        return enc, batch
    vocab = 500
    enc = EventTransformer(vocab_size=vocab, d_model=D_MODEL, n_heads=N_HEADS, n_layers=N_LAYERS, **extra)
    codes = torch.randint(1, vocab + 2, (B, n_tokens), generator=g)
    tensors = {
        "codes": codes, "values": torch.randn(B, n_tokens, generator=g),
        "has_value": torch.rand(B, n_tokens, generator=g) < 0.5,
        "times": torch.sort(torch.rand(B, n_tokens, generator=g) * 365, dim=1).values,
        "segments": torch.randint(0, 4, (B, n_tokens), generator=g),
               "n_cut": torch.zeros(B, dtype=torch.long),
    }
    names = [[f"c{c}@{i}" for i, c in enumerate(row)] for row in codes.tolist()]
    return enc, ModalityBatch("events", mask, present, tensors, names, {"code": [[n.split("@")[0] for n in r]
                                                                                for r in names]})


def run_case(name: str, repeats: int, budget: float, args: argparse.Namespace | None = None) -> dict:
    """Run one case in this process (call in a fresh process) and return its figures."""
    import torch
    from common import autocast, device_info, device_of, synchronize

    args = args or add_device_args(argparse.ArgumentParser()).parse_args([])
    device = device_of(args)
    modality, n_tokens, extra = CASES[name]
    enc, batch = _build(modality, n_tokens, extra)
    enc, batch = enc.to(device), batch.to(device)
    enc.train()
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> float:
        enc.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with autocast(args):
            loss = (enc(batch).values.float() ** 2).mean()
        loss.backward()
        synchronize(args)
        return time.perf_counter() - t0

    warm = step()
    times = [warm] if warm > budget else [step() for _ in range(repeats)]
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib) / 1024
    n_heads = N_HEADS
    return {
        "case": name, "modality": modality, "tokens": n_tokens, "batch": B, "d_model": D_MODEL,
        "n_heads": n_heads, "n_layers": N_LAYERS, "options": extra, "n_timed": len(times),
        "median_s": statistics.median(times), "times_s": times, "peak_mb": peak_mb,
        "mb_per_token": peak_mb / (B * n_tokens),
        "quadratic_mb": B * n_heads * n_tokens**2 * 4 / 2**20, "torch_threads": torch.get_num_threads(),
        **device_info(args),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds; see the module docstring")
    parser.add_argument("--case", choices=sorted(CASES),
                        help="run one case here and print its JSON (internal)")
    parser.add_argument("--quick", action="store_true", help="only the small cases (a smoke run)")
    parser.add_argument("--out", type=Path, default=OUT)
    add_device_args(parser)
    args = parser.parse_args(argv)
    if args.case:
        result = run_case(args.case, args.repeats, args.budget, args)
        print(json.dumps(result))
        return result
    names = [n for n in CASES if not args.quick or n.endswith(("-2000", "-1024"))]
    results = {}
    for name in names:
        cmd = [sys.executable, __file__, "--case", name, "--repeats", str(args.repeats), "--budget",
               str(args.budget), "--device", args.device, "--autocast", args.autocast]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            results[name] = {"case": name, "error": proc.stderr.strip().splitlines()[-1:]}
        else:
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[name]), flush=True)
    ratios = {}
    for enc, (small, large) in RATIOS.items():
        if "mb_per_token" in results.get(small, {}) and "mb_per_token" in results.get(large, {}):
            s, lg = results[small], results[large]
            ratios[enc] = {"tokens": [s["tokens"], lg["tokens"]], "peak_mb": [s["peak_mb"], lg["peak_mb"]],
                           "per_token_ratio": lg["mb_per_token"] / s["mb_per_token"],
                           "time_ratio": lg["median_s"] / s["median_s"]}
    report = {"benchmark": "encoders_sequences", "method": __doc__.split("Method. ")[1].split("\n\n")[0],
              "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                          "platform": platform.platform()},
              "cases": results, "linearity": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.out.name}.", dir=args.out.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(report, fh, indent=2)
    os.replace(tmp, args.out)
    print(json.dumps({"linearity": ratios}, indent=2))
    return report


if __name__ == "__main__":
    main()
