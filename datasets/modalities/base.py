"""The :class:`Modality` interface: one object holds every rule of one kind of data.

The library loops over the registered modalities (:mod:`.registry`) instead of naming them: the
:class:`~clinfuse.datasets.Cohort` asks each one to validate its input, list its samples, subset it and
describe it; the :class:`~clinfuse.datasets.Preprocessor` composes their fitted :class:`ModalityPreprocessor`
parts (as scikit-learn's ``ColumnTransformer`` composes transformers); the data loader asks each for a
:class:`SampleReader` and collates its items into a :class:`~clinfuse.datasets.ModalityBatch`; the CLI's data
config reads and writes each modality's files through it; the model picks each modality's default encoder,
token kind and report columns from it. A new modality is one subclass and one ``register_modality`` call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

if TYPE_CHECKING:  # the batch module imports the registry: no import of it at run time here
    import torch

    from ..batch import ModalityBatch
    from ..files import DataSource

NOT_FITTED = "Preprocessor is not fitted yet, call fit first"


class NotFittedError(ValueError, AttributeError):
    """Raised when a preprocessor is used before :meth:`Preprocessor.fit` (a ``ValueError``; also an
    ``AttributeError`` so that ``hasattr(p, "schema_")`` is False before fitting, as in scikit-learn)."""


class Normalised(NamedTuple):
    """What :meth:`Modality.normalise` returns."""

    data: Any  # the validated data (None: nothing left)
    attributes: dict[str, Any]  # cohort attributes the modality sets (e.g. ``clinical_types``)
    excluded: list[dict[str, Any]]  # records of what was cut (``what, modality, sample_id, count, reason``)


class ModalityPreprocessor(ABC):
    """The fitted statistics of one modality: ``fit`` on training data, then ``transform`` anything.

    Subclasses set ``params`` (the :class:`~clinfuse.datasets.Preprocessor` keywords they take, validated by
    their ``__init__``), implement ``_fit`` / ``_load`` / ``state`` / ``schema`` / ``transform`` and may add
    ``check_compatible``. The fitted attributes (names ending in ``_``) are read through the Preprocessor too
    (``preprocessor.genes_``).
    """

    params: ClassVar[tuple[str, ...]] = ()

    @property
    def is_fitted(self) -> bool:
        return bool(self.__dict__.get("_fitted"))

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(NOT_FITTED)

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.params}

    def fit(self, data: Any, cohort: Any) -> ModalityPreprocessor:
        """Learn the statistics from this modality's ``data`` of the training ``cohort``. Returns ``self``."""
        self._fit(data, cohort)
        self._fitted = True
        return self

    @abstractmethod
    def _fit(self, data: Any, cohort: Any) -> None: ...

    @abstractmethod
    def transform(self, data: Any, *context: Any) -> Any:
        """The modality's data -> model-ready arrays (the modality's reader knows the exact signature)."""

    @abstractmethod
    def schema(self) -> dict[str, Any]:
        """The JSON-able ``Preprocessor.schema_[modality]`` entry that the encoders size themselves from."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The JSON-able fitted statistics (the ``fitted[modality]`` entry of ``Preprocessor.to_dict``)."""

    @abstractmethod
    def _load(self, state: dict[str, Any]) -> None: ...

    def to_dict(self) -> dict[str, Any]:
        """``{"params": ..., "fitted": state() or None}``, JSON-able; :meth:`from_dict` reverses it."""
        return {"params": self.get_params(), "fitted": self.state() if self.is_fitted else None}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ModalityPreprocessor:
        return cls.from_state(state.get("fitted"), **dict(state.get("params") or {}))

    @classmethod
    def from_state(cls, fitted: Mapping[str, Any] | None, **params: Any) -> ModalityPreprocessor:
        """A preprocessor with ``params`` and the fitted statistics ``fitted`` (the output of
        :meth:`state`)."""
        self = cls(**params)
        if fitted is not None:
            self._load(dict(fitted))
            self._fitted = True
        return self

    def check_compatible(self, data: Any) -> list[str]:
        """How this modality's new ``data`` differs from what was fitted (one string per problem)."""
        return []

    def data_warnings(self, data: Any, cohort: Any) -> list[str]:
        """What in this modality's new ``data`` is used but differs from training (one string each):
        not an error, recorded with the predictions."""
        return []

    def missing_values(self, data: Any) -> dict[str, list[str]]:
        """Sample -> the variables of this modality it has no value of (the sample does have the
        modality)."""
        return {}


@dataclass
class ReadContext:
    """How a :class:`~clinfuse.datasets.CohortDataset` reads items: training mode, patch budget, seeds."""

    train: bool = False
    max_patches: int | None = None
    seed: int = 0
    epoch: int = 0
    stream: bool = False  # whole image bags as row sources read by the encoder in chunks (prediction)


class SampleReader(ABC):
    """One modality's data for a dataset: built once (vectorised transforms), then read one sample at a
    time inside the ``DataLoader`` workers (so it must pickle)."""

    @abstractmethod
    def read(self, sample_id: str, index: int, context: ReadContext) -> Any | None:
        """The item of sample ``sample_id`` (at ``index`` in the dataset), or None when it lacks the
        modality."""


@dataclass
class TableReader(SampleReader):
    """Rows of arrays transformed once for the whole table: ``arrays`` is ``[n, ...]`` or a dict of them."""

    rows: dict[str, int]
    arrays: Any
    fields: tuple[str, ...] | None = field(default=None)

    def read(self, sample_id: str, index: int, context: ReadContext) -> Any | None:
        row = self.rows.get(sample_id)
        if row is None:
            return None
        if isinstance(self.arrays, dict):
            return {k: v[row] for k, v in self.arrays.items()}
        return self.arrays[row]


class Modality(ABC):
    """Every rule of one modality (see the module docstring). One instance per modality, registered once.

    Class attributes:
        name: the Cohort keyword, attribute, schema key and batch key (``"clinical"``).
        token_kind: the attention ``kind`` its tokens are reported under (``"feature"``).
        preprocessor_class: its :class:`ModalityPreprocessor`.
        options: further Cohort keywords it reads (``clinical_types``); given without data they are an error.
        noun: what one sample's data is called in messages (``"clinical row"``).
        data_keys: its keys of the CLI's data config (YAML) -> their help text; the first names its file.
        report_columns: the per-token report columns :meth:`token_grids` gives (in report order).
    """

    name: ClassVar[str]
    token_kind: ClassVar[str]
    preprocessor_class: ClassVar[type[ModalityPreprocessor]]
    options: ClassVar[tuple[str, ...]] = ()
    noun: ClassVar[str] = "sample"
    data_keys: ClassVar[dict[str, str]] = {}
    report_columns: ClassVar[tuple[str, ...]] = ()
    holds_targets: ClassVar[bool] = False
    """Whether its data-config table also holds the target columns when ``data.targets`` is not given."""
    layout: ClassVar[str | None] = None
    """The registered modality whose batch contract (tensors, meta, schema entry) this one's batches follow,
    so that the encoders written for it encode this one too (a protein panel laid out like ``genomics``);
    None: its own."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, token_kind={self.token_kind!r})"

    # ------------------------------------------------------------------ the cohort side
    @abstractmethod
    def normalise(self, data: Any, options: Mapping[str, Any]) -> Normalised:
        """Validate the user's ``data`` (never None here) with its ``options``; ids become ``str``. Errors
        are ``ValueError`` / ``TypeError`` naming the modality, sample ids / columns and what was expected."""

    def attribute_defaults(self) -> dict[str, Any]:
        """Cohort attributes this modality owns and their value when it has no data
        (``clinical_types={}``)."""
        return {}

    def check_options_without_data(self, options: Mapping[str, Any]) -> None:
        """Raise when options are given but the data are not."""
        given = [k for k in self.options if options.get(k) is not None]
        if given:
            raise ValueError(f"{self.name}: {' / '.join(given)} given without {self.name} data")

    def restrict(self, data: Any, options: Mapping[str, Any], keep: set[str]) -> Normalised:
        """A last pass once the cohort's samples ``keep`` are known (events drop those after the index
        time). The data may shrink or vanish (None); the cohort then drops samples left with no data."""
        return Normalised(data, {}, [])

    cut_reason: ClassVar[str] = ""
    """Why :meth:`restrict` can leave a sample with no data (for the exclusion record)."""
    cut_everything_error: ClassVar[str] = ""
    """The error when :meth:`restrict` leaves no sample with any data."""

    @abstractmethod
    def sample_ids(self, data: Any) -> list[str]:
        """The samples that have data of this modality, in data order (unique)."""

    @abstractmethod
    def subset(self, data: Any, ids: list[str]) -> Any | None:
        """The data of ``ids`` (each has data here), in that order; None when ``ids`` is empty. No
        re-validation."""

    def subset_attributes(self, attributes: Mapping[str, Any], keep: set[str]) -> dict[str, Any]:
        """The modality's cohort attributes for a subset of the samples ``keep`` (copies)."""
        return {k: dict(v) if isinstance(v, dict) else v for k, v in attributes.items()}

    def summary_lines(self, data: Any, cohort: Any) -> list[str]:
        """Its lines of ``Cohort.summary()`` (indented two spaces)."""
        return []

    @abstractmethod
    def shape(self, data: Any) -> Any:
        """A JSON-able description of the data's size, for the provenance fingerprint of a saved model."""

    # ------------------------------------------------------------------ the model side
    def make_preprocessor(self, **params: Any) -> ModalityPreprocessor:
        """An unfitted preprocessor (``params``: the Preprocessor keywords in
        ``preprocessor_class.params``)."""
        return self.preprocessor_class(**params)

    @abstractmethod
    def default_encoder(self, schema_entry: Mapping[str, Any]) -> str:
        """The registered encoder used when none is named (``schema_entry`` = ``schema_[name]``)."""

    @abstractmethod
    def reader(self, data: Any, cohort: Any, preprocessor: ModalityPreprocessor) -> SampleReader:
        """A :class:`SampleReader` over the cohort's ``data``, transformed by the fitted ``preprocessor``."""

    @abstractmethod
    def collate(self, items: Sequence[Any | None], schema_entry: Mapping[str, Any],
                present: torch.Tensor) -> ModalityBatch:
        """Pad ``items`` (one per sample, None = absent) into a ModalityBatch; ``present`` bool ``[B]``."""

    def token_grids(self, batch: ModalityBatch | None, meta: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
        """The per-token report columns (``report_columns``) of every token, before any selection.

        ``meta`` holds per-token values an aggregator recorded itself (``AttentionRecord.meta``); they win
        over the batch's. Pass ``batch=None`` when the record's tokens are not this batch's tokens. Numbers
        come as ``[B, T]`` tensors or arrays, text as ``[B][T]`` nested lists ("" = padding); a column with
        no source is left out. The report selects the rows it writes from these grids.
        """
        return {}

    # ------------------------------------------------------------------ files (the CLI's data config)
    def check_config(self, spec: Mapping[str, Any]) -> None:
        """Check this modality's data-config values (keys are already known to be valid)."""

    def read_files(self, source: DataSource) -> dict[str, Any]:
        """Read this modality's files named in ``source.spec``: the Cohort keywords (data and options).
        Called only when the spec names the modality's file (its first data key)."""
        return {}

    def table_columns(self, data: Any, cohort: Any) -> tuple[Any, dict[str, Any]]:
        """Columns this modality writes into the shared per-sample table (a DataFrame or None) and the
        data-config entries that go with them."""
        return None, {}

    def write_files(self, data: Any, cohort: Any, folder: Path) -> dict[str, Any]:
        """Write this modality's own files into ``folder``; return their data-config entries."""
        return {}


def as_numpy(value: Any) -> np.ndarray:
    """A tensor (any device), array or nested list as a numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def pad_tokens(
    items: Sequence[Mapping[str, Any] | None],
    arrays: Mapping[str, tuple[tuple[int, ...], Any]],
    texts: Sequence[str],
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, list[list[str]]], list[int]]:
    """Pad variable-length items (one per sample, None = absent) to T = the longest (at least 1).

    ``arrays``: item key -> (per-token shape, dtype), padded with zeros to ``[B, T, *shape]``; ``texts``: item
    keys of per-token strings, padded with "" to ``[B][T]``. Returns (arrays, mask bool ``[B, T]``, texts,
    lengths); the first array key gives each item's length.
    """
    first = next(iter(arrays))
    lengths = [0 if item is None else len(item[first]) for item in items]
    B, T = len(items), max(max(lengths, default=0), 1)  # T >= 1 so that encoders never see an empty axis
    out = {key: np.zeros((B, T, *shape), dtype=dtype) for key, (shape, dtype) in arrays.items()}
    mask = np.zeros((B, T), dtype=bool)
    grids = {key: [[""] * T for _ in range(B)] for key in texts}
    for b, (item, n) in enumerate(zip(items, lengths, strict=True)):
        if item is None:
            continue
        mask[b, :n] = True
        for key, array in out.items():
            array[b, :n] = item[key]
        for key, grid in grids.items():
            grid[b][:n] = item[key]
    return out, mask, grids, lengths
