"""The job queue behind every route: `JobQueue` holds what both backends share (the SQLite store, waiting for a
job from async routes, completion callbacks, the A1111 `/progress` view); `LocalQueue` runs jobs on engine threads
in this process. `huabu.server.distributed.CeleryQueue` runs them on Celery workers instead.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from huabu.core.errors import HuabuError
from huabu.engine.generate import Engine
from huabu.engine.job import Progress
from huabu.server.config import ServerConfig
from huabu.server.jobs import FINISHED, Job, JobStore
from huabu.server.runner import Outcome, ProgressGate, preview_png, progress_data, run_job
from huabu.server.storage import DISK_FULL, DiskGuard, is_disk_full

log = logging.getLogger(__name__)

PREVIEW_WAIT = 1.0  # seconds /progress waits for the engine thread to make a preview
PRUNE_INTERVAL = 3600.0  # seconds between deletions of jobs past their retention


class RelayedFailure(Exception):
    """A job's failure as the process that ran it reported it: the line and kind `error_line` made there."""

    def __init__(self, line: str, kind: str) -> None:
        super().__init__(line)
        self.line, self.kind = line, kind


def error_line(err: BaseException) -> tuple[str, str]:
    """(one-line message, kind) for a failed job: the user's input ("invalid"), a full disk ("storage") or a
    bug/the machine ("internal")."""
    if isinstance(err, RelayedFailure):
        return err.line, err.kind
    if isinstance(err, HuabuError):
        return str(err), "invalid"
    if is_disk_full(err):
        return DISK_FULL, "storage"
    text = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
    return f"internal error: {type(err).__name__}{': ' + text if text else ''}", "internal"


class JobQueue:
    """Base of the backends. Subclasses implement `_dispatch`, `cancel_running`, `interrupt_running`, `start`,
    `stop`."""

    pushes_progress = False  # True: watchers are woken on every start and progress row, so need not poll the store

    def __init__(self, store: JobStore, config: ServerConfig, disk: DiskGuard | None = None) -> None:
        self.store = store
        self.config = config
        self.disk = disk
        self._pruned_at = 0.0
        self._lock = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event, bool]]] = {}  # (.., ends_only)
        self._outcomes: dict[str, Outcome] = {}  # finished A1111 jobs' images, until their route takes them

    # --- submitting and waiting ---------------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Persist `job` (committed before this returns), then hand it to the backend. Refused (StorageFull) when
        the disk or the outputs quota has no room."""
        if self.disk is not None:
            self.disk.check(job.save)
        self.prune()
        self.store.add(job)
        self._dispatch(job)
        return job

    def prune(self, force: bool = False) -> None:
        """Delete jobs finished more than `config.keep_jobs_days` ago (at most once every PRUNE_INTERVAL)."""
        if not self.config.keep_jobs_days or (not force and time.monotonic() - self._pruned_at < PRUNE_INTERVAL):
            return
        self._pruned_at = time.monotonic()
        removed = self.store.prune(time.time() - self.config.keep_jobs_days * 86400)
        if removed:
            log.info("deleted %d job(s) finished more than %g days ago", removed, self.config.keep_jobs_days)

    def watch(self, job_id: str, loop: asyncio.AbstractEventLoop, ends_only: bool = False) -> asyncio.Event:
        """Register a waiter for `job_id` now, before it is submitted, so that a job finishing at once still finds
        it (and keeps its A1111 images for it); pass the event to `wait`, which unregisters it. `ends_only`: woken
        by the job's end alone, not by its start and progress (a waiter that would only read the row and sleep
        again takes CPU from the engine)."""
        event = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(job_id, []).append((loop, event, ends_only))
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        with self._lock:
            waiters = [waiter for waiter in self._waiters.get(job_id, []) if waiter[1] is not event]
            if waiters:
                self._waiters[job_id] = waiters
            else:
                self._waiters.pop(job_id, None)

    async def wait(self, job_id: str, poll: float = 1.0, event: asyncio.Event | None = None) -> Job | None:
        """The job once it has finished (woken by the backend; the store is polled too, as a safety net). `event`
        is one `watch` registered earlier."""
        event = event or self.watch(job_id, asyncio.get_running_loop(), ends_only=True)
        try:
            while True:
                job = self.store.get(job_id)
                if job is None or job.state in FINISHED:
                    return job
                try:
                    await asyncio.wait_for(event.wait(), poll)
                except asyncio.TimeoutError:
                    pass
                event.clear()
        finally:
            self.unwatch(job_id, event)

    def take_outcome(self, job_id: str) -> Outcome | None:
        with self._lock:
            return self._outcomes.pop(job_id, None)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, or ask a running one to stop (it ends as cancelled)."""
        job = self.store.get(job_id)
        if job is None or job.state in FINISHED:
            return job
        if self.store.cancel_queued(job_id):
            self._revoke(job_id)
            self._finished(job_id, bool(job.callback_url))
        else:
            self.cancel_running(job_id)
        return self.store.get(job_id)

    # --- completion ----------------------------------------------------------------------------------------------

    def _complete(self, job: Job, state: str, outcome: Outcome | None = None, error: str | None = None,
                  error_kind: str | None = None) -> None:
        """Record a job's end, keep the images of an A1111 call for its route (only while the route waits: a gone
        route would never take them), wake waiters, send the callback."""
        recorded = self.store.finish(job.id, state, outcome.summary() if outcome else None, error, error_kind)
        if recorded and outcome is not None and job.answers_with_images:
            with self._lock:
                if self._waiters.get(job.id):
                    self._outcomes[job.id] = outcome
        self._finished(job.id, bool(job.callback_url))

    def _notify(self, job_id: str, end: bool = False) -> None:
        """Wake whoever watches `job_id`: event streams on every change, routes waiting for its end at its `end`."""
        with self._lock:
            waiters = [(loop, event) for loop, event, ends_only in self._waiters.get(job_id, [])
                       if end or not ends_only]
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def _finished(self, job_id: str, has_callback: bool = True) -> None:
        """Wake the job's watchers; send its callback (the row is read only when it may have one)."""
        self._notify(job_id, end=True)
        job = self.store.get(job_id) if has_callback else None
        if job is not None and job.callback_url:
            threading.Thread(target=send_callback, args=(job,), daemon=True, name=f"callback-{job_id[:8]}").start()

    # --- the A1111 /progress view -----------------------------------------------------------------------------------

    def running(self) -> list[Job]:
        return [job for job in self.store.active() if job.state == "running"]

    def progress_view(self, with_image: bool = True) -> dict[str, Any]:
        """A1111's `/sdapi/v1/progress` answer for the oldest running job (idle: zeros)."""
        active = self.store.active()
        running = [job for job in active if job.state == "running"]
        if not running:
            return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None, {}, False, False, len(active)),
                    "current_image": None, "textinfo": None, "current_task": None}
        job = running[0]
        progress = job.progress or {}
        fraction = float(progress.get("fraction", 0.0))
        elapsed = time.time() - (job.started or time.time())
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        skipped, interrupted = self._flags(job.id)
        image = self.current_image(job) if with_image else None
        return {"progress": fraction, "eta_relative": round(eta, 3),
                "state": _state(job, progress, skipped, interrupted, len(active)), "current_image": image,
                "textinfo": f"step {progress.get('step', 0)}/{progress.get('steps', 0)}", "current_task": job.id}

    def current_image(self, job: Job) -> str | None:
        return None

    def _flags(self, job_id: str) -> tuple[bool, bool]:
        return False, False

    # --- backend hooks --------------------------------------------------------------------------------------------

    def _dispatch(self, job: Job) -> None:
        raise NotImplementedError

    def _revoke(self, job_id: str) -> None:
        """A queued job was cancelled in the store; a backend with its own queue drops it there too."""

    def cancel_running(self, job_id: str) -> None:
        raise NotImplementedError

    def interrupt_running(self, skip: bool = False) -> None:
        """A1111's /interrupt and /skip: stop the running jobs, keeping what they made so far."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def _state(job: Job | None, progress: dict, skipped: bool, interrupted: bool, count: int) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)) if job else "0"
    return {"skipped": skipped, "interrupted": interrupted, "stopping_generation": False,
            "job": f"task({job.id})" if job else "", "job_count": count, "job_timestamp": stamp,
            "job_no": int(progress.get("iteration", 0)), "sampling_step": int(progress.get("step", 0)),
            "sampling_steps": int(progress.get("steps", 0))}


def send_callback(job: Job) -> None:
    """POST the finished job to its callback URL (checked against --callback-allow when accepted). Redirects are
    never followed: a redirect could point anywhere."""
    import httpx

    try:
        response = httpx.post(job.callback_url, json=job.public(), timeout=10.0, follow_redirects=False)
        log.info("callback for job %s: HTTP %s", job.id, response.status_code)
    except httpx.HTTPError as err:  # neither the URL's path nor its query (which may hold a token) is logged
        log.warning("callback for job %s to %s failed: %s", job.id, _origin_of(job.callback_url), type(err).__name__)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."


# --- local backend ---------------------------------------------------------------------------------------------------

@dataclass
class LiveJob:
    """A job running on a local worker: the flags its engine polls and the last preview it made. Previews are
    decoded by the engine between two steps, when asked for: a model is never used by two threads."""

    job: Job
    cancel: bool = False
    interrupt: bool = False
    skip: bool = False
    preview: str | None = None  # base64 PNG of the first image at the last step a preview was asked for
    preview_wanted: threading.Event = field(default_factory=threading.Event)
    preview_made: threading.Event = field(default_factory=threading.Event)

    def should_stop(self) -> bool:
        return self.cancel or self.interrupt or self.skip

    def show_preview(self, image: str | None) -> None:
        self.preview = image
        self.preview_made.set()


class Runner(Protocol):
    """What a LocalQueue worker thread runs its jobs on: `EngineThread`, or `EngineProcess`
    (huabu.server.engine_process) with the Engine in a child process."""

    def run(self, job: Job, live: LiveJob, report: Callable[[dict[str, Any]], None]) -> Outcome: ...

    def close(self) -> None: ...


class EngineThread:
    """Runs jobs on an Engine of this process (what tests and benchmarks pass in as `engines`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(self, job: Job, live: LiveJob, report: Callable[[dict[str, Any]], None]) -> Outcome:
        gate = ProgressGate()

        def on_progress(p: Progress) -> None:
            if live.preview_wanted.is_set() and p.latents is not None:
                live.preview_wanted.clear()
                live.show_preview(preview_png(self.engine, job, p.latents))
            if gate.passes(p):
                report(progress_data(p))

        return run_job(self.engine, job, on_progress, live.should_stop)

    def close(self) -> None:
        pass


class LocalQueue(JobQueue):
    """Jobs run on one thread of this process per runner, oldest queued job first; each runner owns an Engine."""

    pushes_progress = True

    def __init__(self, store: JobStore, config: ServerConfig, runners: list[Runner],
                 disk: DiskGuard | None = None) -> None:
        super().__init__(store, config, disk)
        self.runners = runners
        self._wake = threading.Condition()
        self._submitted = False  # set under _wake by _dispatch, so a submission between a worker's empty claim
        # and its wait is not missed
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._live: dict[str, LiveJob] = {}
        # cancels of jobs a worker has claimed but not yet registered in _live; _run takes them up
        self._early_cancels: set[str] = set()
        self._live_lock = threading.Lock()

    def start(self) -> None:
        self.prune(force=True)
        requeued, failed = self.store.recover(self.config.max_attempts)
        if requeued or failed:
            log.warning("after a restart: %d job(s) queued again, %d failed", len(requeued), len(failed))
        for job_id in failed:
            self._finished(job_id)
        for index, runner in enumerate(self.runners):
            thread = threading.Thread(target=self._work, args=(runner, f"local-{index}"), daemon=True,
                                      name=f"huabu-worker-{index}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the threads; a running job is interrupted and queued again (it runs anew on the next start)."""
        self._stopping = True
        for live in list(self._live.values()):
            live.interrupt = True
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        for runner in self.runners:
            runner.close()

    def _dispatch(self, job: Job) -> None:
        with self._wake:
            self._submitted = True
            self._wake.notify()

    def cancel_running(self, job_id: str) -> None:
        with self._live_lock:
            live = self._live.get(job_id)
            if live is None:
                self._early_cancels.add(job_id)
            else:
                live.cancel = True

    def interrupt_running(self, skip: bool = False) -> None:
        for live in list(self._live.values()):
            if skip:
                live.skip = True
            else:
                live.interrupt = True

    def _flags(self, job_id: str) -> tuple[bool, bool]:
        live = self._live.get(job_id)
        return (live.skip, live.interrupt) if live else (False, False)

    def _work(self, runner: Runner, name: str) -> None:
        while not self._stopping:
            try:
                job = self.store.claim_next(name)
            except sqlite3.Error:  # a full or failing disk: keep the thread, try again shortly
                log.exception("worker %s could not claim a job", name)
                time.sleep(1.0)
                continue
            if job is None:
                with self._wake:
                    if not self._submitted:
                        self._wake.wait(timeout=1.0)
                    self._submitted = False
                continue
            self._run(runner, job)

    def _run(self, runner: Runner, job: Job) -> None:
        live = LiveJob(job)
        with self._live_lock:
            live.cancel = job.id in self._early_cancels
            self._early_cancels.discard(job.id)
            self._live[job.id] = live
        self._notify(job.id)  # it runs now

        def report(progress: dict[str, Any]) -> None:
            self.store.set_progress(job.id, progress)
            self._notify(job.id)

        try:
            outcome = runner.run(job, live, report)
        except Exception as err:  # every failure ends the job with its line; bugs are logged with a traceback
            message, kind = error_line(err)
            if kind == "internal" and not isinstance(err, RelayedFailure):  # a child logged its own traceback
                log.exception("job %s failed", job.id)
            self._complete(job, "failed", error=message, error_kind=kind)
        else:
            if self._stopping and outcome.interrupted and not live.cancel:  # cut short by the stop: run it anew
                self.store.requeue(job.id)
            else:
                self._complete(job, "cancelled" if live.cancel else "done", outcome)
        finally:
            self._live.pop(job.id, None)

    def current_image(self, job: Job) -> str | None:
        """A preview of the running job's first image: asked of its engine thread, which makes it at its next step
        (waiting for that at most PREVIEW_WAIT seconds; else the last one made)."""
        live = self._live.get(job.id)
        if live is None:
            return None
        live.preview_made.clear()
        live.preview_wanted.set()
        live.preview_made.wait(PREVIEW_WAIT)
        return live.preview

