"""What a prediction uses although it differs from training is recorded as a DataWarning, not passed
silently; ``explain(out=...)`` refuses names it would not write as named."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from clinfuse.datasets import Cohort, Preprocessor
from clinfuse.datasets.missingness import DataWarning, data_warnings


def _messages(model, cohort):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict_proba(cohort)
    return [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def test_unseen_categorical_level_is_a_warning(fitted_classifier):
    test = fitted_classifier.test
    clinical = test.clinical.copy()
    sid = clinical.index[0]
    clinical.loc[sid, "site"] = "site_z"
    messages = _messages(fitted_classifier.model, Cohort(clinical=clinical))
    assert any(f"'site' has level(s) 'site_z' not seen in training (sample(s) '{sid}')" in m
               for m in messages)


def test_a_column_rescaled_by_orders_of_magnitude_is_a_warning(fitted_classifier):
    clinical = fitted_classifier.test.clinical.assign(age=lambda f: f["age"] * 1000)
    messages = _messages(fitted_classifier.model, Cohort(clinical=clinical))
    assert any("'age' has median" in m and "a change of unit or scale?" in m for m in messages)
    assert not _messages(fitted_classifier.model, Cohort(clinical=fitted_classifier.test.clinical))


def test_events_cut_by_max_events_are_recorded(fitted_classifier):
    cohort = fitted_classifier.train
    pre = Preprocessor(max_events=3).fit(cohort)
    per = cohort.events.groupby("sample_id").size()
    cut = int((per[per > 3] - 3).sum())
    assert any(f"more than max_events=3 events; their {cut} oldest event(s) are not used" in m
               for m in data_warnings(pre, cohort))
    assert not any("max_events" in m for m in data_warnings(Preprocessor().fit(cohort), cohort))


def test_events_far_outside_the_training_span_are_recorded(fitted_classifier):
    model, test = fitted_classifier.model, fitted_classifier.test
    events = test.events.copy()
    sid = events["sample_id"].iloc[0]
    events.loc[events.index[0], "time"] = -1e7  # a date typo: 27 000 years before the others
    cohort = Cohort(events=events, index_time=test.index_time)
    messages = _messages(model, cohort)
    assert any(f"1 event(s) of sample(s) '{sid}' lie up to 1e+07 days before the index time" in m
               for m in messages)
    assert not any("days before the index time" in m for m in _messages(model, Cohort(events=test.events,
                                                                                       index_time=test.index_time)))


@pytest.mark.parametrize("name", ["x.csv", "x.parquet.tmp", "x"])
def test_explain_refuses_a_non_parquet_name_before_any_work(fitted_classifier, tmp_path, monkeypatch, name):
    model = fitted_classifier.model
    monkeypatch.setattr(type(model), "iter_attention", lambda *a, **k: pytest.fail("work was done"))
    with pytest.raises(ValueError, match=r"must end in \.parquet"):
        model.explain(fitted_classifier.test, out=tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_explain_refuses_an_existing_folder_before_any_work(fitted_classifier, tmp_path, monkeypatch):
    model = fitted_classifier.model
    folder = tmp_path / "out.parquet"
    folder.mkdir()
    monkeypatch.setattr(type(model), "iter_attention", lambda *a, **k: pytest.fail("work was done"))
    with pytest.raises(ValueError, match="is an existing folder"):
        model.explain(fitted_classifier.test, out=folder)
    assert folder.is_dir() and list(folder.iterdir()) == []
    np.testing.assert_equal(len(list(tmp_path.iterdir())), 1)
