"""``prediction_frame``: a fitted model's predictions for a cohort, one row per sample, with its targets.

One builder for the CLI's ``predictions.csv`` and ``cross_validate``'s out-of-fold predictions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def prediction_frame(model: Any, cohort: Any, *, survival_curves: bool = True,
                     pattern: bool = True, missing: bool = False) -> pd.DataFrame:
    """Predictions indexed by sample id, with the cohort's targets when it has them.

    Classification: ``proba_<class>`` columns and ``prediction`` (the most probable class), then ``label``.
    Survival: ``risk``, with ``survival_curves`` the survival probabilities ``S(t=...)`` at the time-bin ends
    (discrete head) or at the quartiles of the baseline hazard's times (Cox), then ``time`` and ``event``.
    ``pattern``: a column naming each sample's missingness pattern (which modalities it has).
    ``missing``: a column listing the variables each sample had no value of (``missing_variables``).
    """
    ids = [str(s) for s in cohort.sample_ids]
    if model.task == "classification":
        proba = model.predict_proba(cohort)
        frame = proba.add_prefix("proba_")
        frame["prediction"] = np.asarray(proba.columns, dtype=object)[np.argmax(proba.to_numpy(), axis=1)]
        if cohort.labels is not None:
            frame["label"] = cohort.labels.loc[ids].to_numpy()
    else:
        frame = model.predict_risk(cohort).to_frame("risk")
        if survival_curves:
            if model.survival_head == "discrete":
                times = [t for t in model.time_bins_[1:] if math.isfinite(t)]
            else:
                times = list(np.quantile(model.baseline_hazard_["times"], [0.25, 0.5, 0.75]))
            surv = model.predict_survival(cohort, times)
            for t in times:
                frame[f"S(t={t:g})"] = surv[t].to_numpy()
        if cohort.survival is not None:
            frame["time"] = cohort.survival.loc[ids, "time"].to_numpy(float)
            frame["event"] = cohort.survival.loc[ids, "event"].to_numpy(int)
    if pattern:
        from .metrics import pattern_names

        presence = cohort.presence().reindex(index=ids, columns=model.modalities_, fill_value=False)
        frame["pattern"] = pattern_names(presence).to_numpy()
    if missing:
        from ..datasets.missingness import missing_variables

        frame["missing"] = missing_variables(model.preprocessor_, cohort).loc[ids].to_numpy()
    return frame
