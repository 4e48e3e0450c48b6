"""Streaming ``explain`` on a large cohort: peak memory across cohort sizes, and its cost relative to
``predict``, with and without the exact modality contributions.

Goals: explaining 1,000 samples with 10,000-patch bags (D = 128, memory-mapped ``.npy`` files) to Parquet
keeps peak memory flat across 100, 300 and 1,000 samples (issue 6); ``explain`` (every kind) costs at most
1.2x ``predict`` and ``explain(..., contributions=True)`` (the exact Shapley values of the modalities in the
same pass) at most 2x (issue 16).

Setup. ``--workdir`` (default ``/tmp/clinfuse_bench_explain``, reused when its ``data.json`` matches) holds
N ``.npy`` bags of ``patches x dim`` float32 (written in chunks with numpy), a clinical table (3 numeric and
1 categorical variable) and random binary labels. A small PersAM ``FusionModel`` (d_model 32, 2 epochs,
max_patches 512, the first 50 samples) is trained once and saved in the workdir.

Measurement. For each n, a fresh subprocess loads the model, builds the cohort of the first n samples
(``ImageBags.from_features`` on the ``.npy`` paths: memory-mapped, read per batch), then times
``predict_proba(cohort)`` and ``explain(cohort, out=file.parquet)`` (all kinds). A second fresh subprocess
times ``explain(..., kinds=KINDS)`` only. Before each child the parent reads the n bag files once, so both
timings see a warm page cache (the data was generated on this machine and fits in RAM; we measure the
library, not the disk).

Memory, per child:
* ``ru_maxrss_mb``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end (the kernel's peak RSS).
  It counts *file-backed* resident pages too: the memory-mapped bag pages that a batch touches while it is
  mapped, and the Python/torch shared libraries. It is the number a user's job scheduler sees.
* ``peak_anon_mb`` / ``peak_file_mb``: peaks of ``RssAnon`` (heap: arrays, tensors, frames) and ``RssFile``
  (mapped files) from ``/proc/self/status``, sampled every 5 ms by a background thread. Sampling can miss
  a spike shorter than the interval, so these are lower bounds; ``ru_maxrss`` is exact.
* ``rss_before_mb``: RSS after imports, model load and cohort construction, before any work, so that
  ``growth = peak - before`` isolates what predicting/explaining allocates.
"Flat" means the peak at the largest n is within 20% of the peak at the smallest n (``flat_within``).

Time: wall clock of each call (``time.perf_counter``, after ``torch.cuda.synchronize`` on a GPU) and the
process CPU time (``time.process_time``: every thread, so the background Parquet writer's work counts).
With ``--repeats R`` the child runs predict, explain, explain+contributions back to back R times;
``explain_over_predict`` (and ``contributions_over_predict``) is the median over the repeats of the ratio
within a repeat, ``*_range`` its min and max, ``*_cpu`` the same for CPU time: interleaving matters because
the machine is shared (2 cores; see ``load_average``) and its load drifts by several times within minutes.
``--threads`` (default 1) sets torch's threads in the children; ``--device cuda`` asks the library for the
GPU (``accelerator="gpu"``) and ``--autocast bf16`` wraps every timed call in ``torch.autocast``.
``--profile`` runs one extra child (smallest n) under
cProfile; its times are not used in the summary (cProfile slows Python-heavy code more than torch kernels).

Usage::

    python benchmarks/bench_explain.py                 # full: N = 1,000 x 10,000 x 128 (about 5 GB on disk)
    python benchmarks/bench_explain.py --quick         # smoke: n in (10, 30), 2,000-patch bags
    python benchmarks/bench_explain.py --device cuda --autocast bf16   # on a GPU, in bfloat16
    python benchmarks/bench_explain.py --profile       # also cProfile the explain of the smallest n
    python benchmarks/bench_explain.py --sizes 20 60 200 --repeats 1 --baseline before.json  # with a baseline

Writes ``benchmarks/out/explain.json`` (``explain_quick.json`` with ``--quick``) atomically and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
from common import add_device_args, device_info

OUT_DIR = Path(__file__).resolve().parent / "out"
KINDS = ["modality", "feature", "explanatory"]  # the restricted export: no class-wise/exploratory patch rows
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------- data
def make_data(workdir: Path, *, n: int, patches: int, dim: int, seed: int = 0) -> dict:
    """Write ``n`` bags ``[patches, dim]`` float32, ``clinical.csv`` and ``labels.csv`` (reused if
    present)."""
    import pandas as pd

    spec = {"n": n, "patches": patches, "dim": dim, "seed": seed}
    marker = workdir / "data.json"
    if marker.exists():
        have = json.loads(marker.read_text())
        if {**have, "n": n} == spec and have["n"] >= n:  # a larger data set of the same bags serves
            return have
    bags = workdir / "bags"
    bags.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    chunk = 2_500  # rows per write: bounded memory while generating
    t0 = time.perf_counter()
    for i in range(n):
        arr = np.lib.format.open_memmap(bags / f"S{i:04d}.npy", mode="w+", dtype=np.float32,
                                        shape=(patches, dim))
        for start in range(0, patches, chunk):
            block = rng.standard_normal((min(chunk, patches - start), dim), dtype=np.float32)
            block[:, : dim // 8] += 0.5 * labels[i]  # a weak signal so training has something to learn
            arr[start:start + len(block)] = block
        arr.flush()
        del arr
    ids = [f"S{i:04d}" for i in range(n)]
    clinical = pd.DataFrame({
        "age": rng.normal(60, 10, n).round(1), "stage": rng.integers(1, 5, n).astype(float),
        "marker": rng.normal(0, 1, n) + labels, "site": rng.choice(["breast", "lung", "colon"], n),
    }, index=pd.Index(ids, name="sample_id"))
    clinical.to_csv(workdir / "clinical.csv")
    label = pd.Series(np.where(labels == 1, "high", "low"), index=clinical.index, name="label")
    label.to_csv(workdir / "labels.csv")
    marker.write_text(json.dumps(spec))
    print(f"wrote {n} bags of {patches} x {dim} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return spec


def build_cohort(workdir: Path, n: int):
    """The cohort of the first ``n`` samples; bags are ``.npy`` paths (memory-mapped when read)."""
    import pandas as pd
    from clinfuse.datasets import Cohort, ImageBags

    clinical = pd.read_csv(workdir / "clinical.csv", index_col=0).iloc[:n]
    labels = pd.read_csv(workdir / "labels.csv", index_col=0)["label"].iloc[:n]
    ids = list(clinical.index.astype(str))
    images = ImageBags.from_features({s: workdir / "bags" / f"{s}.npy" for s in ids})
    return Cohort(clinical=clinical, images=images, labels=labels, name=f"bench{n}")


def train_model(workdir: Path, *, n_train: int = 50) -> Path:
    path = workdir / "model"
    if (path / "done").exists():
        return path
    import torch
    from clinfuse.fusion import FusionModel

    torch.manual_seed(0)
    model = FusionModel(task="classification", aggregator="persam", d_model=32, n_heads=2, n_layers=1,
                        max_epochs=2, batch_size=8, max_patches=512, validation_fraction=0.0,
                        early_stopping_patience=None, verbose=False, seed=0)
    t0 = time.perf_counter()
    model.fit(build_cohort(workdir, n_train))
    model.save(path)
    (path / "done").write_text("")
    print(f"trained on {n_train} samples in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return path


def warm_cache(workdir: Path, n: int) -> None:
    """Read the first ``n`` bag files once so every child starts from the same (warm) page cache."""
    for i in range(n):
        with open(workdir / "bags" / f"S{i:04d}.npy", "rb") as fh:
            while fh.read(16 * MB):
                pass


# ------------------------------------------------------------------------------------------------ child
def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0])  # kB
    return out


class MemorySampler:
    """Peaks of RssAnon / RssFile / VmRSS sampled every ``interval`` seconds in a daemon thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, v in _status().items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def child(workdir: Path, n: int, mode: str, out: Path, profile: Path | None, repeats: int = 1,
          args: argparse.Namespace | None = None) -> dict:
    import pyarrow.parquet as pq
    import torch
    from clinfuse.fusion import FusionModel
    from common import accelerator_of, autocast, device_info, synchronize

    torch.set_num_threads(max(int(getattr(args, "threads", 1) or 1), 1))
    model = FusionModel.load(workdir / "model")
    model.set_params(accelerator=accelerator_of(args))  # where the library puts the network to predict
    cohort = build_cohort(workdir, n)
    before = _status()
    result: dict = {"n": n, "mode": mode, "threads": torch.get_num_threads(), **device_info(args),
                    "rss_before_mb": round(before["VmRSS"] / 1024, 1),
                    "anon_before_mb": round(before["RssAnon"] / 1024, 1)}
    kinds = KINDS if mode == "kinds" else None
    calls = {"predict": lambda: model.predict_proba(cohort),
             "explain": lambda: model.explain(cohort, out=out, kinds=kinds),
             "explain_contributions": lambda: model.explain(cohort, out=out, kinds=kinds, contributions=True)}
    if mode == "kinds":
        calls = {"explain": calls["explain"]}
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    rows: dict[str, int] = {}
    with MemorySampler() as sampler:
        for _ in range(repeats):  # interleaved: the machine's load drifts within minutes
            for what, call in calls.items():
                prof = None
                if profile is not None and what == "explain":
                    import cProfile

                    prof = cProfile.Profile()
                    prof.enable()
                t0, c0 = time.perf_counter(), time.process_time()
                with autocast(args):
                    got = call()
                synchronize(args)
                times[what].append(time.perf_counter() - t0)
                cpu[what].append(time.process_time() - c0)  # every thread: the Parquet writer's too
                if prof is not None:
                    prof.disable()
                    prof.dump_stats(profile)
                if what == "predict":
                    assert len(got) == n
                else:
                    meta = pq.ParquetFile(got.path).metadata
                    rows[what] = meta.num_rows
                    result["row_groups"], result["file_mb"] = meta.num_row_groups, round(
                        out.stat().st_size / MB, 1)
    for what, ts in times.items():
        result[f"{what}_s"] = round(float(np.median(ts)), 3)
        result[f"{what}_cpu_s"] = round(float(np.median(cpu[what])), 3)
        result[f"{what}_times_s"] = [round(t, 3) for t in ts]
    result.update({
        "kinds": kinds or model.attention_kinds, "rows": rows.get("explain"),
        "rows_with_contributions": rows.get("explain_contributions"),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_sampled_mb": round(sampler.peak["VmRSS"] / 1024, 1),
        "peak_anon_mb": round(sampler.peak["RssAnon"] / 1024, 1),
        "peak_file_mb": round(sampler.peak["RssFile"] / 1024, 1),
    })
    result["anon_growth_mb"] = round(result["peak_anon_mb"] - result["anon_before_mb"], 1)
    if "predict" in times:
        for what in ("explain", "explain_contributions"):
            # per repeat (each pair ran back to back), then the median and range of those ratios
            per = [e / p for e, p in zip(times[what], times["predict"])]
            per_cpu = [e / p for e, p in zip(cpu[what], cpu["predict"])]
            key = what.replace("explain_", "") if what != "explain" else "explain"
            result[f"{key}_over_predict"] = round(float(np.median(per)), 3)
            result[f"{key}_over_predict_range"] = [round(min(per), 3), round(max(per), 3)]
            result[f"{key}_over_predict_cpu"] = round(float(np.median(per_cpu)), 3)
    return result


def run_child(workdir: Path, n: int, mode: str, profile: Path | None, repeats: int = 1,
              args: argparse.Namespace | None = None) -> dict:
    warm_cache(workdir, n)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cmd = [sys.executable, __file__, "--child", "--workdir", str(workdir), "--n", str(n), "--mode", mode,
               "--child-out", str(Path(tmp) / "attention.parquet"), "--repeats", str(repeats),
               "--threads", str(args.threads), "--device", args.device, "--autocast", args.autocast]
        if profile is not None:
            cmd += ["--child-profile", str(profile)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"child n={n} mode={mode} failed:\n{proc.stderr[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["child_wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def _code_version() -> dict:
    """Where ``clinfuse.fusion`` was imported from and a hash of the code measured (for before/after runs)."""
    import hashlib

    import clinfuse.fusion

    fusion = Path(clinfuse.fusion.__file__).resolve().parent
    names = ("explain/table.py", "explain/stream.py", "explain/run.py", "explain/contributions.py",
             "model.py")
    digest = {name: hashlib.sha1((fusion / name).read_bytes()).hexdigest()[:10] for name in names}
    return {"package_root": str(fusion.parent), "sha1": digest}


def _profile_summary(path: Path) -> dict:
    """Seconds spent in the network vs the report (rows + Parquet) in one profiled explain."""
    import pstats

    stats = pstats.Stats(str(path)).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    cum = {}
    for (file, _, name), (_, _, _, ct, _) in stats.items():
        key = f"{Path(file).name}:{name}"
        if key in ("model.py:explain", "model.py:iter_attention", "network.py:forward", "stream.py:write",
                   "table.py:records_to_table", "table.py:records_to_frame", "core.py:write_table"):
            cum[key] = round(max(cum.get(key, 0.0), ct), 3)
    return {"file": str(path), "cumulative_s": cum}


def _baseline(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {"file": str(path), "code": data.get("code"), "summary": data.get("summary"),
            "results": data.get("results"), "load_average": data.get("load_average")}


GOAL_EXPLAIN, GOAL_CONTRIBUTIONS = 1.2, 2.0


def summarise(results: list[dict]) -> dict:
    full = sorted((r for r in results if r["mode"] == "full"), key=lambda r: r["n"])
    lo, hi = full[0], full[-1]
    ratios = {r["n"]: r["explain_over_predict"] for r in full}
    with_contributions = {r["n"]: r["contributions_over_predict"] for r in full}
    return {
        "peak_ru_maxrss_mb": {r["n"]: r["ru_maxrss_mb"] for r in full},
        "peak_anon_mb": {r["n"]: r["peak_anon_mb"] for r in full},
        "flat_within": {"ru_maxrss": round(hi["ru_maxrss_mb"] / lo["ru_maxrss_mb"] - 1, 3),
                        "anon": round(hi["peak_anon_mb"] / lo["peak_anon_mb"] - 1, 3)},
        "explain_over_predict": ratios,
        "explain_over_predict_range": {r["n"]: r["explain_over_predict_range"] for r in full},
        "explain_over_predict_cpu": {r["n"]: r["explain_over_predict_cpu"] for r in full},
        "contributions_over_predict": with_contributions,
        "contributions_over_predict_range": {r["n"]: r["contributions_over_predict_range"] for r in full},
        "contributions_over_predict_cpu": {r["n"]: r["contributions_over_predict_cpu"] for r in full},
        "goal_memory_flat": hi["ru_maxrss_mb"] <= 1.2 * lo["ru_maxrss_mb"],
        "goal_ratio": max(ratios.values()) <= GOAL_EXPLAIN,
        "goal_contributions_ratio": max(with_contributions.values()) <= GOAL_CONTRIBUTIONS,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: n in (10, 30), 2,000-patch bags")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="cohort sizes (default 100 300 1000)")
    ap.add_argument("--patches", type=int, default=None)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--kinds-at", type=int, nargs="*", default=None,
                    help="sizes that also get a kinds= restricted explain child (default: the smallest)")
    ap.add_argument("--profile", action="store_true", help="one extra cProfiled explain child (smallest n)")
    ap.add_argument("--repeats", type=int, default=1, help="predict/explain pairs per child, interleaved")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="an earlier explain.json to embed (before/after)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each child")
    add_device_args(ap)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("full", "kinds"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-profile", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        result = child(args.workdir, args.n, args.mode, args.child_out, args.child_profile, args.repeats,
                       args)
        print(json.dumps(result))
        return

    sizes = args.sizes or ([10, 30] if args.quick else [100, 300, 1000])
    patches = args.patches or (2_000 if args.quick else 10_000)
    scratch = "clinfuse_bench_explain" + ("_quick" if args.quick else "")
    workdir = args.workdir or Path(tempfile.gettempdir()) / scratch
    out = args.out or OUT_DIR / ("explain_quick.json" if args.quick else "explain.json")
    spec = make_data(workdir, n=max(max(sizes), 50), patches=patches, dim=args.dim)
    train_model(workdir)

    results = []
    kinds_at = sizes[:1] if args.kinds_at is None else args.kinds_at
    for n in sizes:
        for mode in ("full", "kinds") if n in kinds_at else ("full",):
            r = run_child(workdir, n, mode, None, args.repeats, args)
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
    profile = None
    if args.profile:
        prof_path = out.with_suffix(f".n{sizes[0]}.prof")
        run_child(workdir, sizes[0], "full", prof_path, 1, args)
        profile = _profile_summary(prof_path)

    report = {
        "benchmark": "FusionModel.explain(cohort, out=.parquet) vs predict_proba on memory-mapped bags",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "code": _code_version(),
        "data": {**spec, "bag_mb": round(spec["patches"] * spec["dim"] * 4 / MB, 2), "workdir": str(workdir)},
        "model": "persam, d_model 32, n_heads 2, 1 layer, batch_size 8, trained 2 epochs on 50 samples",
        "restricted_kinds": KINDS,
        "goal": "peak memory at the largest n within 20% of the smallest; explain <= 1.2x predict; explain "
                "with the exact modality contributions (contributions=True) <= 2x predict",
        "device": device_info(args), "threads": args.threads,
        "repeats": args.repeats,
        "summary": summarise(results),
        "results": results,
        "profile": profile,
        "baseline": None if args.baseline is None else _baseline(args.baseline),
        "load_average": list(os.getloadavg()),
        "machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
