"""MIMIC-III Clinical Database Demo v1.4: one sample per hospital admission, EHR events up to a prediction
time.

Leakage rules (why the code below looks the way it does)
--------------------------------------------------------
* The prediction time of an admission is ``admittime + prediction_hours``. Only events at or before it are
  inputs; admissions that end (discharge or death) before it are not samples (their outcome is already
  known), and are listed in ``cohort.excluded``.
* Date-only times (``PRESCRIPTIONS.startdate``, ``MICROBIOLOGYEVENTS.chartdate`` where ``charttime`` is
  missing) are placed at the END of their day, so that an order written later on the day of the prediction
  time cannot leak into the input.
* Microbiology contributes the specimen that was sent (``micro:<spec_type_desc>``) at the time it was taken,
  never the organism or susceptibilities, which are known only days later.
* ICD-9 diagnoses and procedures carry no time and are coded at discharge, so for an admission only the
  codes of the same patient's EARLIER admissions are used, as events at that admission's discharge time.
* With ``history=True`` (default) the timed events of earlier admissions are inputs too. ``segment`` counts
  admissions back: 0 = the sample's own admission, 1 = the one before, ...

Time axis: days relative to the sample's own ``admittime`` (negative for earlier admissions); the index time
of every sample is ``prediction_hours / 24``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..cohort import Cohort
from ._common import note

SOURCES: tuple[str, ...] = (
    "prescriptions",
    "inputs",
    "outputs",
    "procedures",
    "microbiology",
    "transfers",
    "icd",
)
"""Event sources of :func:`load_mimic3_demo`; code prefixes ``rx:``, ``in:``, ``out:``, ``proc:``, ``micro:``,
``xfer:``, and ``dx:`` / ``px:`` for ICD-9 diagnosis / procedure codes."""

_AGE_CAP = 90.0
_DAY = pd.Timedelta(days=1)


def _read(folder: Path, table: str, columns: list[str], dates: list[str]) -> pd.DataFrame:
    file = folder / f"{table}.csv"
    if not file.is_file():
        raise ValueError(f"load_mimic3_demo: {str(file)!r} not found; expected the MIMIC-III demo CSV folder")
    head = pd.read_csv(file, nrows=0).columns
    missing = [c for c in columns if c not in head]
    if missing:
        raise ValueError(
            f"load_mimic3_demo: {table}.csv lacks column(s) {missing}; expected the lower-case headers of "
            "the MIMIC-III demo v1.4"
        )
    df = pd.read_csv(file, usecols=columns, low_memory=False)
    for c in dates:
        df[c] = pd.to_datetime(df[c], format="%Y-%m-%d %H:%M:%S", errors="coerce")
    return df


def _frame(df: pd.DataFrame, when: pd.Series, code: pd.Series, value=np.nan) -> pd.DataFrame:
    return pd.DataFrame(
        {"subject_id": df["subject_id"], "hadm_id": df["hadm_id"], "when": when, "code": code, "value": value}
    )


def _timed_events(folder: Path, include: set[str], excluded: list[dict]) -> list[pd.DataFrame]:
    """Timed events of every admission: subject_id, hadm_id, when (Timestamp), code, value."""
    out = []
    if "prescriptions" in include:
        rx = _read(folder, "PRESCRIPTIONS", ["subject_id", "hadm_id", "startdate", "drug"], ["startdate"])
        out.append(_frame(rx, rx["startdate"] + _DAY, "rx:" + rx["drug"].astype(str).str.strip()))
    for key, table, prefix, start, value in (
        ("inputs", "INPUTEVENTS_MV", "in:", "starttime", "amount"),
        ("procedures", "PROCEDUREEVENTS_MV", "proc:", "starttime", "value"),
    ):
        if key not in include:
            continue
        df = _read(
            folder, table, ["subject_id", "hadm_id", start, "itemid", value, "statusdescription"], [start]
        )
        rewritten = df["statusdescription"] == "Rewritten"
        if rewritten.any():
            excluded.append(
                note(
                    f"{table} rows with status 'Rewritten'",
                    "events",
                    int(rewritten.sum()),
                    "dropped: a rewritten order was replaced by a later row (MIMIC-III documentation)",
                )
            )
        df = df[~rewritten]
        out.append(_frame(df, df[start], prefix + df["itemid"].astype(str), df[value].astype(float)))
    if "outputs" in include:
        df = _read(
            folder, "OUTPUTEVENTS", ["subject_id", "hadm_id", "charttime", "itemid", "value"], ["charttime"]
        )
        out.append(_frame(df, df["charttime"], "out:" + df["itemid"].astype(str), df["value"].astype(float)))
    if "microbiology" in include:
        cols = ["subject_id", "hadm_id", "chartdate", "charttime", "spec_type_desc"]
        df = _read(folder, "MICROBIOLOGYEVENTS", cols, ["chartdate", "charttime"])
        when = df["charttime"].fillna(df["chartdate"] + _DAY)
        ev = _frame(df, when, "micro:" + df["spec_type_desc"].astype(str).str.strip())
        # one row per organism / antibiotic in the source: one event per specimen sent
        out.append(ev.drop_duplicates(["hadm_id", "when", "code"]))
    if "transfers" in include:
        cols = ["subject_id", "hadm_id", "intime", "eventtype", "curr_careunit"]
        df = _read(folder, "TRANSFERS", cols, ["intime"])
        unit = df["curr_careunit"].fillna("ward").where(df["eventtype"] != "discharge", "discharge")
        out.append(_frame(df, df["intime"], "xfer:" + unit.astype(str)))
    return out


def _icd_events(folder: Path, adm: pd.DataFrame) -> pd.DataFrame:
    """ICD-9 codes of each admission, timed at that admission's discharge."""
    parts = []
    for table, prefix in (("DIAGNOSES_ICD", "dx:"), ("PROCEDURES_ICD", "px:")):
        df = _read(folder, table, ["subject_id", "hadm_id", "icd9_code"], []).dropna(subset=["icd9_code"])
        when = df["hadm_id"].map(adm.set_index("hadm_id")["dischtime"])
        parts.append(_frame(df, when, prefix + df["icd9_code"].astype(str)))
    return pd.concat(parts, ignore_index=True)


def load_mimic3_demo(
    path: str | os.PathLike,
    *,
    prediction_hours: float = 48,
    include: tuple[str, ...] | list[str] = SOURCES,
    history: bool = True,
) -> Cohort:
    """In-hospital mortality from the first ``prediction_hours`` of each admission (MIMIC-III demo).

    Args:
        path: the folder holding the demo CSVs (lower-case headers, ISO times), e.g. ``ADMISSIONS.csv``.
        prediction_hours: hours after admission at which the prediction is made (> 0).
        include: event sources to read, a subset of :data:`SOURCES`.
        history: also use the timed events of the patient's earlier admissions (``segment >= 1``).

    Returns:
        A classification cohort with one sample per admission not ended before the prediction time
        (sample id = ``hadm_id`` as str; ``groups`` = ``subject_id`` as str):

        * ``clinical``: ``age`` at admission (years; MIMIC shifts ages above 89 to about 300 to de-identify
            them, so every age above 89 is set to 90 and counted in ``excluded``), ``gender`` and
            ``admission_type`` (categorical).
        * ``events`` (see the module docstring for the leakage rules and the time axis).
        * ``labels``: ``hospital_expire_flag`` (int, 1 = died in hospital).

        With the default 48 h the demo's 129 admissions (100 patients, 40 deaths) become 115 samples of
        87 patients with 29 deaths; the 14 short admissions are one record of ``excluded``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(
            f"load_mimic3_demo: {str(folder)!r} is not a folder; pass the MIMIC-III demo CSV folder"
        )
    if not (
        isinstance(prediction_hours, int | float) and np.isfinite(prediction_hours) and prediction_hours > 0
    ):
        raise ValueError(
            f"load_mimic3_demo: prediction_hours must be a positive number, got {prediction_hours!r}"
        )
    include = tuple(include)
    unknown = [s for s in include if s not in SOURCES]
    if unknown:
        raise ValueError(
            f"load_mimic3_demo: unknown event source(s) {unknown} in include; expected some of {SOURCES}"
        )
    excluded: list[dict] = []

    cols = [
        "subject_id",
        "hadm_id",
        "admittime",
        "dischtime",
        "deathtime",
        "admission_type",
        "hospital_expire_flag",
    ]
    adm = _read(folder, "ADMISSIONS", cols, ["admittime", "dischtime", "deathtime"])
    adm = adm.sort_values(["subject_id", "admittime", "hadm_id"], kind="stable").reset_index(drop=True)
    adm["order"] = adm.groupby("subject_id").cumcount()
    horizon = pd.Timedelta(hours=float(prediction_hours))
    adm["pred_time"] = adm["admittime"] + horizon
    ended = adm[["dischtime", "deathtime"]].min(axis=1) < adm["pred_time"]
    if ended.any():
        short = adm.loc[ended, "hadm_id"].astype(str).tolist()
        excluded.append(
            note(
                "admissions ended before the prediction time",
                None,
                len(short),
                f"discharged or dead within {prediction_hours:g} h of admission (outcome known at prediction "
                f"time): hadm_id {', '.join(short)}",
            )
        )
    samples = adm.loc[~ended].copy()
    sid = samples["hadm_id"].astype(str).to_numpy()

    # clinical: age from date parts (shifted birth dates overflow nanosecond Timedeltas)
    pat = _read(folder, "PATIENTS", ["subject_id", "gender", "dob"], ["dob"]).set_index("subject_id")
    dob = samples["subject_id"].map(pat["dob"])
    a, b = samples["admittime"], dob
    age = (a.dt.year - b.dt.year) + (a.dt.dayofyear - b.dt.dayofyear) / 365.25
    capped = age > 89
    if capped.any():
        excluded.append(
            note(
                "age above 89 set to 90",
                "clinical",
                int(capped.sum()),
                "MIMIC-III shifts the birth date of patients older than 89 (ages near 300); "
                "the true age is unknown",
            )
        )
    clinical = pd.DataFrame(
        {
            "age": np.round(age.where(~capped, _AGE_CAP).to_numpy(dtype=float), 2),
            "gender": samples["subject_id"].map(pat["gender"]).to_numpy(),
            "admission_type": samples["admission_type"].to_numpy(),
        },
        index=pd.Index(sid, name="sample_id"),
    )

    parts = _timed_events(folder, set(include), excluded)
    if "icd" in include:
        parts.append(_icd_events(folder, adm))
    events = _link_events(parts, adm, samples, horizon, history, "icd" in include, excluded)

    return Cohort(
        clinical=clinical,
        events=events,
        labels=pd.Series(samples["hospital_expire_flag"].astype(int).to_numpy(), index=sid, name="label"),
        groups=pd.Series(samples["subject_id"].astype(str).to_numpy(), index=sid, name="subject_id"),
        clinical_types={"age": "numeric", "gender": "categorical", "admission_type": "categorical"},
        index_time=pd.Series(float(prediction_hours) / 24.0, index=sid, name="index_time"),
        name=f"MIMIC-III demo (in-hospital death, {prediction_hours:g} h)",
        excluded=excluded,
    )


def _link_events(parts, adm, samples, horizon, history, icd, excluded) -> pd.DataFrame | None:
    """Attach every event to the samples (admissions) it may inform and put it on their time axes."""
    if not parts:
        return None
    ev = pd.concat(parts, ignore_index=True)
    bad = ev["when"].isna() | ev["hadm_id"].isna()
    if bad.any():
        excluded.append(
            note("events without a time or admission", "events", int(bad.sum()), "cannot be placed")
        )
        ev = ev[~bad]
    ev = ev.merge(adm[["hadm_id", "order"]].rename(columns={"order": "ev_order"}), on="hadm_id", how="inner")
    target = samples[["subject_id", "hadm_id", "order", "admittime", "pred_time"]].rename(
        columns={"hadm_id": "sample_hadm"}
    )
    ev = ev.merge(target, on="subject_id", how="inner")
    ev["segment"] = ev["order"] - ev["ev_order"]
    earlier_only = ev["code"].str.startswith(("dx:", "px:")) if icd else False
    keep = (ev["segment"] >= 0) if history else (ev["segment"] == 0)
    keep &= ~(earlier_only & (ev["segment"] == 0))  # ICD codes of the own admission are coded at discharge
    ev = ev[keep]
    late = ev["when"] > ev["pred_time"]
    if late.any():
        excluded.append(
            note(
                "events after the prediction time",
                "events",
                int(late.sum()),
                f"charted after admittime + {horizon / pd.Timedelta(hours=1):g} h",
            )
        )
        ev = ev[~late]
    out = pd.DataFrame(
        {
            "sample_id": ev["sample_hadm"].astype(str).to_numpy(),
            "time": ((ev["when"] - ev["admittime"]) / _DAY).to_numpy(dtype=float),
            "code": ev["code"].to_numpy(),
            "value": ev["value"].to_numpy(dtype=float),
            "segment": ev["segment"].to_numpy(dtype=np.int64),
        }
    )
    return out.sort_values(["sample_id", "time", "code"], kind="stable").reset_index(drop=True)
