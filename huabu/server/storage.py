"""What bounds the server's disk use besides job retention (JobStore.prune): a quota on the outputs folder and a
floor of free space, checked when a job is accepted, each refused with one line (HTTP 507)."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from huabu.core.errors import HuabuError

MIN_FREE_BYTES = 64 * 1024 * 1024  # below this a job is refused: it would fail writing, and so would SQLite
RECOUNT_INTERVAL = 10.0  # seconds a measured outputs folder size is trusted


class StorageFull(HuabuError):
    """The outputs quota is reached or the disk is (nearly) full (HTTP 507)."""


class DiskGuard:
    """Checks before accepting a job: free space on the disk holding `home`, and (for jobs that save) the outputs
    folder against `max_output_bytes`. The folder is measured at most every RECOUNT_INTERVAL seconds."""

    def __init__(self, home: Path, outputs: Path, max_output_bytes: int | None) -> None:
        self.home, self.outputs, self.max_output_bytes = Path(home), Path(outputs), max_output_bytes
        self._lock = threading.Lock()
        self._measured: tuple[float, int] | None = None  # (when, bytes)

    def check(self, saves: bool) -> None:
        free = shutil.disk_usage(self.home if self.home.exists() else self.home.parent).free
        if free < MIN_FREE_BYTES:
            raise StorageFull(f"the disk holding {self.home} has {free // 2**20} MiB free; free some space and "
                              f"send the request again")
        if saves and self.max_output_bytes is not None:
            used = self._outputs_size()
            if used >= self.max_output_bytes:
                raise StorageFull(f"the outputs folder holds {used / 2**30:.3g} GiB; this server's limit is "
                                  f"{self.max_output_bytes / 2**30:.3g} GiB (--max-output-gb): delete outputs or "
                                  f"raise the limit")

    def _outputs_size(self) -> int:
        with self._lock:
            if self._measured is None or time.monotonic() - self._measured[0] > RECOUNT_INTERVAL:
                self._measured = (time.monotonic(), _folder_size(self.outputs))
            return self._measured[1]


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` says the disk (or the user's quota) is full, as an OSError or as SQLite says it."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(err, sqlite3.OperationalError) and "full" in str(err)  # "database or disk is full"


DISK_FULL = "the disk is full; free some space and send the request again"
DISK_ERROR = "the server could not write to its disk (disk I/O error); check the disk and send the request again"


def _folder_size(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return total
