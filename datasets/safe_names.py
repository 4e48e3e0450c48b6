"""File names derived from data: a sample id, slide id, class or column becomes a safe file stem.

Ids come from the user's tables, so they may hold anything: ``../../victim``, an absolute path, ``/``,
control characters, 300 characters, any script. :func:`file_stem` is the one way a file name is built from
such a text; the true text is kept elsewhere (inside the file or in a manifest beside it).
"""

from __future__ import annotations

import hashlib
import re

MAX_STEM = 100  # far below the usual 255-byte name limit, leaving room for a prefix and a suffix
_DIGEST = 10  # hex digits of SHA-256: ~1e12 ids before a collision becomes likely
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stem(text: object, *, max_length: int = MAX_STEM) -> str:
    """A file stem for ``text``: only letters, digits and ``-_.``, never empty, ``.`` or ``..``, never
    starting with a dot, at most ``max_length`` characters.

    A text that is already such a stem is returned as it is; any other gets the first 10 hex digits of
    its SHA-256 appended (``slug-0123456789``), so two different texts never share a stem even when they
    slug the same (``a/b`` and ``a:b``) or share a long prefix.
    """
    if max_length < _DIGEST + 2:
        raise ValueError(f"max_length must be at least {_DIGEST + 2}, got {max_length}")
    text = str(text)
    slug = _UNSAFE.sub("_", text).lstrip(".")
    if slug == text and 0 < len(text) <= max_length and _plain(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST]
    slug = slug[: max_length - _DIGEST - 1].rstrip(".")
    return f"{slug}-{digest}" if slug else digest


def _plain(stem: str) -> bool:
    # a stem that could be mistaken for a hashed one (``x-0123456789``) is hashed itself, so that no
    # plain id can equal another id's hashed stem
    return re.fullmatch(rf".*-[0-9a-f]{{{_DIGEST}}}", stem) is None
