"""Speed and memory of the aggregators on one huge bag: forward + backward, N = 1,000 / 10,000 / 100,000.

Setup (issue 4): one sample, N patch features of width D = 1,024 projected by ``Linear(1024, 256)`` (part of
the measured model, as in ``feature_bag``), 20 clinical variables as 20 tokens, 4 classes, cross-entropy,
d = 256. Each (model, N) runs in its own subprocess under an address-space limit (``RLIMIT_AS``) and a
timeout; a model is stopped at its first failure, which is recorded. Models: ``persam`` (and
``persam_encoded``: ``encode_instances=True``, the bag passed through PersAM's encoder), the registry's
``abmil`` and ``self_attention`` when registered, and ``dense``: a plain 2-layer transformer over
[CLS | clinical | all patches] (PyTorch ``TransformerEncoder``; quadratic in N) as the reference.

Per (model, N) the JSON records: the median step time (``warmup`` untimed steps, then ``repeats``), the
median time of the bare input projection ``Linear(1024, 256)`` forward + backward on the same input in the
same process (the cost floor, N x D x d), their ratio, and memory: ``peak_rss_mb`` (peak resident set of
the process), ``baseline_rss_mb`` (after imports and model construction, before the input exists),
``input_mb`` (the N x D float32 input) and ``peak_minus_input_mb = peak - baseline - input``: what the
step itself needs beyond the input. By default the workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` (the
same for every model) so that glibc returns freed blocks above 128 KB to the OS at once and the peak RSS
measures live tensors rather than the heap the allocator keeps after freeing (with glibc's default the
PersAM 100k peak read about 1.9 GB higher); ``--malloc-mmap-threshold 0`` measures with the default.
Summary: ``t(100k) / t(10k)`` (goal <= 12) and ``peak_minus_input_mb`` at 100k (goal < 2,048).

On a shared, oversubscribed machine pass ``--threads 1``: OpenMP threads spinning on busy cores made a
1,000-patch PersAM step 20x slower (14 s instead of 0.6 s) with the default 2 threads.

    python benchmarks/bench_aggregators.py --threads 1  # all models, writes benchmarks/out/aggregators.json
    python benchmarks/bench_aggregators.py --models persam --sizes 1000 10000
    python benchmarks/bench_aggregators.py --combine a.json b.json --out benchmarks/out/aggregators.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

D_IN, D_MODEL, N_CLINICAL, N_CLASSES = 1024, 256, 20, 4
OUT = Path(__file__).resolve().parent / "out" / "aggregators.json"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _build(name: str):
    """(model, step) for one aggregator name; the model maps (features [1, N, D], clinical [1, K]) ->
    logits."""
    import torch
    from clinfuse.encoders.tokens import Tokens
    from clinfuse.fusion import create_aggregator
    from clinfuse.fusion.heads import ClassificationHead
    from torch import nn

    class Dense(nn.Module):
        """Reference: transformer over [CLS | clinical | all patches]; pooled = the CLS output [B, d]."""

        def __init__(self) -> None:
            super().__init__()
            self.cls = nn.Parameter(torch.zeros(1, 1, D_MODEL))
            layer = nn.TransformerEncoderLayer(D_MODEL, 4, dim_feedforward=2 * D_MODEL, dropout=0.0,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

        def forward(self, tokens):
            x = torch.cat([self.cls, tokens["clinical"].values, tokens["images"].values], dim=1)
            return self.encoder(x)[:, 0]

    class Bench(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.project = nn.Linear(D_IN, D_MODEL)  # the feature_bag projection, part of the measured model
            self.clinical_w = nn.Parameter(torch.randn(N_CLINICAL, D_MODEL) * 0.02)  # feature tokens
            self.clinical_b = nn.Parameter(torch.zeros(N_CLINICAL, D_MODEL))
            if name == "dense":
                self.aggregator = Dense()
            else:
                # persam_encoded: PersAM with the bag passed through its encoder (the default up to 0.1.0)
                kw = ({"encode_instances": True, "gate_class_route": False, "modality_logits": False}
                      if name == "persam_encoded" else {})
                self.aggregator = create_aggregator(name.removesuffix("_encoded"), d_model=D_MODEL,
                                                    modalities=["clinical", "images"], n_outputs=N_CLASSES,
                                                    class_names=[f"c{i}" for i in range(N_CLASSES)], **kw)
            self.head = ClassificationHead(d_model=D_MODEL, n_classes=N_CLASSES)

        def forward(self, features, clinical):
            n = features.shape[1]
            one = torch.ones(1, dtype=torch.bool)
            tokens = {
                "images": Tokens(values=self.project(features), mask=torch.ones(1, n, dtype=torch.bool),
                                 names=[[""] * n], modality="images", present=one),
                "clinical": Tokens(values=clinical[..., None] * self.clinical_w + self.clinical_b,
                                   mask=torch.ones(1, N_CLINICAL, dtype=torch.bool),
                                   names=[[f"var{k}" for k in range(N_CLINICAL)]], modality="clinical",
                                   present=one),
            }
            out = self.aggregator(tokens)
            if isinstance(out, torch.Tensor):
                return self.head(out)
            scores = self.head(out.pooled)  # PersAM's modality logit terms count too, as in FusionNetwork
            return scores if out.offsets is None else scores + out.offsets.reshape(scores.shape)

    return Bench().train()


def worker(name: str, n: int, warmup: int, repeats: int, threads: int | None) -> dict:
    """Runs inside the subprocess: time and memory of one (model, N)."""
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _build(name)
    projection = nn.Linear(D_IN, D_MODEL)
    baseline = _current_rss_mb()
    features = torch.randn(1, n, D_IN)
    clinical = torch.randn(1, N_CLINICAL)
    label = torch.tensor([1])

    def step() -> float:
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(features, clinical), label)
        loss.backward()
        return time.perf_counter() - t0

    def proj_step() -> float:
        projection.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        projection(features).mean().backward()
        return time.perf_counter() - t0

    times = [step() for _ in range(warmup + repeats)][warmup:]
    proj = [proj_step() for _ in range(warmup + repeats)][warmup:]
    peak = _rss_mb()
    input_mb = features.numel() * 4 / 2**20
    t, tp = statistics.median(times), statistics.median(proj)
    return {
        "model": name, "n": n, "status": "ok", "median_s": t, "times_s": times, "projection_median_s": tp,
        "ratio_to_projection": t / tp, "peak_rss_mb": peak, "baseline_rss_mb": baseline, "input_mb": input_mb,
        "peak_minus_input_mb": peak - baseline - input_mb, "threads": torch.get_num_threads(),
    }


def _limit_memory(gb: float) -> None:
    limit = int(gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run(models: list[str], sizes: list[int], *, mem_limit_gb: float, timeout: float, warmup: int,
        repeats: int, threads: int | None, mmap_threshold: int, out: Path) -> dict:
    from clinfuse.fusion import list_aggregators
    from common import write_json

    registered = set(list_aggregators())
    results: dict = {
        "setup": {"D": D_IN, "d": D_MODEL, "clinical_tokens": N_CLINICAL, "classes": N_CLASSES, "batch": 1,
                  "mem_limit_gb": mem_limit_gb, "timeout_s": timeout, "warmup": warmup, "repeats": repeats,
                  "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                  "malloc_mmap_threshold": mmap_threshold or "glibc default"},
        "runs": [], "skipped": [], "summary": {},
    }
    for name in models:
        if name != "dense" and name.removesuffix("_encoded") not in registered:
            results["skipped"].append({"model": name, "reason": "not registered"})
            continue
        for n in sorted(sizes):
            reps = repeats if n < 100_000 else max(1, repeats - 1)  # 100k steps are slow; median of fewer
            cmd = [sys.executable, __file__, "--worker", name, "--n", str(n), "--warmup", str(warmup),
                   "--repeats", str(reps), "--mem-limit-gb", str(mem_limit_gb)]
            if threads:
                cmd += ["--threads", str(threads)]
            t0 = time.perf_counter()
            print(f"[bench] {name} N={n} ...", flush=True)
            try:
                env = dict(os.environ)
                if mmap_threshold:
                    env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
                proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                                      timeout=timeout, env=env)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode == 0 and lines:
                    record = json.loads(lines[-1])
                else:
                    tail = (proc.stderr or "").strip().splitlines()[-3:]
                    record = {"model": name, "n": n, "status": "failed", "returncode": proc.returncode,
                              "reason": " | ".join(tail) or "no output (killed: memory limit?)"}
            except subprocess.TimeoutExpired:
                record = {"model": name, "n": n, "status": "failed",
                          "reason": f"timeout after {timeout:.0f} s"}
            record["wall_s"] = time.perf_counter() - t0
            results["runs"].append(record)
            print(f"[bench] {json.dumps(record)}", flush=True)
            write_json(out, results)
            if record["status"] != "ok":
                break  # stop this model at its first failure
        results["summary"][name] = _summary(results["runs"], name)
        write_json(out, results)
    return results


def _summary(runs: list[dict], name: str) -> dict:
    ok = {r["n"]: r for r in runs if r["model"] == name and r["status"] == "ok"}
    summary: dict = {"sizes_ok": sorted(ok)}
    if 10_000 in ok and 100_000 in ok:
        ratio = ok[100_000]["median_s"] / ok[10_000]["median_s"]
        summary["time_ratio_100k_over_10k"] = ratio
        summary["time_ratio_goal_met"] = ratio <= 12
    if 100_000 in ok:
        summary["peak_minus_input_mb_100k"] = ok[100_000]["peak_minus_input_mb"]
        summary["memory_goal_met"] = ok[100_000]["peak_minus_input_mb"] < 2048
        summary["ratio_to_projection_100k"] = ok[100_000]["ratio_to_projection"]
    failed = [r for r in runs if r["model"] == name and r["status"] != "ok"]
    if failed:
        summary["first_failure"] = {"n": failed[0]["n"], "reason": failed[0]["reason"]}
    return summary



def main(argv: list[str] | None = None) -> None:
    from common import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["persam", "abmil", "self_attention", "dense"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1_000, 10_000, 100_000])
    parser.add_argument("--mem-limit-gb", type=float, default=8.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per (model, N) subprocess")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--malloc-mmap-threshold", type=int, default=131072,
                        help="MALLOC_MMAP_THRESHOLD_ for the workers (0 = glibc default); "
                             "see the module docstring")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--combine", nargs="+", type=Path, default=None,
                        help="merge the runs of these JSON files (e.g. two invocations) into --out and exit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.combine:
        merged: dict = {"setup": [], "runs": [], "skipped": [], "summary": {}}
        for path in args.combine:
            part = json.loads(path.read_text())
            merged["setup"].append(part["setup"])
            for key in ("runs", "skipped"):
                merged[key] += part[key]
            merged["summary"].update(part["summary"])
        write_json(args.out, merged)
        return
    if args.worker:
        _limit_memory(args.mem_limit_gb)
        print(json.dumps(worker(args.worker, args.n, args.warmup, args.repeats, args.threads)), flush=True)
        return
    results = run(args.models, args.sizes, mem_limit_gb=args.mem_limit_gb, timeout=args.timeout,
                  warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                  mmap_threshold=args.malloc_mmap_threshold, out=args.out)
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
