"""The survival models of ``bench_survival_peers.py``: ours and five peers, each ``fit_score(cohort, train,
test, quick) -> row``, with fixed, stated settings (:data:`SETTINGS`; nothing tuned on the reported folds).

Every peer is fitted on ``survival_cohorts.design`` (train-fold-only imputation, one-hot, 10 gene PCs for
GSE7390, standardisation); the time to build it counts in the peer's fit time. Early stopping and the
choice of CoxNet's alpha use the training fold only. Every row holds ``c_index`` (Harrell's,
``clinfuse.fusion.metrics.concordance_index``, of a risk score: higher = worse) and ``fit_seconds``.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
from survival_cohorts import design, survival_of

INNER_SEED = 0
SETTINGS = {
    "ours": "FusionModel(task='survival', verbose=False) with the library defaults (plus --ours-kwargs); the "
            "library's own preprocessing and inner early-stopping split of the training fold",
    "cox_ph": "lifelines CoxPHFitter(penalizer=0.1) (l1_ratio 0): the reference of the issue's goal",
    "coxnet": "scikit-survival CoxnetSurvivalAnalysis(l1_ratio=0.5, n_alphas=50, alpha_min_ratio=0.01); "
              "alpha = the path value with the best mean Harrell c-index over an inner 5-fold CV of the "
              "training fold (stratified by event, seed 0), then the model refitted on the whole fold",
    "rsf": "scikit-survival RandomSurvivalForest(n_estimators=100, min_samples_leaf=15, max_features='sqrt', "
           "low_memory=True, n_jobs=1, random_state=0); risk = predicted cumulative hazard sum",
    "deepsurv": "pycox CoxPH on torchtuples MLPVanilla([32, 32], batch_norm, dropout 0.1), Adam lr 0.01, "
                "batch 256, <= 512 epochs, EarlyStopping(patience 10) on an inner 20% split of the training "
                "fold (stratified by event, seed 0), best weights kept (pycox tutorial settings)",
    "deephit": "pycox DeepHitSingle(alpha=0.2, sigma=0.1), 10 equidistant time bins of the inner training "
               "part, same MLP / optimiser / batch / early stopping as deepsurv (<= 100 epochs); risk = "
               "minus the restricted mean survival time over the bins (pycox tutorial settings)",
}
MODELS = tuple(SETTINGS)


def _c(cohort, test, risk) -> float:
    from clinfuse.fusion.metrics import concordance_index

    t, e = survival_of(cohort, test)
    return concordance_index(t, e, np.asarray(risk, dtype=float).reshape(-1))


def _inner_split(event: np.ndarray, seed: int = INNER_SEED) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(event))
    return train_test_split(idx, test_size=0.2, stratify=event, random_state=seed)


def run_fold(fn, cohort, train, test, *, split: int, record_errors: bool = True) -> dict:
    """One fold of ``fn(cohort, train, test)``: its row with the split, test size, test events and wall
    seconds. ``record_errors``: an exception is recorded in the row (c-index NaN) instead of ending the run
    (a peer failing on a fold is a result too)."""
    row = {"split": split, "n_test": len(test), "events_test": int(cohort.survival.loc[test, "event"].sum())}
    t0 = time.perf_counter()
    try:
        row.update(fn(cohort, train, test))
    except Exception as exc:
        if not record_errors:
            raise
        row.update({"c_index": math.nan, "fit_seconds": math.nan, "error": f"{type(exc).__name__}: {exc}"})
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def ours(cohort, train, test, quick: bool, kwargs: dict | None = None) -> dict:
    from clinfuse.fusion import FusionModel

    kw = dict(kwargs or {})
    if quick:
        kw.setdefault("max_epochs", 2)
    model = FusionModel(task="survival", verbose=False, **kw)
    t0 = time.perf_counter()
    model.fit(cohort.subset(train))
    fit_s = time.perf_counter() - t0
    risk = model.predict_risk(cohort.subset(test))
    return {"c_index": _c(cohort, test, risk), "fit_seconds": round(fit_s, 3),
            "epochs": len(getattr(model, "history_", []) or []),
            "aggregator": getattr(model, "aggregator_", None)}


def cox_ph(cohort, train, test, quick: bool) -> dict:
    from lifelines import CoxPHFitter

    t0 = time.perf_counter()
    x_tr, x_te = design(cohort, train, test)
    t, e = survival_of(cohort, train)
    cph = CoxPHFitter(penalizer=0.1).fit(x_tr.assign(_time=t, _event=e), duration_col="_time",
                                         event_col="_event")
    fit_s = time.perf_counter() - t0
    risk = cph.predict_log_partial_hazard(x_te)
    return {"c_index": _c(cohort, test, risk), "fit_seconds": round(fit_s, 3), "n_features": x_tr.shape[1]}


def _surv(t: np.ndarray, e: np.ndarray):
    from sksurv.util import Surv

    return Surv.from_arrays(event=e.astype(bool), time=t)


def coxnet(cohort, train, test, quick: bool) -> dict:
    from clinfuse.fusion.metrics import concordance_index
    from sklearn.model_selection import StratifiedKFold
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    kw = {"l1_ratio": 0.5, "n_alphas": 50, "alpha_min_ratio": 0.01}
    t0 = time.perf_counter()
    x_tr, x_te = design(cohort, train, test)
    x, (t, e) = x_tr.to_numpy(float), survival_of(cohort, train)
    full = CoxnetSurvivalAnalysis(**kw).fit(x, _surv(t, e))
    alphas = full.alphas_
    scores = np.zeros((0, len(alphas)))
    inner = StratifiedKFold(n_splits=2 if quick else 5, shuffle=True, random_state=INNER_SEED)
    for a, b in inner.split(x, e):
        m = CoxnetSurvivalAnalysis(l1_ratio=kw["l1_ratio"], alphas=alphas).fit(x[a], _surv(t[a], e[a]))
        row = [concordance_index(t[b], e[b], m.predict(x[b], alpha=al)) for al in m.alphas_]
        row += [np.nan] * (len(alphas) - len(row))  # a path that stopped early scores nan beyond its end
        scores = np.vstack([scores, row])
    best = float(alphas[int(np.nanargmax(np.nanmean(scores, axis=0)))])
    fit_s = time.perf_counter() - t0
    risk = full.predict(x_te.to_numpy(float), alpha=best)
    return {"c_index": _c(cohort, test, risk), "fit_seconds": round(fit_s, 3), "alpha": best,
            "n_nonzero": int(np.sum(np.abs(full.coef_[:, list(alphas).index(best)]) > 0))}


def rsf(cohort, train, test, quick: bool) -> dict:
    from sksurv.ensemble import RandomSurvivalForest

    t0 = time.perf_counter()
    x_tr, x_te = design(cohort, train, test)
    t, e = survival_of(cohort, train)
    forest = RandomSurvivalForest(n_estimators=10 if quick else 100, min_samples_leaf=15, max_features="sqrt",
                                  low_memory=True, n_jobs=1, random_state=0).fit(x_tr.to_numpy(float),
                                                                               _surv(t, e))
    fit_s = time.perf_counter() - t0
    risk = forest.predict(x_te.to_numpy(float))
    return {"c_index": _c(cohort, test, risk), "fit_seconds": round(fit_s, 3)}


def _pycox(cohort, train, test, quick: bool, kind: str) -> dict:
    import torch
    import torchtuples as tt
    from pycox.models import CoxPH, DeepHitSingle

    t0 = time.perf_counter()
    x_tr, x_te = design(cohort, train, test)
    x, xt = x_tr.to_numpy("float32"), x_te.to_numpy("float32")
    t, e = survival_of(cohort, train)
    fit_i, val_i = _inner_split(e)
    torch.manual_seed(0)
    np.random.seed(0)
    if kind == "deepsurv":
        out, max_epochs = 1, 512
        y_fit = (t[fit_i].astype("float32"), e[fit_i].astype("float32"))
        y_val = (t[val_i].astype("float32"), e[val_i].astype("float32"))
    else:
        labels = DeepHitSingle.label_transform(10)
        y_fit = labels.fit_transform(t[fit_i], e[fit_i])
        y_val = labels.transform(t[val_i], e[val_i])
        out, max_epochs = labels.out_features, 100
    net = tt.practical.MLPVanilla(x.shape[1], [32, 32], out, batch_norm=True, dropout=0.1)
    if kind == "deepsurv":
        model = CoxPH(net, tt.optim.Adam(lr=0.01))
    else:
        model = DeepHitSingle(net, tt.optim.Adam(lr=0.01), alpha=0.2, sigma=0.1, duration_index=labels.cuts)
    # torchtuples keeps the best weights in a file, by default in the working directory: a stopped run
    # would leave it there, so it goes to a temporary folder
    with tempfile.TemporaryDirectory() as tmp:
        stop = tt.callbacks.EarlyStopping(patience=10, file_path=str(Path(tmp) / "best.pt"))
        log = model.fit(x[fit_i], y_fit, batch_size=256, epochs=2 if quick else max_epochs,
                        callbacks=[stop], verbose=False, val_data=(x[val_i], y_val))
    if kind == "deepsurv":
        model.compute_baseline_hazards()  # part of a usable DeepSurv fit (survival curves); counted
    fit_s = time.perf_counter() - t0
    if kind == "deepsurv":
        risk = model.predict(xt).reshape(-1)
    else:
        surv = model.predict_surv(xt)  # [n_test, n_bins] S at the bin starts
        widths = np.diff(np.append(labels.cuts, labels.cuts[-1]))
        risk = -(np.asarray(surv) * widths).sum(axis=1)
    return {"c_index": _c(cohort, test, risk), "fit_seconds": round(fit_s, 3),
            "epochs": len(log.to_pandas())}


def deepsurv(cohort, train, test, quick: bool) -> dict:
    return _pycox(cohort, train, test, quick, "deepsurv")


def deephit(cohort, train, test, quick: bool) -> dict:
    return _pycox(cohort, train, test, quick, "deephit")


FIT_SCORE = {"cox_ph": cox_ph, "coxnet": coxnet, "rsf": rsf, "deepsurv": deepsurv, "deephit": deephit}
