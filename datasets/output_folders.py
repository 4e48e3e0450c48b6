"""The folders clinfuse writes (a model, predictions, an explanation, the demo): each is marked with its
kind, lists its files with their SHA-256 in a manifest, and is replaced only whole (:mod:`.atomic`).

``.clinfuse`` (the marker) is ``{"written_by": "clinfuse", "kind": ...}``; ``manifest.json`` maps every
other file, by its path inside the folder, to its size and SHA-256. An existing folder is replaced only when
it is empty or holds nothing but clinfuse outputs of the same kind, and never when it is (or contains, or
lies inside) a folder the command reads.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .atomic import atomic_path, write_text_atomic

MARKER = ".clinfuse"
MANIFEST = "manifest.json"
# What each kind held when the marker was a plain "written by clinfuse" line (no kind, no manifest); the
# kind of such a folder is the first whose required file is there.
_LEGACY = {
    "model": ("config.json", ("config.json", "preprocessor.json", "schema.json", "fitted.json",
                              "weights.pt", "metrics.json", "provenance.json")),
    "demo": ("model", ("metrics.json", "predictions.csv", "attention.parquet", "attention.csv",
                       "training_curve.png", "modality_weights.png", "attention_*.png", "model")),
    "explanation": ("kinds.json", ("attention.parquet", "attention.csv", "predictions.csv", "kinds.json",
                                   "modality_weights.png", "attention_*.png")),
    "predictions": ("predictions.csv", ("predictions.csv", "metrics.json")),
}


def _read_marker(folder: Path) -> dict | None:
    try:
        text = (folder / MARKER).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        return {"legacy": True} if text.startswith("written by clinfuse") else None
    return marker if isinstance(marker, dict) and marker.get("written_by") == "clinfuse" else None


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The kind of clinfuse output in ``folder`` (model, predictions, explanation, demo, ...), None when
    clinfuse did not write it."""
    folder = Path(folder)
    marker = _read_marker(folder)
    if marker is None:
        return None
    if not marker.get("legacy"):
        return str(marker.get("kind"))
    for kind, (required, _) in _LEGACY.items():
        if (folder / required).exists():
            return kind
    return None


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` (links included, not followed), as POSIX paths relative to it."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        out += [(rel / name).as_posix() for name in files]
        out += [(rel / d).as_posix() for d in dirs if (Path(root) / d).is_symlink()]
    return sorted(out)


def _foreign(folder: Path, kind: str) -> list[str]:
    """Entries of a clinfuse folder that clinfuse did not write (a user's file put there later)."""
    manifest = _read_manifest(folder)
    if manifest is not None:
        listed = set(manifest) | {MARKER, MANIFEST}
        return [f for f in _files(folder) if f not in listed]
    patterns = (MARKER, *_LEGACY.get(kind, ("", ()))[1])
    return sorted(p.name for p in folder.iterdir()
                  if not any(fnmatch.fnmatch(p.name, pat) for pat in patterns))


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_replaceable(target: str | os.PathLike, *, kind: str,
                      protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Raise ValueError unless an output of ``kind`` may be written at ``target``; return its real path.

    ``protect``: folders the command reads (``--model``); the output may be none of them, inside none of
    them and contain none of them (compared after resolving symlinks).
    """
    final = _real(target)
    for folder in protect:
        read = _real(folder)
        if final == read or read in final.parents or final in read.parents:
            where = ("is" if final == read else "lies inside" if read in final.parents else "contains")
            raise ValueError(f"output folder {target} {where} the folder {folder} that this command reads "
                             f"({read}); choose an --out outside it")
    if not os.path.lexists(final):
        return final
    if not final.is_dir():
        raise ValueError(f"output path {final} exists and is not a folder")
    if not any(final.iterdir()):
        return final
    found = folder_kind(final)
    if found is None:
        raise ValueError(f"output folder {final} exists and was not written by clinfuse; "
                         "choose a new or empty folder")
    if found != kind:
        raise ValueError(f"output folder {final} holds a clinfuse {found}, not {kind}: it is replaced only "
                         "by the same kind of output; choose another folder")
    foreign = _foreign(final, found)
    if foreign:
        raise ValueError(f"output folder {final} holds files clinfuse did not write ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); move them or choose another folder")
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """(Re)write ``folder/manifest.json``: every other file's size and SHA-256; returns the entries."""
    folder = Path(folder)
    entries = {rel: {"size": (folder / rel).stat().st_size, "sha256": _sha256(folder / rel)}
               for rel in _files(folder) if rel != MANIFEST and not (folder / rel).is_symlink()}
    write_text_atomic(folder / MANIFEST, json.dumps({"format": "clinfuse-manifest", "files": entries},
                                                    indent=1) + "\n")
    return entries


def _read_manifest(folder: Path) -> dict[str, dict] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, kind: str = "output",
               protect: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success mark it, list it in a manifest and swap it in at
    ``target`` in one atomic step (see :func:`check_replaceable` for which ``target`` may be replaced).

    On error (Ctrl-C included) the temporary folder is removed and ``target`` is left untouched.
    """
    protect = list(protect)
    final = check_replaceable(target, kind=kind, protect=protect)
    with atomic_path(final, directory=True) as tmp:
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"written_by": "clinfuse", "kind": kind}) + "\n")
        write_manifest(tmp)
        check_replaceable(final, kind=kind, protect=protect)  # nothing foreign appeared meanwhile


# --------------------------------------------------------------------------------------- reading back
@dataclass
class Snapshot:
    """A folder's files read into memory at one moment: ``files`` (name -> bytes) and ``changed``: names
    whose bytes are not what the manifest lists (edited or damaged), or that it lists but are missing."""

    folder: Path
    files: dict[str, bytes] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    has_manifest: bool = False

    def check(self) -> None:
        """Raise ValueError naming the files that do not match the manifest."""
        if self.changed:
            raise ValueError(f"{self.folder}: {', '.join(self.changed)} do(es) not match {MANIFEST} (size "
                             "or SHA-256): the folder was damaged or edited after it was written; write it "
                             "again")


def _safe_name(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and not PurePosixPath(name).is_absolute() and ".." not in parts


def _read_once(folder: Path, manifest: dict[str, dict]) -> Snapshot:
    snap = Snapshot(folder, has_manifest=True)
    for name, entry in sorted(manifest.items()):
        try:
            data = (folder / name).read_bytes() if _safe_name(name) else None
        except (FileNotFoundError, IsADirectoryError):
            data = None
        ok = (data is not None and isinstance(entry, dict) and len(data) == entry.get("size")
              and hashlib.sha256(data).hexdigest() == entry.get("sha256"))
        if data is not None and _safe_name(name):
            snap.files[name] = data
        if not ok:
            snap.changed.append(name)
    return snap


def read_snapshot(folder: str | os.PathLike, *, attempts: int = 5) -> Snapshot:
    """Read every file of ``folder`` into memory, verified against its manifest.

    A concurrent writer swaps a whole new folder in, so a read that straddles the swap sees files of two
    versions (or a vanished one): it is read again, up to ``attempts`` times. A folder without a manifest
    (written by an older clinfuse) is read as it is, its top-level files only.
    """
    folder = Path(folder)
    snap = Snapshot(folder)
    for attempt in range(attempts):
        manifest = _read_manifest(folder)
        if manifest is None:
            marker = _read_marker(folder) or {}
            snap = Snapshot(folder, changed=[MANIFEST] if marker and not marker.get("legacy") else [])
            for p in sorted(folder.iterdir()):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                    if p.is_file():
                        snap.files[p.name] = p.read_bytes()
            if not snap.changed:
                return snap
        else:
            snap = _read_once(folder, manifest)
            if not snap.changed:
                return snap
        time.sleep(0.02 * (attempt + 1))
    return snap
