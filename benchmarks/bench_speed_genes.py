"""Speed on gene panels: an epoch of the default ``FusionModel`` against a plain two-layer PyTorch MLP.

Cohorts (synthetic, seeded, nothing real): ``make_synthetic_cohort(300, modalities=("clinical",
"genomics"), missing_rate=0, seed=0)`` for each ``n_genes`` in ``--genes`` (default 1,554 and 20,000),
rebuilt without its gene sets (so the genes themselves are the instance tokens, as for a user's RNA-seq
table) and with 6 clinical columns (3 numeric, one with missing values, 2 categorical, 1 noise column),
survival targets (and, with ``--tasks classification``, labels).

Per cohort and task, each of ``--repeats`` repeats runs, in the same process and one after the other:

* ours: ``FusionModel(task=task, max_epochs=E, early_stopping_patience=None, verbose=False, seed=r)``,
  i.e. the library defaults (aggregator ``persam``, gene tokens, ``top_genes=2000``, batch 16, the
  library's inner 80/20 train/validation split) with a fixed number of epochs so that every fit runs E.
  Each epoch (a train pass + a validation pass) is timed by a Lightning callback from
  ``on_train_epoch_start`` to ``on_train_epoch_end`` (which Lightning calls after the epoch's validation);
  the whole ``fit`` is timed too (preprocessing, building, the E epochs, and the final predictions).
* the floor: ``Linear(p, 64) -> ReLU -> Linear(64, n_out)`` trained with Adam (lr 1e-3) on the same
  training and validation samples (the library's ``train_validation_split``), batch 16, shuffled, on the
  standardised inputs (clinical numeric columns median-imputed and standardised, categoricals one-hot,
  every gene standardised; statistics of the training samples); the same loss (discrete-time NLL with
  the library's 4 time bins for survival, cross-entropy for classification); an epoch is a train pass and a
  validation pass (validation loss).

Reported: per repeat the median epoch time over epochs 2..E (the first carries one-off costs), then
the median over repeats; the ratio ours / MLP per repeat (same repeat, same process) and its median;
and, per task, the ratio t(n_genes) / t(1,554) of our median epoch times in this run (``--genes 20``
adds a panel so small that its time is the network's and the training loop's fixed cost).
``--all-genes`` adds a configuration with ``top_genes=None`` (every one of the 20,000 genes a token) to
show that the cost is linear in the number of gene tokens.

Nothing here is tuned: the default's design was chosen by profiling these synthetic cohorts (where the time
goes), and its quality is checked separately on GSE7390 (``bench_real_gse7390.py``).

    python benchmarks/bench_speed_genes.py                 # -> benchmarks/out/speed_genes.json
    python benchmarks/bench_speed_genes.py --quick         # smoke run (150 genes, 2 repeats, 2 epochs)
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import pandas as pd
from common import (
    DATA,
    OUT_DIR,
    accelerator_of,
    autocast,
    base_parser,
    device_of,
    markdown_table,
    provenance,
    setup,
    synchronize,
    write_json,
)

DEVICE = argparse.Namespace(device="cpu", autocast="none")
"""``--device`` / ``--autocast`` of the run (set by ``main``): ours and the MLP both run there."""

N_PATIENTS = 300
CLINICAL = ["marker_status", "biomarker_level", "age", "lab_value", "site", "noise_1"]
CATEGORICAL = {"marker_status": "categorical", "site": "categorical"}


def make_cohort(n_genes: int, task: str, *, seed: int = 0):
    """300 synthetic patients: 6 clinical columns + ``n_genes`` genes (no gene sets) + targets."""
    from clinfuse.datasets import Cohort, make_synthetic_cohort

    c, _ = make_synthetic_cohort(N_PATIENTS, task=task, modalities=("clinical", "genomics"),
                                 n_genes=n_genes, missing_rate=0.0, seed=seed)
    return Cohort(clinical=c.clinical[CLINICAL], clinical_types=CATEGORICAL, genomics=c.genomics,
                  labels=c.labels, survival=c.survival, name=f"speed(n={N_PATIENTS}, genes={n_genes})")


class EpochTimer:
    """Lightning callback: wall time of each epoch (train pass + its validation pass)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self.seconds.append(time.perf_counter() - self._t0)


def fit_ours(cohort, task: str, epochs: int, seed: int, top_genes: Any = "default") -> dict[str, Any]:
    """Fit the default model for ``epochs`` epochs; per-epoch times from a callback added to its Trainer."""
    import pytorch_lightning as pl
    from clinfuse.fusion import FusionModel, training

    timer = EpochTimer()
    make = training.make_trainer

    class Timed(pl.Callback):
        on_train_epoch_start = staticmethod(timer.on_train_epoch_start)
        on_train_epoch_end = staticmethod(timer.on_train_epoch_end)

    def make_timed(**kw: Any) -> pl.Trainer:
        trainer = make(**kw)
        trainer.callbacks.append(Timed())
        return trainer

    kw = {} if top_genes == "default" else {"top_genes": top_genes}
    model = FusionModel(task=task, max_epochs=epochs, early_stopping_patience=None, verbose=False, seed=seed,
                        accelerator=accelerator_of(DEVICE), **kw)
    training.make_trainer = make_timed
    try:
        t0 = time.perf_counter()
        with autocast(DEVICE):
            model.fit(cohort)
        fit_s = time.perf_counter() - t0
    finally:
        training.make_trainer = make
    if len(timer.seconds) != epochs:
        raise RuntimeError(f"timed {len(timer.seconds)} epochs, expected {epochs}")
    schema = model.preprocessor_.schema_
    net = model.network_ if hasattr(model, "network_") else None
    return {"epoch_seconds": [round(s, 4) for s in timer.seconds], "fit_seconds": round(fit_s, 3),
            "gene_tokens": len(schema["genomics"]["genes"]),
            "parameters": None if net is None else int(sum(p.numel() for p in net.parameters())),
            "network": model.network_config_ if hasattr(model, "network_config_") else None}


def _design(cohort, train_ids: list[str], val_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Standardised inputs: clinical (imputed, one-hot) + every gene; statistics from ``train_ids``."""
    clin = cohort.clinical
    parts_tr, parts_va = [], []
    for col in CLINICAL:
        tr, va = clin.loc[train_ids, col], clin.loc[val_ids, col]
        if col in CATEGORICAL:
            levels = sorted(tr.dropna().unique().tolist())
            parts_tr.append(np.stack([(tr == lv).to_numpy(float) for lv in levels], 1))
            parts_va.append(np.stack([(va == lv).to_numpy(float) for lv in levels], 1))
        else:
            med = float(tr.median())
            parts_tr.append(tr.fillna(med).to_numpy(float)[:, None])
            parts_va.append(va.fillna(med).to_numpy(float)[:, None])
    g = cohort.genomics
    x = np.asarray(g.X, dtype=np.float64)
    pos = pd.Index(g.obs_names).get_indexer
    parts_tr.append(x[pos(train_ids)])
    parts_va.append(x[pos(val_ids)])
    a, b = np.concatenate(parts_tr, 1), np.concatenate(parts_va, 1)
    mu, sd = a.mean(0), a.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return ((a - mu) / sd).astype(np.float32), ((b - mu) / sd).astype(np.float32)


def fit_mlp(cohort, task: str, epochs: int, seed: int, batch_size: int = 16) -> dict[str, Any]:
    """The floor: a two-layer MLP, Adam, the same samples, batch size and loss family; per-epoch times."""
    import torch
    from clinfuse.datasets.splits import train_validation_split
    from clinfuse.fusion.losses import classification_loss, discrete_time_nll, make_time_bins
    from torch import nn

    train_ids, val_ids = train_validation_split(cohort, fraction=0.2, seed=seed)
    x_tr, x_va = (torch.from_numpy(a) for a in _design(cohort, list(train_ids), list(val_ids)))
    torch.manual_seed(seed)
    if task == "classification":
        y_tr = torch.as_tensor(cohort.labels.loc[train_ids].to_numpy(np.int64))
        y_va = torch.as_tensor(cohort.labels.loc[val_ids].to_numpy(np.int64))
        n_out = int(max(y_tr.max(), y_va.max())) + 1

        def loss_of(out, rows, split):
            return classification_loss(out, (y_tr if split == "train" else y_va)[rows])
    else:
        s = cohort.survival
        t_tr, e_tr = (torch.as_tensor(s.loc[train_ids, c].to_numpy(np.float32)) for c in ("time", "event"))
        t_va, e_va = (torch.as_tensor(s.loc[val_ids, c].to_numpy(np.float32)) for c in ("time", "event"))
        edges = torch.as_tensor(make_time_bins(t_tr.double(), e_tr.double(), 4)).float()
        n_out = 4

        def loss_of(out, rows, split):
            t, e = (t_tr, e_tr) if split == "train" else (t_va, e_va)
            return discrete_time_nll(out, t[rows], e[rows], edges)

    dev = device_of(DEVICE)  # (the loss closures read these names when called: they see the moved tensors)
    x_tr, x_va = x_tr.to(dev), x_va.to(dev)
    if task == "classification":
        y_tr, y_va = y_tr.to(dev), y_va.to(dev)
    else:
        t_tr, e_tr, t_va, e_va, edges = (v.to(dev) for v in (t_tr, e_tr, t_va, e_va, edges))
    net = nn.Sequential(nn.Linear(x_tr.shape[1], 64), nn.ReLU(), nn.Linear(64, n_out)).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(x_tr.shape[0], generator=gen)
        for start in range(0, x_tr.shape[0], batch_size):
            rows = perm[start:start + batch_size]
            with autocast(DEVICE):
                loss = loss_of(net(x_tr[rows]), rows, "train")
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad(), autocast(DEVICE):
            out = torch.cat([net(x_va[s:s + batch_size]) for s in range(0, x_va.shape[0], batch_size)])
            float(loss_of(out, torch.arange(x_va.shape[0]), "val"))
        synchronize(DEVICE)
        seconds.append(time.perf_counter() - t0)
    return {"epoch_seconds": [round(s, 5) for s in seconds], "inputs": int(x_tr.shape[1]),
            "n_train": int(x_tr.shape[0]), "n_validation": int(x_va.shape[0])}


def _steady(seconds: list[float]) -> float:
    """Median epoch time after the first epoch (all epochs when there is only one)."""
    return float(statistics.median(seconds[1:] if len(seconds) > 1 else seconds))


def _gene_ratios(summary: dict[str, dict], small: int) -> None:
    """Each configuration's ``ratio_vs_<small>_genes``: its epoch time over that of the same task with
    ``small`` genes (once that one has run)."""
    for key, s in summary.items():
        base = summary.get(f"{key.split('/')[0]}/{small}")
        if base is not None:
            s[f"ratio_vs_{small}_genes"] = s["ours_epoch_s"] / base["ours_epoch_s"]


def main() -> None:
    p = base_parser(__doc__, data_default=DATA)
    p.add_argument("--repeats", type=int, default=3, help="repeats (fits) per configuration")
    p.add_argument("--epochs", type=int, default=4, help="epochs per fit (the first is left out of medians)")
    p.add_argument("--genes", type=int, nargs="+", default=[1554, 20000], help="gene panel sizes")
    p.add_argument("--tasks", nargs="+", default=["survival", "classification"],
                   choices=["survival", "classification"])
    p.add_argument("--all-genes", action="store_true",
                   help="also fit the largest panel with top_genes=None (every gene a token)")
    p.add_argument("--note", default=None,
                   help="stored in the JSON, e.g. which code was run when it is not a git checkout")
    args = p.parse_args()
    setup(args.threads)
    DEVICE.device, DEVICE.autocast = args.device, args.autocast
    genes, repeats, epochs = list(args.genes), args.repeats, args.epochs
    if args.quick:
        genes, repeats, epochs = [150, 400], 2, 2
    out = args.out or OUT_DIR / ("speed_genes_quick.json" if args.quick else "speed_genes.json")
    small = 1554 if 1554 in genes else min(genes)  # the panel the ratios t(G) / t(small) refer to
    configs = [(task, g, "default") for task in args.tasks for g in genes]
    if args.all_genes:
        configs += [(task, max(genes), None) for task in args.tasks]
    payload: dict[str, Any] = {
        "benchmark": "epoch time of the default FusionModel vs a two-layer MLP on clinical + genes",
        **provenance(args), "note": args.note,
        "protocol": {"patients": N_PATIENTS, "clinical_columns": CLINICAL, "genes": genes, "repeats": repeats,
                     "epochs": epochs, "ours": "FusionModel(task=task, max_epochs=epochs, "
                     "early_stopping_patience=None, verbose=False, seed=repeat)",
                     "mlp": "Linear(p, 64)-ReLU-Linear(64, out), Adam lr 1e-3, batch 16, same samples",
                     "statistic": "median epoch time over epochs 2..E per repeat, median over repeats; "
                                  "ratios per repeat (same process), median over repeats"},
        "runs": [], "summary": {}}
    t_start = time.perf_counter()
    for task, n_genes, top in configs:
        cohort = make_cohort(n_genes, task)
        key = f"{task}/{n_genes}" + ("" if top == "default" else "/all_genes")
        rows = []
        for r in range(repeats):
            ours = fit_ours(cohort, task, epochs, seed=r, top_genes=top)
            mlp = fit_mlp(cohort, task, epochs, seed=r)
            row = {"repeat": r, "ours": ours, "mlp": mlp, "ours_epoch_s": _steady(ours["epoch_seconds"]),
                   "mlp_epoch_s": _steady(mlp["epoch_seconds"])}
            row["ratio_ours_mlp"] = row["ours_epoch_s"] / row["mlp_epoch_s"]
            rows.append(row)
            print(f"  {key:<28} repeat {r}: ours {row['ours_epoch_s']:.3f} s/epoch, mlp "
                  f"{row['mlp_epoch_s']:.4f} s/epoch, ratio {row['ratio_ours_mlp']:.1f}, fit "
                  f"{ours['fit_seconds']:.1f} s", flush=True)
        payload["runs"].append({"config": key, "task": task, "n_genes": n_genes,
                                "top_genes": "library default" if top == "default" else top, "rows": rows})
        payload["summary"][key] = {
            "gene_tokens": rows[0]["ours"]["gene_tokens"],
            "ours_epoch_s": statistics.median(r["ours_epoch_s"] for r in rows),
            "mlp_epoch_s": statistics.median(r["mlp_epoch_s"] for r in rows),
            "ratio_ours_mlp": statistics.median(r["ratio_ours_mlp"] for r in rows),
            "ours_fit_s": statistics.median(r["ours"]["fit_seconds"] for r in rows)}
        _gene_ratios(payload["summary"], small)
        payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        write_json(out, payload)
    header = ["configuration", "gene tokens", "ours s/epoch", "MLP s/epoch", "ours / MLP",
              f"ours / ours({small} genes)", "ours fit s"]
    table = [[k, s["gene_tokens"], f"{s['ours_epoch_s']:.3f}", f"{s['mlp_epoch_s']:.4f}",
              f"{s['ratio_ours_mlp']:.1f}", f"{s[f'ratio_vs_{small}_genes']:.2f}", f"{s['ours_fit_s']:.1f}"]
             for k, s in payload["summary"].items()]
    payload["table_markdown"] = markdown_table(header, table)
    payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(out, payload)
    print(payload["table_markdown"])
    print(f"wrote {out} ({payload['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
