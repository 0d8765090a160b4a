"""The gallery index: one SQLite row per output file (path, kind, prompts, parameters), searchable by prompt.

A connection is opened per call, so one Gallery can be shared by threads (UI, API workers); WAL mode lets
readers run while a generation is being recorded.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huabu.core.errors import InvalidRequest
from huabu.core.sqlite_wal import ThreadConnections, hold_wal_index

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_kind ON items (kind, id);
"""

# The trigram tokenizer (SQLite >= 3.34) makes FTS5 answer case-insensitive substring queries of 3+ characters.
_FTS_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS items_fts
    USING fts5(prompt, content='items', content_rowid='id', tokenize='trigram');
CREATE TRIGGER IF NOT EXISTS items_fts_insert AFTER INSERT ON items BEGIN
    INSERT INTO items_fts (rowid, prompt) VALUES (new.id, new.prompt);
END;
CREATE TRIGGER IF NOT EXISTS items_fts_delete AFTER DELETE ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, prompt) VALUES ('delete', old.id, old.prompt);
END;
"""

_COLUMNS = "id, path, kind, prompt, negative_prompt, params, created"


@dataclass
class GalleryItem:
    id: int
    path: str
    kind: str
    prompt: str
    negative_prompt: str
    params: dict
    created: float


def _item(row: tuple) -> GalleryItem:
    item_id, path, kind, prompt, negative_prompt, params, created = row
    return GalleryItem(item_id, path, kind, prompt, negative_prompt, json.loads(params), created)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Gallery:
    """SQLite index of generated files, created on first use."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._connections = ThreadConnections(self.db_path, timeout=30.0)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            try:
                con.executescript(_FTS_SCHEMA)
            except sqlite3.OperationalError:  # SQLite built without FTS5 or older than trigram: LIKE it is
                pass
            self._fts = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'items_fts'").fetchone() is not None
            con.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        self._keeper = hold_wal_index(self.db_path, "items")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Commits on success, rolls back on error; the thread's connection stays open.
        with self._connections.get() as con:
            yield con

    def add(self, path: Path, kind: str, prompt: str, negative_prompt: str, params: dict) -> int:
        """Index one output file; returns its id."""
        if not kind:
            raise InvalidRequest("gallery item kind must not be empty (e.g. 'txt2img', 'img2img', 'video')")
        row = (
            str(path),
            kind,
            prompt,
            negative_prompt,
            json.dumps(params, ensure_ascii=False, default=str),
            time.time(),
        )
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO items (path, kind, prompt, negative_prompt, params, created) VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
            return int(cur.lastrowid)

    def get(self, item_id: int) -> GalleryItem | None:
        with self._connect() as con:
            row = con.execute(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    def search(
        self, text: str | None = None, kind: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[GalleryItem]:
        """Items newest first, optionally whose prompt contains `text` (case-insensitive) and of one `kind`."""
        if limit < 0 or offset < 0:
            raise InvalidRequest(f"gallery search needs limit >= 0 and offset >= 0, got limit={limit}, offset={offset}")
        where, args = [], []
        text = (text or "").strip()
        if "\x00" in text:  # FTS5 and LIKE read their pattern as a C string, cut at the NUL: match it exactly
            where.append("instr(prompt, ?) > 0")
            args.append(text)
        elif text and self._fts and len(text) >= 3:
            where.append("id IN (SELECT rowid FROM items_fts WHERE items_fts MATCH ?)")
            args.append('"' + text.replace('"', '""') + '"')
        elif text:  # trigrams cannot match 1-2 characters; LIKE folds ASCII case only
            where.append("prompt LIKE ? ESCAPE '\\'")
            args.append(f"%{_escape_like(text)}%")
        if kind:
            where.append("kind = ?")
            args.append(kind)
        sql = f"SELECT {_COLUMNS} FROM items"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        with self._connect() as con:
            rows = con.execute(sql, (*args, limit, offset)).fetchall()
        return [_item(row) for row in rows]

    def remove_under(self, folder: Path) -> int:
        """Drop the items whose files lie under `folder` (the files are left alone); returns how many."""
        prefix = str(Path(folder)).rstrip("/") + "/"
        with self._connect() as con:
            return con.execute("DELETE FROM items WHERE path LIKE ? ESCAPE '\\'",
                               (_escape_like(prefix) + "%",)).rowcount

    def remove(self, item_id: int) -> None:
        """Drop an item from the index (the file itself is left alone); unknown ids are ignored."""
        with self._connect() as con:
            con.execute("DELETE FROM items WHERE id = ?", (item_id,))
