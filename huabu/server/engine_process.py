"""The engine in a child process, the default of `huabu serve`: the denoising loop then never waits for the GIL
while this process parses requests, encodes responses and writes SQLite (in one process those cost the engine
about 10% of its throughput; figures in docs/api-speed.md).

One spawned child per worker thread, running one job at a time. Jobs, progress, previews and results cross the
pipe as JSON only (the results' images as PNG), as they cross Celery's broker. Cancel, interrupt and skip set a
shared event the child's engine polls between steps. A child exits when its pipe closes (so also when this
process dies), and a dead child is started anew for the next job; the job it was running fails with a line.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from huabu.core.settings import Settings
from huabu.server.jobs import Job
from huabu.server.queue import LiveJob, RelayedFailure, error_line
from huabu.server.runner import Outcome, ProgressGate, preview_png, progress_data, run_job

log = logging.getLogger(__name__)

POLL = 0.05  # seconds between the worker thread's looks at a running job's cancel flags and preview requests
STOP_WAIT = 10.0  # seconds a closing child gets to finish before it is killed


class EngineDied(RuntimeError):
    """The engine's child process ended while running a job."""


class EngineProcess:
    """A LocalQueue runner whose Engine lives in a child process (see the module's docstring)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self._context = multiprocessing.get_context("spawn")  # fork would copy this process's threads' locks
        self._stop = self._context.Event()
        self._want_preview = self._context.Event()
        self._process: Any = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def _start(self) -> None:
        ours, theirs = self._context.Pipe()
        self._process = self._context.Process(target=serve_jobs, name=f"huabu-{self.name}", daemon=True,
                                              args=(self.settings, theirs, self._stop, self._want_preview))
        self._process.start()
        theirs.close()
        self._conn = ours

    def run(self, job: Job, live: LiveJob, report: Callable[[dict[str, Any]], None]) -> Outcome:
        if self._process is None or not self._process.is_alive():
            self._start()
        self._stop.clear()
        self._want_preview.clear()
        self._conn.send_bytes(json.dumps({"id": job.id, "kind": job.kind, "request": job.request,
                                          "origin": job.origin, "save": job.save}).encode())
        while True:
            if live.should_stop():
                self._stop.set()
            if live.preview_wanted.is_set():
                live.preview_wanted.clear()
                self._want_preview.set()
            try:
                if not self._conn.poll(POLL):
                    if not self._process.is_alive():
                        raise EngineDied(f"the engine process exited with code {self._process.exitcode}")
                    continue
                message = json.loads(self._conn.recv_bytes())
            except (EOFError, OSError) as err:
                raise EngineDied(f"the engine process is gone ({type(err).__name__})") from err
            kind = message["kind"]
            if kind == "progress":
                report(message["progress"])
            elif kind == "preview":
                live.show_preview(message["image"])
            elif kind == "done":
                return Outcome.from_wire(message["outcome"])
            else:
                raise RelayedFailure(message["line"], message["error_kind"])

    def close(self) -> None:
        if self._process is None:
            return
        self._stop.set()
        self._conn.close()  # the child reads EOF and exits
        self._process.join(STOP_WAIT)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._process = None


def serve_jobs(settings: Settings, conn: Connection, stop: Any, want_preview: Any) -> None:
    """The child's main: one Engine, jobs from `conn` until it closes."""
    import os

    logging.basicConfig(level=os.environ.get("HUABU_LOG_LEVEL", "WARNING"))
    from huabu.engine.generate import Engine
    from huabu.engine.libraries import quiet_libraries

    quiet_libraries()

    engine = Engine(settings)
    worker = threading.Thread(target=_serve, args=(engine, conn, stop, want_preview), name="engine")
    worker.start()
    worker.join()


def _serve(engine: Any, conn: Connection, stop: Any, want_preview: Any) -> None:
    while True:
        try:
            data = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        job = Job(id=data["id"], kind=data["kind"], request=data["request"], origin=data["origin"], save=data["save"])
        conn.send_bytes(json.dumps(_run_one(engine, job, conn, stop, want_preview)).encode())


def _run_one(engine: Any, job: Job, conn: Connection, stop: Any, want_preview: Any) -> dict[str, Any]:
    gate = ProgressGate()

    def on_progress(p) -> None:
        if want_preview.is_set() and p.latents is not None:
            want_preview.clear()
            conn.send_bytes(json.dumps({"kind": "preview", "image": preview_png(engine, job, p.latents)}).encode())
        if gate.passes(p):
            conn.send_bytes(json.dumps({"kind": "progress", "progress": progress_data(p)}).encode())

    try:
        outcome = run_job(engine, job, on_progress, stop.is_set)
    except Exception as err:  # every failure ends the job with its line; bugs are logged with a traceback
        line, kind = error_line(err)
        if kind == "internal":
            log.exception("job %s failed", job.id)
        return {"kind": "failed", "line": line, "error_kind": kind}
    return {"kind": "done", "outcome": outcome.to_wire(images=job.answers_with_images)}
