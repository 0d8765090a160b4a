"""Atomic file output: everything huabu writes goes to a temporary name beside its target and is moved onto it with
os.replace, so that a reader never sees half a file and a failure leaves the old file (or none) and no temp file."""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` (its folder created) for a writer that wants a file name; moved onto `path`
    when the block ends, removed if it raises. `suffix` ends the temporary name, for writers that go by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A new binary file beside `path`, flushed to disk (fsync) and moved onto `path` when the block ends. Its
    permissions follow the umask, as an ordinary new file's do (mkstemp would force 0o600)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """An empty folder beside `path` to fill; swapped in for `path` when the block ends (an old folder is moved aside
    first, then removed), removed if the block raises, so `path` is always the old folder or the whole new one. Its
    name is fixed, so the next attempt clears what a killed one left."""
    path = Path(path)
    tmp, old = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
