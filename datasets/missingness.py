"""What a prediction treats as missing, and what it uses although it differs from training, per cohort.

At prediction time a blank value, a clinical column the table lacks and a whole missing modality are the
trained "missing" case: never an error. :func:`missing_variables` records which variables each sample is
missing (the ``missing`` column of the CLI's ``predictions.csv``); :func:`data_warnings` lists what differs
from training but is used (unseen categories, a column whose scale changed, events cut by ``max_events`` or
far older than the training span); ``FusionModel`` issues each as a :class:`DataWarning` when it predicts.
"""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd


class DataWarning(UserWarning):
    """Data used by a prediction that differ from the training data (missing, unseen or rescaled)."""


def missing_variables(preprocessor: Any, cohort: Any) -> pd.Series:
    """Str Series sample id -> ``"; "``-joined variables the sample has no value of: fitted modalities it
    lacks (``"images"``), and within a modality it has, the fitted variables it lacks (clinical columns);
    ``""`` when nothing is missing."""
    ids = [str(s) for s in cohort.sample_ids]
    missing: dict[str, list[str]] = {s: [] for s in ids}
    presence = cohort.presence()
    for m in preprocessor.modalities_:
        data = getattr(cohort, m, None)
        within = {} if data is None else preprocessor.preprocessors_[m].missing_values(data)
        for s in ids:
            if m not in presence or not presence.at[s, m]:
                missing[s].append(m)
            else:
                missing[s].extend(within.get(s, []))
    return pd.Series({s: "; ".join(v) for s, v in missing.items()}, name="missing", dtype=object)


def data_warnings(preprocessor: Any, cohort: Any) -> list[str]:
    """One message per way ``cohort`` differs from the training data without being an error."""
    out = []
    for m in preprocessor.modalities_:
        data = getattr(cohort, m, None)
        if data is not None:
            out.extend(preprocessor.preprocessors_[m].data_warnings(data, cohort))
    return out


def warn_data(preprocessor: Any, cohort: Any) -> list[str]:
    """Issue each of :func:`data_warnings` as a :class:`DataWarning`; returns them."""
    messages = data_warnings(preprocessor, cohort)
    for message in messages:
        warnings.warn(message, DataWarning, stacklevel=4)
    return messages
