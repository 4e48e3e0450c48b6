"""Classic MIL (Fox, Tiger, Elephant; Andrews et al. 2002): 10-fold CV accuracy and AUC, ours vs torchmil.

Data: ``load_mil_benchmark(path, name=...)``, 200 bags per set (100 positive), 230 features per instance,
~6-7 instances per bag, used as given (the sets ship standardised features).

Folds: for repeat r (``--repeats``, seeds ``--seed`` + r), ``StratifiedKFold(10, shuffle=True,
random_state=seed + r)`` on the bag labels; every model sees the same folds, and each fit is seeded with
``seed + r``. Nothing is tuned on a test fold: every model's early stopping and checkpoint choice uses
part of the training fold only.

Models:

* ``ours_default``: ``FusionModel(task="classification", verbose=False, seed=s)`` with no other argument (it
  resolves to ``persam`` with the images as the instance modality).
* ``ours_abmil``: the same with ``aggregator="abmil"``.
* ``torchmil_abmil``, ``torchmil_transmil``, ``torchmil_dsmil``: torchmil 1.0.2's ``ABMIL`` (gated=False),
  ``TransMIL`` and ``DSMIL`` at their constructor defaults (``in_shape=(230,)``; BCE on one logit) except
  TransMIL's width (``att_dim=128, n_landmarks=8``: the default 512 costs 1 s per bag step on one CPU
  thread), trained with a plain PyTorch loop: Adam (lr 5e-4, weight decay 1e-4), one bag per step, at most
  50 epochs; a stratified 10% of the training fold (seeded) is held out, the epoch with the lowest loss on
  it is kept, and training stops after 8 epochs without improvement; prediction = sigmoid(logit) > 0.5
  (DSMIL: the mean of its bag and max-instance logits, as its ``compute_loss`` scores).
* ``--variant NAME='{json kwargs}'`` adds ``FusionModel(task="classification", verbose=False, seed=s,
  **kwargs)`` under NAME on the same folds: the ablations.

Per model: mean accuracy and AUC over folds, the paired difference to ``ours_default`` with a 95% t-interval
over folds (optimistic: folds share training bags), and the fit time per fold as a ratio to
``ours_default``'s (same process). Ilse et al. 2018 (Table 1, means of 10 x 10-fold CV) are printed beside.

How the defaults were chosen: on synthetic MIL cohorts of the same shape (``bench_mil_synthetic.py``) and
never on these folds; this script only reports.

    python benchmarks/bench_mil_benchmarks.py                  # -> benchmarks/out/mil_benchmarks.json
    python benchmarks/bench_mil_benchmarks.py --quick          # smoke run (2 folds, 1 set, few epochs)
"""

from __future__ import annotations

import json
import time

import numpy as np
from common import (
    DATA,
    OUT_DIR,
    base_parser,
    fmt,
    markdown_table,
    paired_difference,
    provenance,
    run_folds,
    setup,
    spread,
    write_json,
)

SETS = ("fox", "tiger", "elephant")
REFERENCE = "ours_default"
PEERS = ("torchmil_abmil", "torchmil_transmil", "torchmil_dsmil")
PUBLISHED = {  # Ilse et al. 2018, Table 1: attention MIL, gated-attention MIL, mi-Graph
    "fox": {"ilse_attention": 0.615, "ilse_gated_attention": 0.603, "mi_graph": 0.620},
    "tiger": {"ilse_attention": 0.839, "ilse_gated_attention": 0.845, "mi_graph": 0.860},
    "elephant": {"ilse_attention": 0.868, "ilse_gated_attention": 0.857, "mi_graph": 0.869},
}
TORCH_LOOP = {"optimizer": "Adam", "lr": 5e-4, "weight_decay": 1e-4, "batch_size": 1, "max_epochs": 50,
              "patience": 8, "validation_fraction": 0.1, "selection": "lowest inner validation BCE"}

TORCHMIL_KWARGS = {"torchmil_transmil": {"att_dim": 128, "n_landmarks": 8}}


def bags(cohort, ids):
    """``[n_i, 230]`` float32 tensors and 0/1 labels (1 = positive) of ``ids``."""
    import torch

    x = [torch.from_numpy(np.asarray(cohort.images.load(s).data, dtype=np.float32)) for s in ids]
    y = np.asarray([cohort.labels.loc[s] == "positive" for s in ids], dtype=np.float32)
    return x, y


def torchmil_model(name: str, in_dim: int):
    from torchmil.models import ABMIL, DSMIL, TransMIL

    cls = {"torchmil_abmil": ABMIL, "torchmil_transmil": TransMIL, "torchmil_dsmil": DSMIL}[name]
    return cls(in_shape=(in_dim,), **TORCHMIL_KWARGS.get(name, {}))


def torchmil_logits(model, xs) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return np.asarray([float(model.compute_loss(torch.zeros(1), x[None])[0]) for x in xs])


def fit_torchmil(name: str, cohort, train_ids, test_ids, seed: int, max_epochs: int) -> dict:
    """The plain loop of ``TORCH_LOOP``; returns test probabilities and the epochs run."""
    import torch
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    y_all = [cohort.labels.loc[s] for s in train_ids]
    fit_ids, val_ids = train_test_split(train_ids, test_size=TORCH_LOOP["validation_fraction"],
                                        stratify=y_all, random_state=seed)
    x_fit, y_fit = bags(cohort, fit_ids)
    x_val, y_val = bags(cohort, val_ids)
    model = torchmil_model(name, x_fit[0].shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=TORCH_LOOP["lr"], weight_decay=TORCH_LOOP["weight_decay"])
    rng = np.random.default_rng(seed)
    best, best_state, waited, epochs = np.inf, None, 0, 0
    for _epoch in range(max_epochs):
        model.train()
        for i in rng.permutation(len(x_fit)):
            _, losses = model.compute_loss(torch.tensor([y_fit[i]]), x_fit[i][None])
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        epochs += 1
        p = 1 / (1 + np.exp(-torchmil_logits(model, x_val)))
        val_loss = -np.mean(y_val * np.log(p + 1e-7) + (1 - y_val) * np.log(1 - p + 1e-7))
        if val_loss < best:
            best, waited = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= TORCH_LOOP["patience"]:
                break
    model.load_state_dict(best_state)
    x_test, _ = bags(cohort, test_ids)
    return {"p_positive": 1 / (1 + np.exp(-torchmil_logits(model, x_test))), "epochs": epochs}


def fit_ours(kwargs: dict, cohort, train_ids, test_ids, seed: int) -> dict:
    from clinfuse.fusion import FusionModel

    model = FusionModel(task="classification", verbose=False, seed=seed, **kwargs)
    model.fit(cohort.subset(train_ids))
    proba = model.predict_proba(cohort.subset(test_ids))
    return {"p_positive": proba.loc[test_ids, "positive"].to_numpy(float),
            "epochs": len(getattr(model, "history_", [])), "aggregator": model.aggregator_}


def scores(cohort, test_ids, p_positive) -> dict:
    from sklearn.metrics import roc_auc_score

    y = np.asarray([cohort.labels.loc[s] == "positive" for s in test_ids])
    return {"accuracy": float(np.mean((p_positive > 0.5) == y)), "auc": float(roc_auc_score(y, p_positive))}


def summarise_set(results: dict[str, list[dict]]) -> dict:
    ref = {r["split"]: r for r in results[REFERENCE]} if REFERENCE in results else {}
    ref_time = np.median([r["seconds"] for r in ref.values()]) if ref else np.nan
    out = {}
    for name, rows in results.items():
        entry = {m: spread([r[m] for r in rows]) for m in ("accuracy", "auc")}
        entry["seconds_per_fold_median"] = float(np.median([r["seconds"] for r in rows]))
        entry["fit_time_ratio_vs_" + REFERENCE] = entry["seconds_per_fold_median"] / ref_time
        if name != REFERENCE and ref:
            shared = [r for r in rows if r["split"] in ref]
            for m in ("accuracy", "auc"):
                entry[f"diff_{m}_vs_{REFERENCE}"] = paired_difference(
                    [r[m] for r in shared], [ref[r["split"]][m] for r in shared])
        out[name] = entry
    return out


def table(name: str, summary: dict) -> str:
    rows = []
    for model, s in summary.items():
        d = s.get(f"diff_accuracy_vs_{REFERENCE}")
        a = s.get(f"diff_auc_vs_{REFERENCE}")
        diff = "(reference)" if d is None else f"{fmt(d['mean'])} [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]"
        auc_diff = "" if a is None else f"{fmt(a['mean'])} [{fmt(a['ci_low'])}, {fmt(a['ci_high'])}]"
        rows.append([model, fmt(s["accuracy"]["mean"]), fmt(s["accuracy"]["sd"]), diff,
                     "" if d is None else f"{d['wins']}/{d['n']}", fmt(s["auc"]["mean"]), auc_diff,
                     f"{s['fit_time_ratio_vs_' + REFERENCE]:.2f}"])
    for model, acc in PUBLISHED[name].items():
        rows.append([f"{model} (published)", fmt(acc), "", "", "", "", "", ""])
    return markdown_table(["model", "accuracy", "sd", f"paired diff vs {REFERENCE} [95% t-CI]",
                           "folds better", "AUC", "AUC paired diff [95% t-CI]", "fit time / ours"], rows)


def main() -> None:
    p = base_parser(__doc__, data_default=DATA / "mil_benchmarks")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--repeats", type=int, default=1, help="repeats of 10-fold CV (seeds seed .. seed+R-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=[REFERENCE, "ours_abmil", *PEERS],
                   help="subset of the built-in models to run")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                   help="extra FusionModel variant (ablation), e.g. ours_lr3e3='{\"lr\": 0.003}'")
    args = p.parse_args()
    setup(args.threads)
    from clinfuse.datasets import load_mil_benchmark
    from sklearn.model_selection import StratifiedKFold

    out = args.out or OUT_DIR / ("mil_benchmarks_quick.json" if args.quick else "mil_benchmarks.json")
    variants = dict(v.split("=", 1) for v in args.variant)
    variants = {k: json.loads(v) for k, v in variants.items()}
    n_folds, sets, epochs = (2, args.sets[:1], 3) if args.quick else (10, args.sets, None)
    ours = {REFERENCE: {}, "ours_abmil": {"aggregator": "abmil"}}
    ours = {k: v for k, v in ours.items() if k in args.models}
    if epochs:
        ours = {k: {**v, "max_epochs": epochs} for k, v in ours.items()}
    models = {**{k: ("ours", v) for k, v in ours.items()},
              **{k: ("torchmil", None) for k in PEERS if k in args.models},
              **{k: ("ours", v) for k, v in variants.items()}}
    payload = {"benchmark": "Fox / Tiger / Elephant MIL, repeated stratified 10-fold CV, accuracy and AUC",
               **provenance(args),
               "protocol": {"folds": f"StratifiedKFold({n_folds}, shuffle=True, random_state=seed + r) "
                                     "on the bag labels, r = 0..repeats-1; same folds for every model",
                            "seeds": [args.seed + r for r in range(args.repeats)],
                            "ours": {k: v for k, (kind, v) in models.items() if kind == "ours"},
                            "torchmil_loop": TORCH_LOOP, "torchmil_kwargs": TORCHMIL_KWARGS,
                            "positive_class": "positive",
                            "threshold": 0.5, "published": PUBLISHED,
                            "ci": "paired t-interval over folds (optimistic: folds share training bags)"},
               "sets": {}}
    t_start = time.perf_counter()
    for name in sets:
        cohort = load_mil_benchmark(args.data, name=name)
        ids = np.asarray(cohort.sample_ids)
        y = cohort.labels.loc[ids].to_numpy()
        splits, seeds = [], []
        for r in range(args.repeats):
            for tr, te in StratifiedKFold(n_folds, shuffle=True, random_state=args.seed + r).split(ids, y):
                splits.append((list(ids[tr]), list(ids[te])))
                seeds.append(args.seed + r)
        entry = {"n_bags": len(cohort), "n_instances": int(cohort.images.bag_sizes().sum()), "results": {}}
        payload["sets"][name] = entry
        for model, (kind, kw) in models.items():
            def score_fold(train_ids, test_ids, model=model, kind=kind, kw=kw):
                seed = seeds[[s[1] for s in splits].index(test_ids)]
                if kind == "ours":
                    fit = fit_ours(kw, cohort, train_ids, test_ids, seed)
                else:
                    fit = fit_torchmil(model, cohort, train_ids, test_ids, seed,
                                       3 if args.quick else TORCH_LOOP["max_epochs"])
                p_pos = fit.pop("p_positive")
                return {**scores(cohort, test_ids, p_pos), **fit}

            rows = run_folds(f"{name}/{model}", splits, score_fold, log=False)
            entry["results"][model] = rows
            acc = np.mean([r["accuracy"] for r in rows])
            print(f"{name:<9} {model:<28} acc {acc:.3f}  auc {np.mean([r['auc'] for r in rows]):.3f}  "
                  f"{np.median([r['seconds'] for r in rows]):.1f} s/fold", flush=True)
            payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
            write_json(out, payload)
        entry["summary"] = summarise_set(entry["results"])
        entry["table_markdown"] = table(name, entry["summary"])
        print(entry["table_markdown"], flush=True)
        write_json(out, payload)
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
