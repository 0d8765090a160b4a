"""Jobs in SQLite (`Settings.home/"jobs.sqlite"`): a job is JSON data plus its state, persisted before it is
accepted, so a server that stops mid-job finds every queued or running job again when it starts.

States: queued -> running -> done | failed | cancelled. A job accepted over the native API (`origin="api"`) that
was running when the server stopped is queued again (up to `max_attempts` starts); an A1111 call
(`origin="a1111"`) is synchronous, so once its client connection is gone it is failed with a line saying so.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from huabu.core.sqlite_wal import ThreadConnections, hold_wal_index

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
KINDS = ("image", "video", "replace", "try-on", "instant-id")  # the last three: apps (huabu.core.apps)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    origin TEXT NOT NULL,
    request TEXT NOT NULL,
    save INTEGER NOT NULL,
    callback_url TEXT,
    state TEXT NOT NULL,
    progress TEXT NOT NULL,
    result TEXT,
    error TEXT,
    error_kind TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    dispatched INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""

_COLUMNS = ("id, kind, origin, request, save, callback_url, state, progress, result, error, error_kind, attempts, "
            "worker, dispatched, created, started, finished")


@dataclass
class Job:
    id: str
    kind: str
    request: dict[str, Any]
    origin: str = "api"  # "api" (native jobs API) | "a1111" (a synchronous /sdapi/v1 call)
    save: bool = True
    callback_url: str | None = None
    state: str = "queued"
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    error_kind: str | None = None  # "invalid" (the user's input) | "storage" (a full disk) | "internal" (a bug)
    attempts: int = 0
    worker: str | None = None
    dispatched: bool = False
    created: float = 0.0
    started: float | None = None
    finished: float | None = None

    @classmethod
    def new(cls, kind: str, request: dict[str, Any], **fields: Any) -> Job:
        return cls(id=uuid.uuid4().hex, kind=kind, request=request, created=time.time(), **fields)

    @property
    def answers_with_images(self) -> bool:
        """Whether its route answers with the images themselves (a synchronous A1111 call); a native job's are in
        its files."""
        return self.origin == "a1111"

    def public(self) -> dict[str, Any]:
        """The job as the native API shows it: results as URLs under /api/v1/files, embedded images elided."""
        result = None
        if self.result is not None:
            result = {"images": [FILES_PREFIX + quote(name) for name in self.result.get("files", [])],
                      "seeds": self.result.get("seeds", []), "infotexts": self.result.get("infotexts", []),
                      "interrupted": self.result.get("interrupted", False), "count": self.result.get("count", 0),
                      "seconds": self.result.get("seconds")}
        return {"id": self.id, "kind": self.kind, "state": self.state, "origin": self.origin,
                "progress": self.progress, "result": result, "error": self.error, "attempts": self.attempts,
                "worker": self.worker, "created": self.created, "started": self.started, "finished": self.finished,
                "request": _elide_images(_model_by_name(self.request))}


FILES_PREFIX = "/api/v1/files/"


def _model_by_name(request: dict[str, Any]) -> dict[str, Any]:
    """An accepted job runs the model at its path on the server; answers name it by its folder or file name (which
    the routes accept back), keeping the server's layout private."""
    model = request.get("model")
    if isinstance(model, str) and PurePath(model).is_absolute():
        return {**request, "model": PurePath(model).name}
    return request


def _elide_images(value: Any) -> Any:
    """Requests carry input images as data URLs; job listings show their size, not megabytes of base64."""
    if isinstance(value, str) and value.startswith("data:"):
        return f"{value.split(',', 1)[0]},... ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: _elide_images(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_elide_images(v) for v in value]
    return value


def _job(row: tuple) -> Job:
    (job_id, kind, origin, request, save, callback_url, state, progress, result, error, error_kind, attempts, worker,
     dispatched, created, started, finished) = row
    return Job(job_id, kind, json.loads(request), origin, bool(save), callback_url, state, json.loads(progress),
               json.loads(result) if result else None, error, error_kind, attempts, worker, bool(dispatched), created,
               started, finished)


class JobStore:
    """The jobs table, shared by threads (each with its own connection); writes are short transactions."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._connections = ThreadConnections(self.db_path, timeout=30.0, isolation_level=None)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
        self._keeper = hold_wal_index(self.db_path, "jobs")

    @contextmanager
    def _connect(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        # WAL with synchronous=NORMAL survives a killed process; FULL (an fsync per commit) also a power cut, which
        # only accepting a job needs: progress rows are cheap to lose.
        con = self._connections.get()
        con.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        yield con

    @contextmanager
    def _transaction(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        with self._connect(durable) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:  # also after a failed COMMIT (a full disk): the connection is kept
                    con.execute("ROLLBACK")
                raise

    def add(self, job: Job) -> Job:
        """Persist a new job (committed when this returns, and synced to disk unless it is a synchronous A1111 call:
        after a power cut its client is gone, and recovery fails such a job anyway)."""
        with self._transaction(durable=job.origin != "a1111") as con:
            seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            con.execute(
                f"INSERT INTO jobs ({_COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.kind, job.origin, json.dumps(job.request), int(job.save), job.callback_url, job.state,
                 json.dumps(job.progress), None, None, None, job.attempts, None, 0, job.created, None, None, seq))
        return job

    def get(self, job_id: str) -> Job | None:
        with self._connect() as con:
            row = con.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, state: str | None = None, limit: int = 50, offset: int = 0) -> list[Job]:
        """Jobs newest first, optionally in one state."""
        where, args = ("WHERE state = ?", [state]) if state else ("", [])
        with self._connect() as con:
            rows = con.execute(f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                               (*args, limit, offset)).fetchall()
        return [_job(row) for row in rows]

    def active(self) -> list[Job]:
        """Queued and running jobs, oldest first."""
        with self._connect() as con:
            rows = con.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq"
                               ).fetchall()
        return [_job(row) for row in rows]

    def claim_next(self, worker: str) -> Job | None:
        """Atomically move the oldest queued job to running for `worker`."""
        with self._transaction() as con:
            row = con.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            con.execute("UPDATE jobs SET state = 'running', worker = ?, started = ?, attempts = attempts + 1 "
                        "WHERE id = ?", (worker, time.time(), row[0]))
        return self.get(row[0])

    def mark_running(self, job_id: str, worker: str | None) -> None:
        """A remote worker started the job (distributed mode)."""
        with self._connect() as con:
            con.execute("UPDATE jobs SET state = 'running', worker = ?, started = COALESCE(started, ?), "
                        "attempts = MAX(attempts, 1) WHERE id = ? AND state IN ('queued', 'running')",
                        (worker, time.time(), job_id))

    def mark_dispatched(self, job_id: str) -> None:
        with self._connect() as con:
            con.execute("UPDATE jobs SET dispatched = 1 WHERE id = ?", (job_id,))

    def set_progress(self, job_id: str, progress: dict[str, Any], worker: str | None = None) -> None:
        with self._connect() as con:
            con.execute("UPDATE jobs SET progress = ?, worker = COALESCE(?, worker) WHERE id = ? AND state = 'running'",
                        (json.dumps(progress), worker, job_id))

    def finish(self, job_id: str, state: str, result: dict[str, Any] | None = None, error: str | None = None,
               error_kind: str | None = None, only_from: tuple[str, ...] = ACTIVE) -> bool:
        """Record the end of a job in one of the `only_from` states; False if it was in none (e.g. cancelled
        meanwhile). Its input images are dropped from the row (kept as their size): a finished job never runs
        again, and one 1024x1024 img2img call would otherwise keep megabytes of base64 as long as the job is kept."""
        if state not in FINISHED:
            raise ValueError(f"not a final state: {state!r}")
        summary = json.dumps(_elide_images(result)) if result is not None else None
        with self._transaction() as con:
            row = con.execute(f"SELECT request FROM jobs WHERE id = ? AND state IN ({','.join('?' * len(only_from))})",
                              (job_id, *only_from)).fetchone()
            if row is None:
                return False
            con.execute("UPDATE jobs SET state = ?, request = ?, result = ?, error = ?, error_kind = ?, finished = ? "
                        "WHERE id = ?", (state, json.dumps(_elide_images(json.loads(row[0]))), summary, error,
                                         error_kind, time.time(), job_id))
            return True

    def prune(self, finished_before: float) -> int:
        """Delete the jobs that finished before `finished_before` (a time.time()); returns how many."""
        with self._connect() as con:
            return con.execute("DELETE FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished < ?",
                               (finished_before,)).rowcount

    def requeue(self, job_id: str) -> None:
        """Put a running job back in the queue (the server is stopping before it finished)."""
        with self._connect() as con:
            con.execute("UPDATE jobs SET state = 'queued', worker = NULL, progress = '{}', started = NULL "
                        "WHERE id = ? AND state = 'running'", (job_id,))

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False if it is running or over."""
        return self.finish(job_id, "cancelled", only_from=("queued",))

    def recover(self, max_attempts: int, local_runs: bool = True) -> tuple[list[str], list[str]]:
        """After a stop: queue again every native job that was running (attempts left), fail the rest with a line
        saying why, and fail A1111 calls whose clients have gone. Returns (requeued ids, failed ids).

        `local_runs=False` (distributed mode): running jobs belong to workers that outlive the server, so only the
        A1111 calls are failed."""
        requeued, failed = [], []
        now = time.time()
        with self._transaction() as con:
            rows = con.execute("SELECT id, origin, state, attempts, request FROM jobs "
                               "WHERE state IN ('queued', 'running') ORDER BY seq").fetchall()
            for job_id, origin, state, attempts, request in rows:
                if origin == "a1111":
                    error = ("the server stopped before this A1111 request finished; its client connection is gone, "
                             "send the request again")
                elif not local_runs:
                    continue
                elif state == "running" and attempts >= max_attempts:
                    error = (f"the server stopped while running this job {attempts} times; not retrying it again "
                             f"(check the server log, then submit it again)")
                else:
                    if state == "running":
                        con.execute("UPDATE jobs SET state = 'queued', worker = NULL, progress = '{}', started = NULL "
                                    "WHERE id = ?", (job_id,))
                        requeued.append(job_id)
                    continue
                con.execute("UPDATE jobs SET state = 'failed', request = ?, error = ?, error_kind = 'internal', "
                            "finished = ? WHERE id = ?", (json.dumps(_elide_images(json.loads(request))), error, now,
                                                         job_id))
                failed.append(job_id)
        return requeued, failed
