"""``FusionModel.explain(cohort, out=.parquet)``: rows streamed batch by batch, kinds, atomicity, flat memory.

Uses the shared ``fitted_classifier`` (PersAM, batch_size 8) from ``conftest.py``; the large-cohort figures
(peak memory across 100 / 300 / 1,000 samples, explain vs predict time) are in
``benchmarks/bench_explain.py``.
"""

from __future__ import annotations

import math

import pandas as pd
import pyarrow.parquet as pq
import pytest
from clinfuse.fusion.explain import COLUMNS, ParquetStream

SORT = ["sample_id", "kind", "modality", "token", "target_class"]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(SORT, na_position="first", kind="stable").reset_index(drop=True)


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())  # hidden temporaries included


def test_streamed_rows_equal_in_memory_rows(fitted_classifier, tmp_path):
    model, cohort = fitted_classifier.model, fitted_classifier.cohort
    memory = model.explain(cohort)
    out = tmp_path / "att.parquet"
    streamed = model.explain(cohort, out=out)
    assert streamed.path == out and _files(tmp_path) == ["att.parquet"]
    on_disk = pd.read_parquet(out)
    assert list(on_disk.columns) == list(COLUMNS)
    # rows are streamed as dictionary arrays; the file holds plain strings for every reader
    import pyarrow as pa
    import pyarrow.parquet as pq
    from clinfuse.fusion.explain import ARROW_SCHEMA

    assert [f.type for f in pq.read_schema(out)] == [f.type for f in ARROW_SCHEMA]
    # sample_id has min/max statistics per row group, so a reader filtering one sample skips the others
    meta = pq.ParquetFile(out).metadata
    stats = [meta.row_group(g).column(0).statistics for g in range(meta.num_row_groups)]
    assert meta.num_row_groups > 1 and all(s is not None and s.has_min_max for s in stats)
    assert all(s.min <= s.max for s in stats)
    # numbers are stored as float32 (the model's precision) and read back by the report as float64
    floats = [f.name for f in ARROW_SCHEMA if pa.types.is_floating(f.type)]
    assert all(f.type == pa.float32() for f in ARROW_SCHEMA if f.name in floats)
    assert (on_disk[floats].dtypes == "float32").all()
    # same rows in the same order (both follow the loader's batches), values exactly equal
    pd.testing.assert_frame_equal(on_disk.astype({c: "float64" for c in floats}), memory.to_frame(),
                                  check_exact=True)
    pd.testing.assert_frame_equal(streamed.to_frame(), memory.to_frame(), check_exact=True)
    # every sample and every kind the model provides is there
    assert set(on_disk.sample_id) == set(cohort.sample_ids)
    assert set(on_disk.kind) == set(model.attention_kinds)


def test_kinds_restricts_the_streamed_rows(fitted_classifier, tmp_path):
    model, cohort = fitted_classifier.model, fitted_classifier.test
    kinds = ["modality", "explanatory"]
    assert set(kinds) < set(model.attention_kinds)
    streamed = model.explain(cohort, out=tmp_path / "k.parquet", kinds=kinds).to_frame()  # read from the file
    assert set(streamed.kind) == set(kinds)
    full = model.explain(cohort).to_frame()
    expected = full[full.kind.isin(kinds)]
    pd.testing.assert_frame_equal(_sorted(streamed), _sorted(expected), check_exact=True)
    # a single kind may be given as a string
    single = pd.read_parquet(model.explain(cohort, out=tmp_path / "p.parquet", kinds="patch").path)
    assert set(single.kind) == {"patch"} and len(single) == (full.kind == "patch").sum()


@pytest.mark.parametrize("kinds", [["nonsense"], ["modality", "shap"], ["patch", "wrong"]])
def test_bad_kind_raises_before_any_file(fitted_classifier, tmp_path, monkeypatch, kinds):
    model = fitted_classifier.model
    calls = []
    monkeypatch.setattr(model, "iter_attention", lambda *a, **k: calls.append(1) or iter(()))
    bad = [k for k in kinds if k not in model.attention_kinds]
    with pytest.raises(ValueError, match="|".join(bad)):
        model.explain(fitted_classifier.test, out=tmp_path / "sub" / "att.parquet", kinds=kinds)
    assert calls == []  # rejected before the model ran
    assert _files(tmp_path) == []  # not even the output folder was created


def test_interrupted_stream_leaves_nothing_behind(fitted_classifier, tmp_path, monkeypatch):
    model, cohort = fitted_classifier.model, fitted_classifier.cohort
    out = tmp_path / "att.parquet"
    out.write_bytes(b"previous export")  # an existing file must survive an interrupted rewrite untouched
    original = model.iter_attention
    seen = []

    def failing(*args, **kwargs):
        for batch in original(*args, **kwargs):
            seen.append(batch[0].sample_ids)
            yield batch
            raise KeyboardInterrupt("stopped after the first batch")

    monkeypatch.setattr(model, "iter_attention", failing)
    with pytest.raises(KeyboardInterrupt):
        model.explain(cohort, out=out)
    assert len(seen) == 1
    assert _files(tmp_path) == ["att.parquet"] and out.read_bytes() == b"previous export"
    out.unlink()
    monkeypatch.setattr(model, "iter_attention", failing)
    with pytest.raises(KeyboardInterrupt):
        model.explain(cohort, out=out)
    assert _files(tmp_path) == []  # no truncated file, no temporary


def test_error_while_writing_in_the_background_reaches_the_caller(fitted_classifier, tmp_path, monkeypatch):
    """A failure while a batch is converted or written (in the background thread) is raised by ``explain``
    itself, and neither the file nor a temporary is left."""
    import clinfuse.fusion.explain.run as report_module

    model, cohort = fitted_classifier.model, fitted_classifier.cohort
    original, calls = report_module.records_to_table, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full while writing batch 2")
        return original(*args, **kwargs)

    monkeypatch.setattr(report_module, "records_to_table", failing)
    with pytest.raises(OSError, match="disk full"):
        model.explain(cohort, out=tmp_path / "att.parquet")
    assert _files(tmp_path) == []
    # the next export works normally
    monkeypatch.setattr(report_module, "records_to_table", original)
    assert len(pd.read_parquet(model.explain(cohort, out=tmp_path / "att.parquet").path)) > 0


def test_rows_are_written_batch_by_batch(fitted_classifier, tmp_path, monkeypatch):
    """Batch k is written (in the background thread) before batch k + 2 is computed, so at most one batch is
    in flight; the report is backed by the file, not by frames."""
    model, cohort = fitted_classifier.model, fitted_classifier.cohort
    events: list[tuple[str, int]] = []
    original_iter, original_write = model.iter_attention, ParquetStream.write

    def iter_logged(*args, **kwargs):
        for item in original_iter(*args, **kwargs):
            events.append(("batch", len(item[0].sample_ids)))
            yield item

    def write_logged(self, rows):
        events.append(("write", len(rows)))
        return original_write(self, rows)

    monkeypatch.setattr(model, "iter_attention", iter_logged)
    monkeypatch.setattr(ParquetStream, "write", write_logged)
    out = tmp_path / "att.parquet"
    report = model.explain(cohort, out=out)

    n_batches = math.ceil(len(cohort) / model.batch_size)
    assert n_batches >= 3
    kinds = [e[0] for e in events]
    assert kinds.count("batch") == kinds.count("write") == n_batches
    batch_at = [i for i, k in enumerate(kinds) if k == "batch"]
    write_at = [i for i, k in enumerate(kinds) if k == "write"]
    for k in range(n_batches):  # nothing accumulates: write k follows batch k and precedes batch k + 2
        assert batch_at[k] < write_at[k]
        if k + 2 < n_batches:
            assert write_at[k] < batch_at[k + 2]
    # the report holds the path; nothing was kept in memory (the frame is read lazily on first use)
    assert report.path == out and report._frame is None
    meta = pq.ParquetFile(out).metadata
    assert meta.num_row_groups == n_batches  # one row group per batch
    rows_per_write = [n for what, n in events if what == "write"]
    assert [meta.row_group(i).num_rows for i in range(n_batches)] == rows_per_write
    # the rows of each row group are exactly the samples of that batch
    batch_sizes = [n for what, n in events if what == "batch"]
    first = pq.ParquetFile(out).read_row_group(0, columns=["sample_id"]).column(0).to_pylist()
    assert len(set(first)) == batch_sizes[0]
    assert report._frame is None
    assert len(report.to_frame()) == sum(rows_per_write)


def test_streaming_many_samples_keeps_batches_bounded(fitted_classifier, tmp_path, monkeypatch):
    """No write grows with the cohort: the largest write is one batch's rows, whatever the cohort size."""
    model = fitted_classifier.model
    cohort = fitted_classifier.cohort
    sizes: dict[int, list[int]] = {}
    original_write = ParquetStream.write

    for n in (16, len(cohort)):
        sub = cohort.subset(cohort.sample_ids[:n])
        writes: list[int] = []

        def write_logged(self, rows, _writes=writes):
            _writes.append(len(rows))
            return original_write(self, rows)

        monkeypatch.setattr(ParquetStream, "write", write_logged)
        model.explain(sub, out=tmp_path / f"att{n}.parquet")
        sizes[n] = writes
    small, large = sizes[16], sizes[len(cohort)]
    assert len(large) > len(small)
    # bags differ in size (6-16 patches), so batches differ a little; a cohort-sized write would be 3x larger
    assert max(large) <= 1.5 * max(small)
    assert sum(large) == len(pd.read_parquet(tmp_path / f"att{len(cohort)}.parquet"))


def test_a_tidy_frame_streams_too(fitted_classifier, tmp_path):
    """``ParquetStream.write`` also takes a tidy DataFrame (text converted to the stream's dictionary
    columns)."""
    from clinfuse.fusion.explain import AttentionReport, ParquetStream

    frame = fitted_classifier.model.explain(fitted_classifier.test, kinds=["patch"]).to_frame()
    stream = ParquetStream(tmp_path / "frame.parquet")
    stream.write(frame)
    path = stream.close()
    pd.testing.assert_frame_equal(AttentionReport(path=path).to_frame(), frame.reset_index(drop=True),
                                  check_exact=True)
