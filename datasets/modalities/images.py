"""The images modality: per sample, a bag of patch feature vectors ``[N, D]`` or raw patches ``[N, C, H, W]``.

Input: :class:`~clinfuse.datasets.ImageBags` (a plain dict goes to ``ImageBags.from_features``). Fitted: the
feature dimension or the pixel shape. One token per patch; bags stay on disk and are read per item (a
random subset of ``max_patches`` patches in training, every patch at inference).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..atomic import atomic_path
from ..batch import ModalityBatch
from ..images import ImageBags
from ..safe_names import file_stem
from ..validation import format_ids
from .base import (
    Modality,
    ModalityPreprocessor,
    Normalised,
    ReadContext,
    SampleReader,
    as_numpy,
    pad_tokens,
)

IMAGES_MANIFEST = "images.parquet"  # written by write_files where a sample id is not a safe file name
_UNNAMED_SLIDES = ("", "slide0")  # ImageBags' id for a lone in-memory array: its tokens are named `position`


class ImagesPreprocessor(ModalityPreprocessor):
    """Records the bag format (feature dim, or pixel shape) that the image encoder is sized for."""

    def _fit(self, images: ImageBags, cohort: Any) -> None:
        if images.kind == "features":
            self.image_schema_ = {"kind": "features", "feature_dim": int(images.feature_dim)}
        else:
            c, h, w = (int(v) for v in images.pixel_shape)
            self.image_schema_ = {"kind": "pixels", "channels": c, "height": h, "width": w}

    def transform(self, images: ImageBags) -> ImageBags:
        """Bags are read lazily, per item: nothing to transform up front."""
        self._check_fitted()
        return images

    def schema(self) -> dict[str, Any]:
        return dict(self.image_schema_)

    def state(self) -> dict[str, Any]:
        return dict(self.image_schema_)

    def _load(self, state: dict[str, Any]) -> None:
        self.image_schema_ = dict(state)

    def check_compatible(self, images: ImageBags) -> list[str]:
        want = self.image_schema_
        if images.kind != want["kind"]:
            return [f"images: kind {images.kind!r}, fitted on {want['kind']!r}"]
        if want["kind"] == "features" and int(images.feature_dim) != want["feature_dim"]:
            return [f"images: feature dim {images.feature_dim}, fitted on {want['feature_dim']}"]
        if want["kind"] == "pixels":
            shape = tuple(int(v) for v in images.pixel_shape)
            fitted = (want["channels"], want["height"], want["width"])
            if shape != fitted:
                return [f"images: pixel shape (C, H, W) {shape}, fitted on {fitted}"]
        return []


@dataclass
class BagReader(SampleReader):
    """Reads a sample's bag from its ImageBags, subsampled to ``max_patches`` in training.

    The draw for item ``i`` depends on (seed, epoch, i, how often i was read), so runs are reproducible and
    successive epochs see different patches.
    """

    images: ImageBags
    draws: dict[int, int] = field(default_factory=dict)

    def read(self, sample_id: str, index: int, context: ReadContext) -> dict[str, Any] | None:
        if sample_id not in self.images:
            return None
        n = self.images.n_patches(sample_id)
        indices = None
        if context.train and context.max_patches is not None and n > context.max_patches:
            draw = self.draws.get(index, 0)
            self.draws[index] = draw + 1
            rng = np.random.default_rng([context.seed, context.epoch, index, draw])
            indices = np.sort(rng.choice(n, size=context.max_patches, replace=False))  # keep slide order
        rows = self.images.rows(sample_id) if indices is None and context.stream else None
        bag = self.images.load(sample_id, indices) if rows is None else self.images.index(sample_id)
        slides = self.images.slide_ids(sample_id)
        single = len(slides) == 1 and slides[0] in (*_UNNAMED_SLIDES, sample_id)
        positions = np.asarray(bag.positions, dtype=np.int64)
        if single and indices is None:  # the whole bag: positions are 0..N-1 (range is the fastest source)
            names = list(map(str, range(len(positions))))
        else:
            names = (list(map(str, positions.tolist())) if single
                     else [f"{s}:{p}" for s, p in zip(bag.slide_ids, positions.tolist(), strict=True)])
        return {
            **({"data": bag.data} if rows is None else {"rows": rows}),
            "coords": bag.coords,
            "positions": positions,
            "slide_ids": list(bag.slide_ids),
            "names": names,
        }


class ImagesModality(Modality):
    """Patch bags: one token per patch, named ``slide:position`` (``position`` for a lone unnamed slide)."""

    name = "images"
    token_kind = "patch"
    preprocessor_class = ImagesPreprocessor
    noun = "image bag"
    report_columns = ("position", "x", "y", "slide_id")
    data_keys: ClassVar[dict[str, str]] = {
        "images": "folder of per-sample feature files, or a manifest CSV (sample_id, path[, slide_id])",
        "image_kind": "features (default) or patches (raw tiles for the cnn / vit encoders)",
        "patch_size": "tile size that patch images are resized to (image_kind: patches)",
        "patient_of": "slides to patients: tcga (first 12 characters of the barcode), or a CSV / TSV with "
                      "columns slide_id, patient_id",
        "image_format": "feature files' layout: auto (default), trident, clam, stamp, slideflow, lazyslide, "
                        "histossl",
        "image_feature_key": "LazySlide stores: the feature table (uni_tiles) or model (uni) to read",
        "image_mpp": "level-0 micrometres per pixel of the slides (STAMP micrometres -> level-0 pixels)",
    }

    def normalise(self, data: Any, options: Mapping[str, Any]) -> Normalised:
        if isinstance(data, Mapping):
            data = ImageBags.from_features(data)
        if not isinstance(data, ImageBags):
            raise TypeError(
                "images: expected ImageBags (ImageBags.from_features / from_patches), got "
                f"{type(data).__name__}"
            )
        return Normalised(data, {}, [])

    def sample_ids(self, data: ImageBags) -> list[str]:
        return list(data.sample_ids)

    def subset(self, data: ImageBags, ids: list[str]) -> ImageBags | None:
        return data.subset(ids) if ids else None

    def summary_lines(self, data: ImageBags, cohort: Any) -> list[str]:
        sizes = data.bag_sizes()
        shape = (
            f"feature dim {data.feature_dim}"
            if data.kind == "features"
            else f"patch shape {data.pixel_shape}"
        )
        lines = [(f"  images ({data.kind}, {shape}): bag size min {sizes.min()}, median "
                  f"{float(sizes.median()):g}, max {sizes.max()}, total {sizes.sum()} patches")]
        unmatched = getattr(data, "unmatched_slides", [])
        if unmatched:  # patient_of left them out: say which, so that nothing is dropped silently
            lines.append(f"  images: {len(unmatched)} slide(s) matched no patient (left out): "
                         f"{format_ids(unmatched)}")
        return lines

    def shape(self, data: ImageBags) -> dict[str, Any]:
        return {"n_samples": len(data.sample_ids), "kind": data.kind,
                "dim": int(data.feature_dim) if data.kind == "features" else list(data.pixel_shape)}

    def default_encoder(self, schema_entry: Mapping[str, Any]) -> str:
        """``feature_bag`` for precomputed feature bags, ``vit`` for pixel bags."""
        kind = schema_entry.get("kind") if isinstance(schema_entry, Mapping) else None
        if kind not in ("features", "pixels"):
            raise ValueError(f"images schema kind must be 'features' or 'pixels', got {kind!r}")
        return "feature_bag" if kind == "features" else "vit"

    def reader(self, data: ImageBags, cohort: Any, preprocessor: ImagesPreprocessor) -> BagReader:
        return BagReader(preprocessor.transform(data))

    def collate(self, items: Sequence[dict[str, Any] | None], schema_entry: Mapping[str, Any],
                present: torch.Tensor) -> ModalityBatch:
        if schema_entry["kind"] == "features":
            key, shape = "features", (schema_entry["feature_dim"],)
        else:
            key, shape = "pixels", (schema_entry["channels"], schema_entry["height"], schema_entry["width"])
        streamed = [it is not None and "rows" in it for it in items]
        if any(streamed) and not all(s or it is None for s, it in zip(streamed, items, strict=True)):
            # a batch mixing row sources and loaded bags: load the sources (one tensor for all)
            items = [{**it, "data": it["rows"].read()} if s else it
                     for s, it in zip(streamed, items, strict=True)]
            streamed = [False] * len(items)
        keys = {"positions": ((), np.int64), "coords": ((2,), np.float32)}
        if not any(streamed):
            keys["data"] = (shape, np.float32)
        if len(items) == 1 and items[0] is not None and len(items[0]["positions"]):
            # one sample: its arrays are the batch (views, no padded copy)
            only = items[0]
            with warnings.catch_warnings():  # a read-only bag (np.memmap mode "r") is never written to
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                arrays = {k: torch.from_numpy(np.asarray(only[k], dtype=dtype)[None])
                          for k, (_, dtype) in keys.items()}
            n = len(only["positions"])
            mask, lengths = np.ones((1, n), dtype=bool), [n]
            texts = {k: [list(only[k])] for k in ("names", "slide_ids")}
        else:
            padded, mask, texts, lengths = pad_tokens(items, keys, ("names", "slide_ids"))
            arrays = {k: torch.from_numpy(v) for k, v in padded.items()}
        tensors = {"coords": arrays["coords"], "position": arrays["positions"]}
        meta: dict[str, Any] = {"slide_id": texts["slide_ids"]}
        if any(streamed):
            meta["feature_rows"] = [it["rows"] if s else None for s, it in zip(streamed, items, strict=True)]
        else:
            tensors = {key: arrays["data"], **tensors}
        present = present & torch.tensor([n > 0 for n in lengths], dtype=torch.bool)
        return ModalityBatch(self.name, torch.from_numpy(mask), present, tensors, texts["names"], meta)

    def token_grids(self, batch: ModalityBatch | None, meta: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
        """``position``, ``x``, ``y`` (x, y from ``coords [B, T, 2]`` unless given) and ``slide_id``."""
        meta = dict(meta or {})
        if batch is not None:
            meta.setdefault("position", batch.tensors.get("position"))
            if "coords" in batch.tensors:
                meta.setdefault("coords", batch.tensors["coords"])
            meta.setdefault("slide_id", batch.meta.get("slide_id"))
        if meta.get("coords") is not None and "x" not in meta:
            coords = as_numpy(meta["coords"])
            meta["x"], meta["y"] = coords[..., 0], coords[..., 1]
        return {key: meta[key] for key in self.report_columns if meta.get(key) is not None}

    # ------------------------------------------------------------------ files
    def check_config(self, spec: Mapping[str, Any]) -> None:
        if spec.get("image_kind", "features") not in ("features", "patches"):
            raise ValueError(f"data.image_kind must be 'features' or 'patches', got {spec['image_kind']!r}")
        if "patient_of" in spec and spec.get("image_kind", "features") != "features":
            raise ValueError("data.patient_of groups feature files by patient; it needs image_kind: features")

    def read_files(self, source: Any) -> dict[str, Any]:
        path: Any = source.path("images")
        if path.suffix.lower() in (".csv", ".tsv", ".parquet"):
            manifest = (pd.read_parquet(path) if path.suffix == ".parquet"
                        else pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",",
                                         dtype={"sample_id": str, "slide_id": str}))
            manifest["path"] = [
                str(p if Path(p).is_absolute() else path.parent / p) for p in manifest["path"]
            ]
            path = manifest
        elif not path.exists():
            raise FileNotFoundError(f"data.images: {path} does not exist")
        if source.spec.get("image_kind", "features") == "features":
            return {"images": ImageBags.from_features(path, patient_of=_patient_of(source),
                                                      format=source.spec.get("image_format", "auto"),
                                                      mpp=source.spec.get("image_mpp"),
                                                      feature_key=source.spec.get("image_feature_key"))}
        return {"images": ImageBags.from_patches(path, patch_size=source.spec.get("patch_size"))}

    def write_files(self, data: ImageBags, cohort: Any, folder: Path) -> dict[str, Any]:
        """``features/<id>.npy`` per sample, read back as a folder (file stem = sample id). Where an id is
        not a safe file name (``file_stem``), the files get safe names and ``images.parquet`` (sample_id,
        path, slide_id) maps them back, and the data config points at it."""
        if data.kind != "features":  # pixel bags have no file form the config reads back
            return {}
        (folder / "features").mkdir(exist_ok=True)
        stems = {str(sid): file_stem(sid) for sid in data.sample_ids}
        for sid, stem in stems.items():
            with atomic_path(folder / "features" / f"{stem}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, data.load(sid).data)  # file object: np.save would append ".npy" to tmp
        if all(stem == sid for sid, stem in stems.items()):
            return {"images": "features"}
        manifest = pd.DataFrame({"sample_id": list(stems), "slide_id": list(stems),
                                 "path": [f"features/{s}.npy" for s in stems.values()]})
        with atomic_path(folder / IMAGES_MANIFEST) as tmp:
            manifest.to_parquet(tmp, index=False)  # Parquet keeps ids as strings ("001" stays "001")
        return {"images": IMAGES_MANIFEST}


def _patient_of(source: Any) -> Any:
    """The ``patient_of`` data key: ``tcga``, or a table with columns slide_id, patient_id (a mapping)."""
    rule = source.spec.get("patient_of")
    if rule is None or (isinstance(rule, str) and rule.lower() == "tcga"):
        return rule
    path = source.path("patient_of")
    table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str)
    missing = {"slide_id", "patient_id"} - set(table.columns)
    if missing:
        raise ValueError(f"data.patient_of: {path} lacks column(s) {sorted(missing)}; expected slide_id, "
                         f"patient_id (columns: {list(table.columns)})")
    twice = table["slide_id"][table["slide_id"].duplicated()].unique().tolist()
    if twice:
        raise ValueError(f"data.patient_of: {path} lists slide id(s) {format_ids(twice)} more than once; "
                         "expected one patient per slide")
    return dict(zip(table["slide_id"], table["patient_id"], strict=True))
