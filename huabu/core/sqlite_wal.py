"""One idle connection held open beside a WAL database's per-call connections (the job store, the gallery)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def hold_wal_index(db_path: Path, table: str) -> sqlite3.Connection:
    """A connection that stays open, unused, so the WAL index (-shm) and the WAL outlive each call's connection.
    SQLite checkpoints and removes them when the last connection closes: that cost every short call about 1.5 ms
    more than its own work, and re-creating the index fails on a full disk, which would fail even reads."""
    keeper = sqlite3.connect(db_path, check_same_thread=False)
    keeper.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # opens the WAL index
    return keeper
