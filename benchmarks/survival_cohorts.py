"""The six survival cohorts of issue 13, their folds, and the design matrix a Cox-type peer is fitted on.

One place for three things every survival benchmark shares, so that all models see the same data and the
same folds:

* :func:`load_cohort` (``name`` in :data:`COHORTS`) returns a :class:`clinfuse.datasets.Cohort`:
  ``gse7390`` (4 clinical variables + 76 probes, ``clinfuse.datasets.load_gse7390``) and five clinical-only
  cohorts read from scikit-survival's ARFF files in ``../shared/data/gse7390_etc`` (see ``SOURCE.txt``
  there): ``gbsg2``, ``whas500``, ``veteran``, ``actg320`` (AIDS or death; ``time``/``censor``), ``flchain``.
  None of these files has sample ids; ids are ``<NAME>_<row number>`` in file order. Every column dropped
  or value changed is recorded in ``cohort.excluded`` (see each loader's docstring for why).
* :func:`folds` returns ``make_splits(cohort, 5, seed=0, repeats=repeats)``: 5-fold CV stratified by
  event, ``repeats`` repeats (15 folds by default), for every cohort and every model.
* :func:`design` builds the numeric matrix of a classical peer (lifelines Cox, CoxNet, random survival
  forest, DeepSurv, DeepHit) with every statistic taken from the training fold only: numeric columns
  imputed with training medians; categorical columns one-hot with the training fold's levels (first level
  dropped), a missing level imputed with the training median of each indicator; for a cohort with genomics,
  10 principal components of the genes standardised with training means / sds, PCA fitted on the training
  fold; finally every column standardised with training means / sds.

    from survival_cohorts import design, folds, load_cohort
    cohort = load_cohort("gbsg2")
    for train_ids, test_ids in folds("gbsg2"):
        x_tr, x_te = design(cohort, train_ids, test_ids)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gse7390_etc"
N_PCS = 10


def _note(what: str, count: int, reason: str, modality: str | None = "clinical") -> dict:
    return {"what": what, "modality": modality, "sample_id": None, "count": int(count), "reason": reason}


def _read_arff(data: Path, file: str) -> pd.DataFrame:
    from scipy.io import arff

    path = Path(data) / file if Path(data).is_dir() else Path(data)
    if not path.is_file():
        raise ValueError(f"survival_cohorts: no file at {str(path)!r}; pass the folder holding {file!r}")
    df = pd.DataFrame(arff.loadarff(path)[0])
    for col in df.select_dtypes(include="object").columns:  # nominal ARFF attributes arrive as bytes
        df[col] = df[col].str.decode("utf-8").replace("?", np.nan)
    return df


def _cohort(name: str, df: pd.DataFrame, *, time: str, event: Callable[[pd.Series], pd.Series],
            numeric: Sequence[str], categorical: Sequence[str], excluded: list[dict]):
    from clinfuse.datasets import Cohort

    df = df.copy()
    df.index = pd.Index([f"{name}_{i + 1:04d}" for i in range(len(df))], name="sample_id")
    clinical = df[list(numeric) + list(categorical)].copy()
    for col in numeric:
        clinical[col] = pd.to_numeric(clinical[col]).astype(float)
    survival = pd.DataFrame({"time": df[time].astype(float), "event": event(df).astype(int)}, index=df.index)
    types = {**{c: "numeric" for c in numeric}, **{c: "categorical" for c in categorical}}
    return Cohort(clinical=clinical, survival=survival, clinical_types=types, name=name, excluded=excluded)


def load_gse7390(data: Path = DATA):
    """GSE7390 (198 patients, 51 distant metastases): ``clinfuse.datasets.load_gse7390`` unchanged."""
    from clinfuse.datasets import load_gse7390 as load

    return load(data)


def load_gbsg2(data: Path = DATA):
    """GBSG2 (686 patients, 299 recurrences or deaths): 8 baseline variables, ``time`` (days), ``cens``."""
    df = _read_arff(data, "GBSG2.arff")
    return _cohort("GBSG2", df, time="time", event=lambda d: d["cens"].astype(int),
                   numeric=["age", "tsize", "pnodes", "progrec", "estrec"],
                   categorical=["horTh", "menostat", "tgrade"], excluded=[])


def load_whas500(data: Path = DATA):
    """WHAS500 (500 patients, 215 deaths): 14 admission variables (0/1 flags kept numeric), ``lenfol``
    (days), ``fstat``."""
    df = _read_arff(data, "whas500.arff")
    numeric = ["age", "gender", "hr", "sysbp", "diasbp", "bmi", "cvd", "afb", "sho", "chf", "av3", "miord",
               "mitype", "los"]
    return _cohort("WHAS500", df, time="lenfol", event=lambda d: d["fstat"].astype(int),
                   numeric=numeric, categorical=[], excluded=[])


def load_veteran(data: Path = DATA):
    """Veterans' lung cancer trial (137 patients, 128 deaths): 6 variables, ``Survival_in_days``,
    ``Status``."""
    df = _read_arff(data, "veteran.arff")
    return _cohort("veteran", df, time="Survival_in_days", event=lambda d: (d["Status"] == "dead"),
                   numeric=["Karnofsky_score", "Months_from_Diagnosis", "Age_in_years"],
                   categorical=["Treatment", "Celltype", "Prior_therapy"], excluded=[])


def load_actg320(data: Path = DATA):
    """ACTG 320 (1,151 patients, 96 AIDS diagnoses or deaths): ``time`` / ``censor`` (the AIDS-or-death
    endpoint). ``time_d`` / ``censor_d`` (death only) are outcomes, dropped; ``txgrp`` is dropped too: it
    equals ``tx`` + 1 in 1,148 of 1,151 rows (3 patients in groups 3/4), so it only duplicates ``tx``."""
    df = _read_arff(data, "actg320.arff")
    excluded = [_note("columns time_d, censor_d dropped", len(df),
                      "the death-only endpoint is an outcome, not a covariate"),
                _note("column txgrp dropped", len(df),
                      "it duplicates tx (txgrp = tx + 1 in 1148 of 1151 rows)")]
    return _cohort("actg320", df, time="time", event=lambda d: d["censor"].astype(int),
                   numeric=["tx", "strat2", "hemophil", "karnof", "cd4", "priorzdv", "age"],
                   categorical=["sex", "raceth", "ivdrug"], excluded=excluded)


def load_flchain(data: Path = DATA):
    """Serum free light chain cohort (7,874 subjects, 2,169 deaths): 8 variables, ``futime`` (days),
    ``death``. ``chapter`` (the cause of death's ICD chapter) is only known after death, so it would leak
    the outcome: dropped. Three deaths with ``futime`` 0 get 0.5 days (the library needs time > 0; their
    rank among the times is unchanged). ``creatinine`` is missing for 1,350 subjects (kept as NaN)."""
    df = _read_arff(data, "flchain.arff")
    zero = df["futime"] <= 0
    df.loc[zero, "futime"] = 0.5
    excluded = [_note("column chapter dropped", len(df),
                      "cause-of-death chapter, known only after death: it would leak the outcome"),
                _note("futime 0 set to 0.5 days", int(zero.sum()),
                      "survival times must be > 0; 0.5 keeps their order among the times", "survival")]
    return _cohort("flchain", df, time="futime", event=lambda d: (d["death"] == "dead"),
                   numeric=["age", "sample.yr", "kappa", "lambda", "flc.grp", "creatinine"],
                   categorical=["sex", "mgus"], excluded=excluded)


COHORTS: dict[str, Callable] = {"gse7390": load_gse7390, "gbsg2": load_gbsg2, "whas500": load_whas500,
                                "veteran": load_veteran, "actg320": load_actg320, "flchain": load_flchain}


def load_cohort(name: str, data: Path = DATA):
    """The cohort ``name`` (a key of :data:`COHORTS`) as a ``clinfuse.datasets.Cohort``."""
    if name not in COHORTS:
        raise ValueError(f"unknown cohort {name!r}; expected one of {sorted(COHORTS)}")
    return COHORTS[name](data)


def folds(name: str, *, repeats: int = 3, data: Path = DATA,
          cohort=None) -> list[tuple[list[str], list[str]]]:
    """The folds every model is scored on: ``make_splits(cohort, 5, seed=0, repeats=repeats)``."""
    from clinfuse.datasets import make_splits

    return make_splits(cohort if cohort is not None else load_cohort(name, data), 5, seed=0, repeats=repeats)


# ------------------------------------------------------------------- design of the classical peers
def clinical_matrix(train: pd.DataFrame, test: pd.DataFrame, types: dict[str, str]
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numeric design of a clinical table (columns in table order), every statistic taken from ``train``."""
    out_tr, out_te = pd.DataFrame(index=train.index), pd.DataFrame(index=test.index)
    for col in train.columns:
        if types.get(col, "numeric") == "numeric":
            med = float(train[col].median())
            out_tr[col] = train[col].fillna(med).astype(float)
            out_te[col] = test[col].fillna(med).astype(float)
            continue
        levels = sorted(train[col].dropna().unique().tolist())
        for level in levels[1:]:  # first level is the reference
            name = f"{col}={level}"
            tr = (train[col] == level).astype(float).where(train[col].notna())
            te = (test[col] == level).astype(float).where(test[col].notna())
            med = float(tr.median())
            out_tr[name], out_te[name] = tr.fillna(med), te.fillna(med)
    return out_tr, out_te


def gene_pcs(train: np.ndarray, test: np.ndarray, index_tr, index_te, n_pcs: int = N_PCS
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n_pcs`` principal components of the standardised genes; scaler and PCA fitted on ``train`` only."""
    from sklearn.decomposition import PCA

    mu, sd = train.mean(0), train.std(0, ddof=0)
    sd = np.where(sd > 0, sd, 1.0)
    pca = PCA(n_components=n_pcs, random_state=0).fit((train - mu) / sd)
    cols = [f"PC{i + 1}" for i in range(n_pcs)]
    return (pd.DataFrame(pca.transform((train - mu) / sd), index=index_tr, columns=cols),
            pd.DataFrame(pca.transform((test - mu) / sd), index=index_te, columns=cols))


def design(cohort, train_ids: Sequence[str], test_ids: Sequence[str], *, features: str = "both",
           n_pcs: int = N_PCS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Standardised design ``[n_train, p]``, ``[n_test, p]`` of a classical peer, fitted on ``train_ids``.

    ``features``: ``"clinical"``, ``"genes"`` (``n_pcs`` gene PCs) or ``"both"`` (clinical, then the PCs;
    a cohort without genomics has clinical columns only).
    """
    if features not in ("clinical", "genes", "both"):
        raise ValueError(f"features must be 'clinical', 'genes' or 'both', got {features!r}")
    train_ids, test_ids = list(train_ids), list(test_ids)
    parts_tr, parts_te = [], []
    if features in ("clinical", "both") and cohort.clinical is not None:
        a, b = clinical_matrix(cohort.clinical.loc[train_ids], cohort.clinical.loc[test_ids],
                               dict(cohort.clinical_types or {}))
        parts_tr.append(a)
        parts_te.append(b)
    if features in ("genes", "both") and cohort.genomics is not None:
        g = cohort.genomics
        x = np.asarray(g.X.toarray() if hasattr(g.X, "toarray") else g.X, dtype=float)
        pos = pd.Index(g.obs_names).get_indexer
        a, b = gene_pcs(x[pos(train_ids)], x[pos(test_ids)], pd.Index(train_ids), pd.Index(test_ids), n_pcs)
        parts_tr.append(a)
        parts_te.append(b)
    if not parts_tr:
        raise ValueError(f"design: cohort {cohort.name!r} has no {features} features")
    x_tr, x_te = pd.concat(parts_tr, axis=1), pd.concat(parts_te, axis=1)
    mu, sd = x_tr.mean(), x_tr.std(ddof=0).replace(0.0, 1.0)
    return (x_tr - mu) / sd, (x_te - mu) / sd


def survival_of(cohort, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(time [n] float, event [n] int)`` of ``ids``."""
    s = cohort.survival.loc[list(ids)]
    return s["time"].to_numpy(float), s["event"].to_numpy(int)
