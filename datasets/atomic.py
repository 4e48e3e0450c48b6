"""Atomic file and folder writes: a crash, a Ctrl-C or a SIGKILL at any moment leaves either the old output
or the new one, whole, at the path, never a truncated file, a half-replaced folder or no folder at all.

Everything is written to a temporary next to the target (``.<name>.<pid>-<random>.tmp``), flushed to disk
(``fsync`` of every file and folder), then put in place by one atomic step: ``os.replace`` for a file or a
new folder, and for an existing folder an atomic exchange of the two paths (Linux ``renameat2`` with
``RENAME_EXCHANGE``), after which the old copy, now at the temporary name, is removed. Temporaries left by
killed writers are removed by the next write to the same place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

_STALE_S = 24 * 3600  # a temporary this old is removed even if its pid runs again (pid reuse)


def _temp_name(final: Path, suffix: str) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.{suffix}")


def _leftover(final: Path, name: str) -> tuple[int | None, str] | None:
    """(pid of the writer or None for an older clinfuse's temporary, suffix) when ``name`` is a temporary
    of ``final``; None otherwise."""
    base = re.escape(final.name)
    m = re.fullmatch(rf"\.{base}\.(\d+)-[0-9a-f]{{8}}\.(tmp|old)", name)
    if m:
        return int(m.group(1)), m.group(2)
    m = re.fullmatch(rf"\.{base}\.(?:[a-z0-9_]{{8}}\.tmp|old)", name)  # tempfile names, the old ".old"
    return (None, "old" if name.endswith(".old") else "tmp") if m else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_leftovers(final: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed writes to ``final`` left next to it; returns what was removed.

    Only temporaries whose writing process no longer runs (or that are a day old) are touched, so a
    concurrent writer keeps its own. Where a kill came between the two renames of the fallback replacement
    (no atomic exchange on this system) and ``final`` is missing, the old copy is first put back.
    """
    final = Path(final)
    removed: list[Path] = []
    try:
        entries = list(final.parent.iterdir())
    except FileNotFoundError:
        return removed
    now = time.time()
    for entry in sorted(entries):
        found = _leftover(final, entry.name)
        if found is None:
            continue
        pid, kind = found
        try:
            stale = now - entry.lstat().st_mtime > _STALE_S
        except FileNotFoundError:
            continue
        if pid is not None and _alive(pid) and not stale:
            continue
        if kind == "old" and not os.path.lexists(final):
            with contextlib.suppress(OSError):
                os.replace(entry, final)
                continue
        _remove(entry)
        removed.append(entry)
    return removed


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder and everything in it, to disk (folders where the system allows it)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            fsync_path(child)
        _fsync_dir(path)
    elif path.is_file() and not path.is_symlink():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # systems that cannot open a folder (Windows) have no folder fsync either
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap the entries at ``a`` and ``b`` in one atomic step; False where the system cannot do that."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # this file system (or kernel) has no exchange
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _replace_folder(tmp: Path, final: Path) -> Path:
    """Put folder ``tmp`` at ``final``, which exists; returns where the old copy now is (to remove)."""
    if exchange(tmp, final):
        return tmp
    # Fallback: two renames. A kill between them leaves ``final`` missing and the old copy at ``old``,
    # which clean_leftovers (the next write) puts back.
    old = _temp_name(final, "old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    return old


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is flushed and put onto ``path`` in one step.

    On an exception (Ctrl-C included) the temporary file (or folder, with ``directory=True``) is removed
    and ``path`` is left as it was. An existing folder is replaced by an atomic exchange, so the path is
    never missing; earlier writers' leftovers are removed first.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final)
    tmp = _temp_name(final, "tmp")
    if directory:
        tmp.mkdir()
    else:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    # give the output the permissions any ordinary file or folder would get under the user's umask
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
    try:
        yield tmp
        fsync_path(tmp)
        if directory and final.is_dir() and not final.is_symlink():
            old = _replace_folder(tmp, final)
            _fsync_dir(final.parent)
            _remove(old)
        else:
            os.replace(tmp, final)
            _fsync_dir(final.parent)
    except BaseException:
        _remove(tmp)  # the new copy, or after an exchange the old one: either way not wanted
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8) and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
