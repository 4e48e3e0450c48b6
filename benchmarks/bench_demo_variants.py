"""PersAM's default vs its variants on the demo's four-modality synthetic cohort: held-out AUC and the
class-route gate.

The demo cohort (``clinfuse demo``: clinical, genes, image bags and events; images are the instances) carries
signal in every modality, so it shows what the default's modality logit terms (clinical record, genes,
events -> outputs, linearly) add to the previous default (``modality_logits=False``: those modalities reach
the head only through the class route, which starts closed), and how both compare with the first default
(``encode_instances=True``, no gate) and an open route (``gate_class_route=False``). Same recipe as the
demo (``DEMO_SIZES["default"]``, ``demo_model_params``), one fit per (variant, seed).

    python benchmarks/bench_demo_variants.py --seeds 0 1 2 3 4      # -> benchmarks/out/demo_variants.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

VARIANTS = {"default": {}, "gated (previous default, no modality logits)": {"modality_logits": False},
            "encoded (first default)": {"encode_instances": True, "gate_class_route": False,
                                        "modality_logits": False},
            "open route (no gate)": {"gate_class_route": False}}


def run(kwargs: dict, seed: int) -> dict:
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.commands import DEMO_SIZES, demo_cohort, demo_model_params

    size = DEMO_SIZES["default"]
    _, train, test, _ = demo_cohort(size, seed=seed)
    t0 = time.perf_counter()
    model = FusionModel(**demo_model_params(size, seed=seed), aggregator_kwargs=kwargs).fit(train)
    gate = model.network_.aggregator.class_route_gate
    return {"seed": seed, "test_auc": round(float(model.score(test)), 4),
            "gate": None if gate is None else round(float(gate.item()), 5),
            "fit_seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "demo_variants.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {"command": "python benchmarks/bench_demo_variants.py " + " ".join(sys.argv[1:]),
                     "variants": {name: {"aggregator_kwargs": kw, "runs": []}
                                  for name, kw in VARIANTS.items()}}
    for seed in args.seeds:
        for name, kw in VARIANTS.items():
            r = run(kw, seed)
            results["variants"][name]["runs"].append(r)
            print(name, json.dumps(r), flush=True)
    default = {r["seed"]: r["test_auc"] for r in results["variants"]["default"]["runs"]}
    for entry in results["variants"].values():
        entry["median_test_auc"] = float(np.median([r["test_auc"] for r in entry["runs"]]))
        # paired by seed (same cohort and split): the default minus this variant
        diffs = [default[r["seed"]] - r["test_auc"] for r in entry["runs"]]
        entry["default_minus_this"] = {"mean": round(float(np.mean(diffs)), 4),
                                       "default_better_on":
                                           f"{sum(d > 0 for d in diffs)} of {len(diffs)} seeds"}
    print(f"wrote {write_json(Path(args.out), results)}")


if __name__ == "__main__":
    main()
