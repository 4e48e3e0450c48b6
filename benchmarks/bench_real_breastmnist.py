"""BreastMNIST (28 x 28 ultrasound, malignant vs normal/benign): test AUC, ``vit`` / ``cnn`` vs pixel logreg.

Official MedMNIST split: train on ``train`` (546 images), early stopping / model selection on ``val`` (78),
one evaluation on ``test`` (156). Loaded with ``load_breastmnist(path, split=...)``.

Models, nothing tuned on the test split:

* ``FusionModel(task="classification", encoders={"images": E}, verbose=False)`` for E in ``vit``, ``cnn``
  (library defaults otherwise: ``persam`` aggregator over the one-image bag, ``max_epochs``, early stopping
  patience), fitted with ``fit(train, validation=val)``: early stopping on the official validation split.
  Every seed in ``--seeds`` is one fit.
* ``logreg_pixels``: scikit-learn ``LogisticRegression`` (L2, lbfgs) on the 784 pixels standardised with
  training means / sds, at the default C=1; and ``logreg_pixels_valC``: C chosen on the validation AUC
  from {1e-4, 1e-3, 1e-2, 1e-1, 1} (the validation split plays the role early stopping gives it for the
  networks), refitted on train.

AUC is binary with "normal_benign" as the positive class (``clinfuse.fusion.metrics.roc_auc``: the second
of the sorted classes); one fixed test set, so the uncertainty reported is a paired bootstrap over the
156 test images (2,000 resamples) of each model's AUC minus the default pixel logreg's; it covers the test
sampling only, not the training randomness (that is what several ``--seeds`` show).

    python benchmarks/bench_real_breastmnist.py             # -> benchmarks/out/real_breastmnist.json
    python benchmarks/bench_real_breastmnist.py --quick     # smoke run (1 epoch, 64 training images)
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from common import DATA, OUT_DIR, base_parser, fmt, markdown_table, provenance, setup, timer, write_json

ENCODERS = ("vit", "cnn")
REFERENCE = "logreg_pixels"
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def pixels(cohort) -> np.ndarray:
    """``[n, H*W]`` float pixels in cohort order (each bag holds exactly one image)."""
    return np.stack([cohort.images.load(s).data.reshape(-1) for s in cohort.sample_ids]).astype(np.float64)


def proba_frame(p_pos: np.ndarray, classes: list[str], ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame(np.stack([1 - p_pos, p_pos], axis=1), index=ids, columns=classes)


def logreg(train, val, test, *, select_c: bool) -> dict:
    from clinfuse.fusion.metrics import roc_auc
    from sklearn.linear_model import LogisticRegression

    x_tr, x_va, x_te = pixels(train), pixels(val), pixels(test)
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    x_tr, x_va, x_te = ((x - mu) / sd for x in (x_tr, x_va, x_te))
    y_tr = train.labels.loc[train.sample_ids].astype(str).to_numpy()
    val_auc = {}
    for c in C_GRID if select_c else (1.0,):
        clf = LogisticRegression(C=c, max_iter=5000).fit(x_tr, y_tr)
        val_auc[c] = roc_auc(val.labels.loc[val.sample_ids].tolist(),
                             pd.DataFrame(clf.predict_proba(x_va), columns=list(clf.classes_)))
    best = max(val_auc, key=val_auc.get)
    clf = LogisticRegression(C=best, max_iter=5000).fit(x_tr, y_tr)
    proba = pd.DataFrame(clf.predict_proba(x_te), index=list(test.sample_ids), columns=list(clf.classes_))
    return {"proba": proba, "C": best, "val_auc_by_C": {str(k): v for k, v in val_auc.items()},
            "val_auc": val_auc[best]}


def fusion(encoder: str, seed: int, train, val, test, max_epochs: int | None) -> dict:
    from clinfuse.fusion import FusionModel

    kw = {} if max_epochs is None else {"max_epochs": max_epochs}
    model = FusionModel(task="classification", encoders={"images": encoder}, verbose=False, seed=seed, **kw)
    model.fit(train, validation=val)
    return {"proba": model.predict_proba(test), "val_auc": float(model.score(val)),
            "epochs": len(getattr(model, "history_", [])), "aggregator": model.aggregator,
            "encoder": type(model.network_.encoders["images"]).__name__,
            "n_parameters": int(sum(p.numel() for p in model.network_.parameters()))}


def _auc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUC of every row (Mann-Whitney from mid-ranks): ``y`` bool ``[R, n]``, ``score`` ``[R, n]`` ->
    ``[R]``."""
    from scipy.stats import rankdata

    ranks = rankdata(score, axis=1)  # ties get mid-ranks, as the AUC counts them one half
    n_pos = y.sum(1)
    n_neg = y.shape[1] - n_pos
    return ((ranks * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_diff(y: list[str], p_model: pd.DataFrame, p_ref: pd.DataFrame, n_boot: int = 2000) -> dict:
    """Paired bootstrap over test samples of AUC(model) - AUC(reference): point value and 2.5 / 97.5
    percentiles (resamples holding one class only are dropped). Vectorised: all resamples at once."""
    pos = str(p_ref.columns[1])
    yb = np.asarray([str(v) for v in y]) == pos
    a, b = p_model[pos].to_numpy(float), p_ref[pos].to_numpy(float)
    idx = np.random.default_rng(0).integers(0, len(yb), (n_boot, len(yb)))
    yi = yb[idx]
    keep = yi.any(1) & ~yi.all(1)
    idx, yi = idx[keep], yi[keep]
    d = _auc_rows(yi, a[idx]) - _auc_rows(yi, b[idx])
    point = float(_auc_rows(yb[None], a[None])[0] - _auc_rows(yb[None], b[None])[0])
    return {"point": point, "ci_low": float(np.percentile(d, 2.5)), "ci_high": float(np.percentile(d, 97.5)),
            "n_boot": int(d.size)}


def main() -> None:
    p = base_parser(__doc__, data_default=DATA / "breastmnist")
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="FusionModel seeds (one fit each)")
    p.add_argument("--max-epochs", type=int, default=None, help="default: the library's FusionModel default")
    args = p.parse_args()
    setup(args.threads)
    from clinfuse.datasets import load_breastmnist
    from clinfuse.fusion.metrics import roc_auc

    out = args.out or OUT_DIR / ("real_breastmnist_quick.json" if args.quick else "real_breastmnist.json")
    train, val, test = (load_breastmnist(args.data, split=s) for s in ("train", "val", "test"))
    max_epochs = args.max_epochs
    if args.quick:
        train, max_epochs = train.subset(train.sample_ids[:64]), 1
    y_test = test.labels.loc[test.sample_ids].tolist()
    payload = {"benchmark": "BreastMNIST malignant vs normal/benign, official split, test AUC",
               **provenance(args),
               "cohort": {split: {"n": len(c), **{str(k): int(v) for k, v in c.labels.value_counts().items()}}
                          for split, c in (("train", train), ("val", val), ("test", test))},
               "protocol": {"fusion": "FusionModel(task='classification', encoders={'images': E}, "
                                      "verbose=False, seed=S).fit(train, validation=val)"
                                      + ("" if max_epochs is None else f", max_epochs={max_epochs}"),
                            "positive_class": "normal_benign",
                            "ci": "paired bootstrap over test images (2,000 resamples) of AUC(model) - "
                                  f"AUC({REFERENCE}); test sampling only"},
               "runs": []}
    probas: dict[str, pd.DataFrame] = {}
    t_start = time.perf_counter()
    jobs = [(REFERENCE, lambda: logreg(train, val, test, select_c=False)),
            ("logreg_pixels_valC", lambda: logreg(train, val, test, select_c=True))]
    jobs += [(f"fusion_{e}_seed{s}", lambda e=e, s=s: fusion(e, s, train, val, test, max_epochs))
             for e in args.encoders for s in args.seeds]
    for name, fn in jobs:
        row: dict = {"model": name}
        with timer(row):
            result = fn()
        probas[name] = result.pop("proba")
        row.update(result, test_auc=roc_auc(y_test, probas[name]))
        if name != REFERENCE:
            row["diff_vs_" + REFERENCE] = bootstrap_diff(y_test, probas[name], probas[REFERENCE])
        payload["runs"].append(row)
        payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        print(f"  {name:<28} test AUC {row['test_auc']:.3f} (val {row['val_auc']:.3f}, "
              f"{row['seconds']:.0f} s)", flush=True)
        write_json(out, payload)
    rows = []
    for r in payload["runs"]:
        d = r.get("diff_vs_" + REFERENCE)
        diff = "(reference)" if d is None else f"{fmt(d['point'])} [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]"
        rows.append([r["model"], fmt(r["test_auc"]), fmt(r["val_auc"]), diff,
                     r.get("epochs", ""), f"{r['seconds']:.0f}"])
    payload["table_markdown"] = markdown_table(
        ["model", "test AUC", "val AUC", "diff vs logreg(pixels) [95% bootstrap CI]", "epochs",
         "wall s"], rows)
    write_json(out, payload)
    print(payload["table_markdown"])
    print(f"wrote {out} ({payload['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
