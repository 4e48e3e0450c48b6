"""The user's prediction path against the network's own forward and the floor, on one huge bag.

Setup (issue 16): a ``FusionModel(aggregator="persam" | "abmil")`` with images (D = 1,024 feature bags) and
10 clinical variables, fitted for one epoch on a small synthetic cohort and saved; then, per case, a fresh
subprocess loads it (``FusionModel.load``) and predicts one sample whose bag has N patches:

- ``resident``: the bag is an in-memory float32 ``[N, 1024]`` array (N = 10,000 and 100,000);
- ``mmap``: the bag is a 200,000 x 1,024 ``.npy`` file (``ImageBags.from_features({"s": path})``, i.e.
  memory-mapped), never loaded by the benchmark before prediction.

Per case the JSON records (``repeats`` timed calls after one warm-up, fastest and median):
``predict_s`` = ``model.predict_proba(cohort)``; ``network_s`` = the fitted network's own forward
(``net(batch)`` under ``no_grad``, eval mode) on the batch the loader makes, input already in memory;
``floor_s`` = a bare ``Linear(1024 -> d_model)`` over the bag. Memory: ``peak_beyond_input_mb`` = the peak
resident set (``VmHWM``) during one ``predict_proba`` minus the resident set just before it (after imports,
the loaded model and, for ``resident``, the input; the peak is reset through ``/proc/self/clear_refs``).
Workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` so that the peak measures live buffers, not freed heap.

Goals: ``predict / network <= 1.25`` at 100k; peak beyond the input <= 150 MB at 100k and <= 200 MB for the
200k memory-mapped bag; ``t(100k) / t(10k) <= 11`` for predict. Time ratios are noisy on a shared machine
(medians are reported beside the fastest); memory figures are not.

    python benchmarks/bench_predict_path.py                    # cpu, 1 thread -> out/predict_path.json
    python benchmarks/bench_predict_path.py --device cuda --autocast bf16 \
        --out benchmarks/out/predict_path_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

D_IN, N_CLINICAL = 1024, 10
OUT = Path(__file__).resolve().parent / "out" / "predict_path.json"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak resident set to the current one
        f.write("5")


def _clinical(ids: list[str], seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.standard_normal((len(ids), N_CLINICAL)), index=ids,
                        columns=[f"c{k}" for k in range(N_CLINICAL)])


def fit_models(folder: Path, aggregators: list[str]) -> dict[str, str]:
    """Fit and save one small model per aggregator (one epoch: the weights' values do not matter here)."""
    import numpy as np
    import pandas as pd
    from clinfuse.datasets import Cohort, ImageBags
    from clinfuse.fusion import FusionModel

    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(24)]
    bags = {s: rng.standard_normal((64, D_IN)).astype(np.float32) for s in ids}
    labels = pd.Series(["a", "b"] * 12, index=ids)
    cohort = Cohort(clinical=_clinical(ids, 1), images=ImageBags.from_features(bags), labels=labels)
    paths = {}
    for agg in aggregators:
        model = FusionModel(task="classification", aggregator=agg, max_epochs=1, seed=0)
        model.fit(cohort)
        paths[agg] = str(model.save(folder / agg))
    return paths


def _times(fn, repeats: int, sync) -> list[float]:
    fn()  # warm-up
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from clinfuse.datasets import Cohort, ImageBags
    from clinfuse.datasets.loading import CohortDataset, collate_samples
    from clinfuse.fusion import FusionModel

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if args.autocast == "bf16"
                else contextlib.nullcontext())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = FusionModel.load(args.model)
    n = args.n
    if args.case == "mmap":
        bag = args.bag  # a path: ImageBags memory-maps the .npy header, reads rows on demand
    else:
        rng = np.random.default_rng(n)
        bag = np.empty((n, D_IN), dtype=np.float32)
        for start in range(0, n, 8192):  # in chunks: no float64 temporary of the whole bag
            stop = min(start + 8192, n)
            bag[start:stop] = rng.standard_normal((stop - start, D_IN), dtype=np.float32)
    cohort = Cohort(clinical=_clinical(["s"], 2), images=ImageBags.from_features({"s": bag}))
    predict_kw = {}
    import inspect

    if device.type != "cpu" and "device" in inspect.signature(model.predict_proba).parameters:
        predict_kw["device"] = str(device)
    predict_device = predict_kw.get("device", "cpu")

    def predict():
        with autocast:
            return model.predict_proba(cohort, **predict_kw)

    # memory first, in a clean state: one predict_proba call
    import gc

    gc.collect()
    before_kb = _status_kb("VmRSS")
    _reset_peak()
    proba = predict()
    peak_kb = _status_kb("VmHWM")
    record = {"aggregator": args.aggregator, "case": args.case, "n": n, "device": str(device),
              "predict_device": predict_device, "autocast": args.autocast, "threads": torch.get_num_threads(),
              "rss_before_mb": before_kb / 1024, "peak_rss_mb": peak_kb / 1024,
              "peak_beyond_input_mb": (peak_kb - before_kb) / 1024, "proba": proba.to_numpy().tolist()}
    record["predict_s"] = _times(predict, args.repeats, sync)
    if args.case == "resident":
        net = model._network_for_inference().to(device)
        batch = collate_samples([CohortDataset(cohort, model.preprocessor_)[0]]).to(device)
        x = batch.modalities["images"].tensors["features"]
        floor = torch.nn.Linear(D_IN, model.d_model).to(device)

        def network():
            with torch.no_grad(), autocast:
                return net(batch).outputs

        def bare():
            with torch.no_grad(), autocast:
                return floor(x)

        record["network_s"] = _times(network, args.repeats, sync)
        record["floor_s"] = _times(bare, args.repeats, sync)
        with torch.no_grad(), autocast:
            out = torch.softmax(net(batch).outputs.float(), dim=-1).cpu().numpy()
        record["network_matches_predict"] = bool(np.allclose(out, proba.to_numpy(), atol=1e-5))
        if predict_device == "cpu" and device.type != "cpu":
            record["note"] = "predict_proba has no device argument here: it ran on the CPU"
    for key in ("predict_s", "network_s", "floor_s"):
        if key in record:
            record[key.replace("_s", "_min_s")] = min(record[key])
            record[key.replace("_s", "_median_s")] = statistics.median(record[key])
    if "network_s" in record:
        for stat in ("min", "median"):
            record[f"predict_over_network_{stat}"] = record[f"predict_{stat}_s"] / record[f"network_{stat}_s"]
            record[f"network_over_floor_{stat}"] = record[f"network_{stat}_s"] / record[f"floor_{stat}_s"]
            record[f"predict_over_floor_{stat}"] = record[f"predict_{stat}_s"] / record[f"floor_{stat}_s"]
    return record



def _summary(runs: list[dict]) -> dict:
    out = {}
    for agg in sorted({r["aggregator"] for r in runs}):
        mine = {(r["case"], r["n"]): r for r in runs if r["aggregator"] == agg and "error" not in r}
        s: dict = {}
        big, small, mm = mine.get(("resident", 100_000)), mine.get(("resident", 10_000)), None
        mm = next((r for (case, _), r in mine.items() if case == "mmap"), None)
        if big:
            s["predict_over_network_100k_min"] = big["predict_over_network_min"]
            s["predict_over_network_100k_median"] = big["predict_over_network_median"]
            s["network_over_floor_100k_median"] = big["network_over_floor_median"]
            s["predict_over_network_goal_met"] = big["predict_over_network_median"] <= 1.25
            s["peak_beyond_input_mb_100k"] = big["peak_beyond_input_mb"]
            s["memory_100k_goal_met"] = big["peak_beyond_input_mb"] <= 150
        if big and small:
            for stat in ("min", "median"):
                s[f"t100k_over_t10k_{stat}"] = big[f"predict_{stat}_s"] / small[f"predict_{stat}_s"]
            s["scaling_goal_met"] = s["t100k_over_t10k_median"] <= 11
        if mm:
            s["mmap_n"] = mm["n"]
            s["peak_beyond_input_mb_mmap"] = mm["peak_beyond_input_mb"]
            s["memory_mmap_goal_met"] = mm["peak_beyond_input_mb"] <= 200
            s["mmap_predict_median_s"] = mm["predict_median_s"]
        out[agg] = s
    return out


def main(argv: list[str] | None = None) -> None:
    from common import add_device_args, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--aggregators", nargs="+", default=["persam", "abmil"])
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000], help="resident bag sizes")
    p.add_argument("--mmap-size", type=int, default=200_000, help="rows of the memory-mapped bag (0: none)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    add_device_args(p)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per case subprocess")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--aggregator", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--bag", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    results: dict = {"command": " ".join([sys.executable, *sys.argv]),
                     "setup": {"D": D_IN, "clinical": N_CLINICAL, "repeats": args.repeats,
                               "threads": args.threads, "device": args.device, "autocast": args.autocast,
                               "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                               "malloc_mmap_threshold": 131072},
                     "runs": [], "summary": {}}
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        folder = Path(tmp)
        models = fit_models(folder, args.aggregators)
        bag_path = None
        if args.mmap_size:
            bag_path = folder / "bag.npy"
            mm = np.lib.format.open_memmap(bag_path, mode="w+", dtype=np.float32,
                                           shape=(args.mmap_size, D_IN))
            rng = np.random.default_rng(7)
            for start in range(0, args.mmap_size, 8192):
                stop = min(start + 8192, args.mmap_size)
                mm[start:stop] = rng.standard_normal((stop - start, D_IN), dtype=np.float32)
            mm.flush()
            del mm
        cases = [("resident", n) for n in sorted(args.sizes)]
        if bag_path is not None:
            cases.append(("mmap", args.mmap_size))
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(args.threads)}
        for agg in args.aggregators:
            for case, n in cases:
                cmd = [sys.executable, __file__, "--worker", "--model", models[agg], "--aggregator", agg,
                       "--case", case, "--n", str(n), "--repeats", str(args.repeats), "--threads",
                       str(args.threads), "--device", args.device, "--autocast", args.autocast]
                if case == "mmap":
                    cmd += ["--bag", str(bag_path)]
                print(f"[bench] {agg} {case} N={n} ...", flush=True)
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env,
                                          check=False)
                    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                    record = (json.loads(lines[-1]) if proc.returncode == 0 and lines else
                              {"aggregator": agg, "case": case, "n": n,
                               "error": " | ".join(proc.stderr.strip().splitlines()[-3:])})
                except subprocess.TimeoutExpired:
                    record = {"aggregator": agg, "case": case, "n": n, "error": f"timeout {args.timeout} s"}
                record.pop("proba", None)
                results["runs"].append(record)
                print(f"[bench] {json.dumps(record)}", flush=True)
                results["summary"] = _summary(results["runs"])
                write_json(args.out, results)
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
