"""Shared helpers of the real-data benchmarks (``bench_real_*.py``): arguments, provenance, statistics,
output.

Every real-data script writes one JSON file to ``benchmarks/out/<name>.json`` holding the command line, the
package versions, the machine's thread setting, per-fold numbers for every model, wall times and a
summary; the JSON is written atomically (temporary file + ``os.replace``) so an interrupted run never
leaves half a file. Statistics here are deliberately plain: a mean, a standard deviation, and a paired
t-interval over folds (which is optimistic when folds share training samples; the scripts say so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from clinfuse.datasets.statistics import to_jsonable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"  # the shared checkout of the real cohorts (../shared/data)
OUT_DIR = Path(__file__).resolve().parent / "out"
PACKAGES = ("clinfuse", "torch", "pytorch-lightning", "lifelines", "scikit-learn", "numpy",
            "pandas", "anndata")


def base_parser(description: str, *, data_default: Path) -> argparse.ArgumentParser:
    """Arguments every real-data script takes: ``--quick``, ``--threads``, ``--data``, ``--out``,
    ``--device`` and ``--autocast`` (:func:`add_device_args`)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: few folds and epochs; numbers are meaningless, only checks the pipeline")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    p.add_argument("--data", type=Path, default=data_default, help="path of the cohort's files")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: benchmarks/out/<name>.json)")
    add_device_args(p)
    return p


DEVICES = ("cpu", "cuda")
AUTOCAST = {"none": None, "bf16": "bfloat16"}


def add_device_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--device cpu|cuda`` (where the networks run) and ``--autocast none|bf16`` (mixed precision)."""
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where the networks run (cuda: the first GPU; an error if there is none)")
    parser.add_argument("--autocast", choices=tuple(AUTOCAST), default="none",
                        help="torch.autocast dtype around the timed calls (bf16 runs on CPUs too)")
    return parser


def device_of(args: argparse.Namespace) -> Any:
    """The ``torch.device`` of ``--device``; ``SystemExit`` with the reason when CUDA is asked for but
    absent."""
    import torch

    name = getattr(args, "device", "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return torch.device(name)


def accelerator_of(args: argparse.Namespace) -> str:
    """``FusionModel(accelerator=...)`` for ``--device`` (Lightning's names)."""
    return "gpu" if device_of(args).type == "cuda" else "cpu"


def autocast(args: argparse.Namespace):
    """A context manager: ``torch.autocast`` on ``--device`` with the ``--autocast`` dtype, or nothing."""
    import contextlib

    import torch

    dtype = AUTOCAST[getattr(args, "autocast", "none")]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_of(args).type, dtype=getattr(torch, dtype))


def synchronize(args: argparse.Namespace) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it (a no-op on the CPU)."""
    import torch

    if device_of(args).type == "cuda":
        torch.cuda.synchronize()


def device_info(args: argparse.Namespace) -> dict[str, Any]:
    """What to store with a result: the device, its name and the autocast dtype."""
    import torch

    device = device_of(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": device.type, "device_name": name,
            "autocast": AUTOCAST[getattr(args, "autocast", "none")]}


def setup(threads: int) -> None:
    """Bounded, quiet, reproducible: torch threads, no Lightning chatter."""
    import logging
    import warnings

    import torch

    torch.set_num_threads(max(int(threads), 1))
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state() -> dict[str, Any]:
    """Commit of the checkout and the library files with uncommitted changes (None outside a git tree)."""
    import subprocess

    def run(*cmd: str) -> str | None:
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20,
                                  check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    head = run("git", "rev-parse", "HEAD")
    dirty = run("git", "status", "--porcelain", "--", "datasets", "encoders", "fusion")
    return {"commit": head.strip() if head else None,
            "dirty_library_files": None if dirty is None else [ln[3:] for ln in dirty.splitlines()]}


def provenance(args: argparse.Namespace) -> dict[str, Any]:
    """What to store with every result: the exact command, versions, git state, threads, start time (UTC)."""
    import torch

    cmd = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    return {"command": cmd, "argv": sys.argv, "versions": versions(), "git": git_state(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "quick": bool(getattr(args, "quick", False)), **device_info(args),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


@contextmanager
def timer(store: dict[str, Any], key: str = "seconds"):
    """``with timer(row): ...`` stores the block's wall time (s) in ``row[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        store[key] = round(time.perf_counter() - t0, 3)


def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t quantile (scipy when available; it is, via scikit-learn)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def paired_difference(model: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Mean per-fold difference ``model - reference`` with a 95% t-interval over the folds.

    The folds of repeated k-fold share training samples (and each sample is tested once per repeat), so the
    differences are not independent and the interval is narrower than an honest one (optimistic).
    """
    a, b = np.asarray(model, dtype=float), np.asarray(reference, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = int(d.size)
    if n < 2:
        return {"mean": float(d.mean()) if n else math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n,
                "wins": int((d > 0).sum())}
    half = t_quantile_975(n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return {"mean": float(d.mean()), "sd": float(d.std(ddof=1)), "ci_low": float(d.mean() - half),
            "ci_high": float(d.mean() + half), "n": n, "wins": int((d > 0).sum())}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (ddof=1), min and max of per-fold values (NaN folds are counted, not used)."""
    v = np.asarray(values, dtype=float)
    f = v[np.isfinite(v)]
    if f.size == 0:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0,
                "n_nan": int(v.size)}
    return {"mean": float(f.mean()), "sd": float(f.std(ddof=1)) if f.size > 1 else math.nan,
            "min": float(f.min()), "max": float(f.max()), "n": int(f.size), "n_nan": int(v.size - f.size)}


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, default=to_jsonable, allow_nan=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fmt(x: float, digits: int = 3) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def run_folds(name: str, splits: Sequence[tuple[list[str], list[str]]],
              score_fold: Callable[[list[str], list[str]], dict[str, Any]], *, log: bool = True,
              after_fold: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Run ``score_fold(train_ids, test_ids)`` on every split; each row gets its index and wall time.
    ``after_fold(rows_so_far)`` runs after every fold (e.g. to save partial results of a slow model)."""
    rows: list[dict] = []
    for i, (train_ids, test_ids) in enumerate(splits):
        row: dict[str, Any] = {"split": i}
        with timer(row):
            row.update(score_fold(list(train_ids), list(test_ids)))
        rows.append(row)
        if log:
            metric = {k: v for k, v in row.items() if k in ("c_index", "auc")}
            print(f"  {name:<24} split {i:>2}: {metric} ({row['seconds']:.1f} s)", flush=True)
        if after_fold is not None:
            after_fold(rows)
    return rows


def summarise(results: dict[str, list[dict]], *, metric: str, reference: str) -> dict[str, dict]:
    """Per model: spread of ``metric`` over its folds, wall times and the paired difference from
    ``reference`` on the splits both ran (rows are matched by their ``split`` index)."""
    ref = {r["split"]: r[metric] for r in results.get(reference, [])}
    out = {}
    for name, rows in results.items():
        values = [r[metric] for r in rows]
        entry = {metric: spread(values), "splits": [r["split"] for r in rows],
                 "total_seconds": round(sum(r["seconds"] for r in rows), 1),
                 "seconds_per_fold": round(float(np.mean([r["seconds"] for r in rows])), 2)}
        if name != reference and ref:
            shared = [r for r in rows if r["split"] in ref]
            entry["diff_vs_" + reference] = paired_difference([r[metric] for r in shared],
                                                              [ref[r["split"]] for r in shared])
        out[name] = entry
    return out


def summary_table(summary: dict[str, dict], *, metric: str, reference: str, label: str,
                  n_per_repeat: int) -> str:
    """Markdown: model, repeats x folds, mean, sd, min-max, paired difference [95% t-CI], wins, s / fold."""
    rows = []
    for name, s in summary.items():
        c, d = s[metric], s.get("diff_vs_" + reference)
        diff = "(reference)" if d is None else f"{fmt(d['mean'])} [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]"
        n = len(s["splits"])
        shape = f"{n // n_per_repeat}x{n_per_repeat}" if n % n_per_repeat == 0 else f"{n} folds"
        rows.append([name, shape, fmt(c["mean"]), fmt(c["sd"]), f"{fmt(c['min'])}-{fmt(c['max'])}", diff,
                     "" if d is None else f"{d['wins']}/{d['n']}", f"{s['seconds_per_fold']:.1f}"])
    return markdown_table(["model", "repeats x folds", f"mean {metric}", "sd over folds", "min-max",
                           f"paired diff vs {label} [95% t-CI]", "folds better", "s / fold"], rows)
