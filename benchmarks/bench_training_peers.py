"""Training at the network's cost: an epoch of ``FusionModel.fit`` against a plain PyTorch loop training
torchmil's ABMIL on the same bags.

Setup (issue 16): a synthetic cohort of ``--patients`` (200) samples, each one bag of ``--patches`` (2,000)
patch features of width 1,024 (images only, so both sides read exactly the same data), the inner 80/20
validation split that ``fit`` makes (the plain loop uses the same split), classification. Two settings:

* ``whole``: batch 1 and whole bags, the usual MIL set-up (``FusionModel(batch_size=1, max_patches=None)``).
* ``defaults``: ``fit``'s defaults (batch 16, 512 patches sampled per bag per epoch); the plain loop samples
  512 patches per bag with ``torch.randperm`` and stacks 16 bags per step.

The plain loop is what a user writes by hand: bags already in memory as tensors, ``torchmil.models.ABMIL``
(``in_shape=(1024,)``), Adam, binary cross-entropy, one validation pass per epoch under ``no_grad`` in the
same batches. ``fit`` is timed per epoch from inside (a Lightning callback added to the Trainer the
estimator builds: from the start of the epoch's training to the end of its validation), so the ratio
compares epochs, not set-up; ``fit_s`` is the whole ``fit`` call. Medians over the epochs after the first
(``--epochs``, default 4: 3 timed epochs per repeat) and over ``--repeats``; ``spread`` is (max - min) /
median of the per-repeat medians. Everything is measured in one process, 1 thread, interleaved per
repeat; on the CPU the clock is the process's CPU time by default (``--clock cpu``; the data loader runs
in the process, no workers), so that the other jobs of a shared machine do not enter the ratio;
``--clock wall`` for elapsed time.

    python benchmarks/bench_training_peers.py                      # writes benchmarks/out/training_peers.json
    python benchmarks/bench_training_peers.py --device cuda --autocast bf16
    python benchmarks/bench_training_peers.py --quick              # smoke run, meaningless numbers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "training_peers.json"
D_IN = 1024
SETTINGS = {"whole": {"batch_size": 1, "max_patches": None},
            "defaults": {"batch_size": 16, "max_patches": 512}}


def autocast(device: str, mode: str):
    import torch

    if mode == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return nullcontext()


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set by main from --clock


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def plain_epochs(bags, labels, train_ids, val_ids, *, batch_size: int, max_patches: int | None, epochs: int,
                 device: str, mode: str, seed: int) -> list[float]:
    """Seconds per epoch (train + validation) of the hand-written torchmil ABMIL loop."""
    import torch
    from torchmil.models import ABMIL

    torch.manual_seed(seed)
    model = ABMIL(in_shape=(D_IN,)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(epochs):
        sync(device)
        start = clock()
        model.train()
        order = [train_ids[i] for i in torch.randperm(len(train_ids), generator=gen).tolist()]
        for s in range(0, len(order), batch_size):
            ids = order[s:s + batch_size]
            xs = []
            for sid in ids:
                x = bags[sid]
                if max_patches is not None and x.shape[0] > max_patches:
                    x = x[torch.randperm(x.shape[0], generator=gen)[:max_patches]]
                xs.append(x)
            x = (xs[0][None] if len(xs) == 1 else torch.stack(xs)).to(device)
            y = labels[ids].to(device)
            with autocast(device, mode):
                logits = model(x).reshape(-1)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        outs = []
        with torch.no_grad():
            for s in range(0, len(val_ids), batch_size):
                ids = val_ids[s:s + batch_size]
                x = (bags[ids[0]][None] if len(ids) == 1 else torch.stack([bags[i] for i in ids])).to(device)
                with autocast(device, mode):
                    outs.append(model(x).reshape(-1).float())
        float(loss_fn(torch.cat(outs), labels[val_ids].to(device)))
        sync(device)
        times.append(clock() - start)
    return times


def fit_epochs(cohort, aggregator: str, *, batch_size: int, max_patches: int | None, epochs: int,
               device: str, mode: str, seed: int) -> tuple[list[float], float]:
    """(seconds per epoch measured inside ``fit``, seconds of the whole ``fit``)."""
    import pytorch_lightning as pl
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion import training as T

    class EpochClock(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, module) -> None:
            sync(device)
            self.start = clock()

        def on_train_epoch_end(self, trainer, module) -> None:  # after the epoch's validation
            sync(device)
            self.times.append(clock() - self.start)

    timer = EpochClock()
    original = T.make_trainer

    def make_trainer(**kwargs):
        trainer = original(**kwargs)
        trainer.callbacks.append(timer)
        if mode == "bf16":
            trainer.strategy.precision_plugin = pl.plugins.precision.MixedPrecision("bf16-mixed", device)
        return trainer

    model = FusionModel(aggregator=aggregator, batch_size=batch_size, max_patches=max_patches,
                        max_epochs=epochs, early_stopping_patience=None, seed=seed, verbose=False,
                        accelerator="gpu" if device == "cuda" else "cpu")
    T.make_trainer = make_trainer
    try:
        start = clock()
        model.fit(cohort)
        total = clock() - start
    finally:
        T.make_trainer = original
    return timer.times, total


def main(argv: list[str] | None = None) -> int:
    from common import add_device_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(p)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--patches", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4, help="epochs per fit; the first is not timed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["persam", "abmil"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--clock", choices=list(CLOCK), default=None,
                   help="cpu: the process's CPU time (default on --device cpu: robust to a shared machine's "
                        "load, everything runs in this one thread); wall: elapsed time (default on cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 24 patients of 256 patches, 2 epochs")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.patients, args.patches, args.epochs, args.repeats = 24, 256, 2, 1

    global clock
    args.clock = args.clock or ("cpu" if args.device == "cpu" else "wall")
    clock = CLOCK[args.clock]

    import torch
    from clinfuse.datasets import make_synthetic_cohort
    from clinfuse.datasets.splits import train_validation_split

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    cohort, _ = make_synthetic_cohort(args.patients, modalities=("images",), n_patches=(args.patches,) * 2,
                                      feature_dim=D_IN, seed=args.seed)
    train_ids, val_ids = (list(map(str, ids)) for ids in train_validation_split(cohort, 0.2, seed=args.seed))
    bags = {sid: torch.from_numpy(cohort.images.load(sid).data) for sid in cohort.sample_ids}
    classes = sorted(set(cohort.labels.tolist()))
    labels = torch.tensor([float(classes.index(v)) for v in cohort.labels.loc[cohort.sample_ids]])
    labels = dict(zip(map(str, cohort.sample_ids), labels.tolist()))

    class Labels:
        def __getitem__(self, ids):
            return torch.tensor([labels[i] for i in ids])

    rows: dict[str, dict] = {}
    for rep in range(args.repeats):
        for setting in args.settings:
            kw = SETTINGS[setting]
            times = plain_epochs(bags, Labels(), train_ids, val_ids, epochs=args.epochs, device=args.device,
                                 mode=args.autocast, seed=args.seed + rep, **kw)
            rows.setdefault(f"{setting}/torchmil_abmil_loop", {"epochs": []})["epochs"].append(times[1:])
            for name in args.models:
                times, total = fit_epochs(cohort, name, epochs=args.epochs, device=args.device,
                                          mode=args.autocast, seed=args.seed + rep, **kw)
                row = rows.setdefault(f"{setting}/{name}", {"epochs": [], "fit_s": []})
                row["epochs"].append(times[1:])
                row["fit_s"].append(total)
            print(f"repeat {rep} {setting} done", file=sys.stderr, flush=True)

    summary: dict[str, dict] = {}
    for key, row in rows.items():
        per_rep = [statistics.median(t) for t in row["epochs"]]
        row["epoch_s"] = statistics.median(per_rep)
        row["spread"] = (max(per_rep) - min(per_rep)) / row["epoch_s"]
    for setting in args.settings:
        base = rows[f"{setting}/torchmil_abmil_loop"]
        for name in args.models:
            row = rows[f"{setting}/{name}"]
            # ratio per repeat (both measured back to back), then the median
            ratios = [statistics.median(a) / statistics.median(b)
                      for a, b in zip(row["epochs"], base["epochs"])]
            row["ratio_to_loop_per_repeat"] = ratios
            row["ratio_to_loop"] = statistics.median(ratios)
            goal = 1.3 if setting == "whole" else 1.1
            summary[f"{setting}/{name}"] = {"ratio_to_loop": row["ratio_to_loop"], "goal": goal,
                                            "met": row["ratio_to_loop"] <= goal, "epoch_s": row["epoch_s"],
                                            "loop_epoch_s": base["epoch_s"], "spread": row["spread"]}
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "torch": torch.__version__, "threads": args.threads, "device": args.device,
              "autocast": args.autocast, "clock": args.clock, "patients": args.patients,
              "patches": args.patches, "epochs": args.epochs, "repeats": args.repeats,
              "n_train": len(train_ids), "n_val": len(val_ids),
              "rows": rows, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, suffix=".tmp", delete=False) as f:
        json.dump(result, f, indent=1)
    os.replace(f.name, args.out)
    for key, s in summary.items():
        print(f"{key:22s} epoch {s['epoch_s']:.3f}s  loop {s['loop_epoch_s']:.3f}s  "
              f"ratio {s['ratio_to_loop']:.2f} "
              f"(goal {s['goal']}, spread {s['spread']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
