"""Atomic file output: everything huabu writes goes to a temporary name beside its target and is moved onto it with
os.replace, so that a reader never sees half a file and a failure leaves the old file (or none) and no temp file.
A process killed mid-write (kill -9, power cut) cannot clean up: its temporary names carry its process id, so the
next start finds and removes them (`sweep_temporaries`)."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# `.<target name>.<pid>-<12 hex>` followed by the writer's suffix (".tmp", ".tmp.mp4", ...).
_TEMPORARY = re.compile(r"^\..+\.(\d+)-[0-9a-f]{12}\..+$")


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` (its folder created) for a writer that wants a file name; moved onto `path`
    when the block ends, removed if it raises. `suffix` ends the temporary name, for writers that go by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staged_path(folder: str | os.PathLike, suffix: str) -> Iterator[Path]:
    """A temporary name in `folder` (made if missing) for a file that `publish_new` will name; removed when the
    block ends, whether or not it was published."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(folder / "new", suffix)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def publish_new(tmp: Path, names: Iterable[Path]) -> Path:
    """Give the finished file `tmp` the first of `names` that is free and return it. A hard link never replaces an
    existing file, so concurrent writers never share a name and no empty placeholder ever marks one; where the file
    system has no hard links a name is reserved exclusively and replaced at once."""
    for candidate in names:
        try:
            os.link(tmp, candidate)
        except FileExistsError:
            continue
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            os.replace(tmp, candidate)
            return candidate
        os.unlink(tmp)
        return candidate
    raise FileExistsError(f"no free name for {tmp}")


def sweep_temporaries(root: str | os.PathLike) -> int:
    """Remove the temporary files under `root` that processes no longer running left (killed mid-write); returns
    how many. Files of running processes (another huabu writing into the same folder) are left alone."""
    removed = 0
    for folder, _, files in os.walk(root):
        for name in files:
            match = _TEMPORARY.match(name)
            if match and not _running(int(match.group(1))):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):  # digits that are no process id
        return False
    return True


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
