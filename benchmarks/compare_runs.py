"""Paired per-fold difference of one model between two runs of the same cross-validated benchmark.

Two runs of ``bench_real_gse7390.py`` (or ``bench_real_mimic.py``) on the same splits, e.g. the library
default and ``--persam-kwargs`` of an earlier variant, give one fold result each per split; this prints the
mean difference (first run minus second) over the splits both ran, its 95% t-interval (optimistic: repeated
k-fold folds overlap) and on how many splits the first run is better.

    python benchmarks/compare_runs.py benchmarks/out/real_gse7390.json \
        benchmarks/out/real_gse7390_persam_gated.json --model persam
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import paired_difference


def compare(first: dict, second: dict, *, model: str, metric: str) -> dict:
    a = {r["split"]: r[metric] for r in first["folds"][model]}
    b = {r["split"]: r[metric] for r in second["folds"][model]}
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"the two runs share no split of {model!r}")
    return {"model": model, "metric": metric, "splits": len(shared),
            "first_mean": sum(a[s] for s in shared) / len(shared),
            "second_mean": sum(b[s] for s in shared) / len(shared),
            "first_minus_second": paired_difference([a[s] for s in shared], [b[s] for s in shared])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--model", default="persam")
    parser.add_argument("--metric", default="c_index")
    args = parser.parse_args()
    result = compare(json.loads(args.first.read_text()), json.loads(args.second.read_text()),
                     model=args.model, metric=args.metric)
    d = result["first_minus_second"]
    print(json.dumps(result, indent=2))
    print(f"{args.model} {args.metric}: {result['first_mean']:.3f} vs {result['second_mean']:.3f}, "
          f"difference {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], "
          f"first better on {d['wins']} of {d['n']} splits")


if __name__ == "__main__":
    main()
