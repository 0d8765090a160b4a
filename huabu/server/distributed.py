"""Scale-out: the same jobs on Celery workers over Redis, each worker process with its own Engine.

The server stays the only writer of the SQLite jobs table: it sends each persisted job to the broker (task id =
job id) and a mirror thread copies the workers' states, progress and results back into SQLite, so the native API
reads one place whichever backend runs. Celery is set up so that no accepted job is lost when a worker dies:
`task_acks_late` + `task_reject_on_worker_lost` keep a message unacknowledged until its job has finished, and
Redis hands an unacknowledged message to another worker once `visibility_timeout` has passed. Only JSON crosses
the broker (`accept_content=["json"]`): nothing from it is ever unpickled. Anyone who can write to Redis can send a
job, so a worker checks each one as the HTTP routes check a request (`job_from_wire`).

A job that outlives `visibility_timeout` has its message handed out again while it still runs; a Redis lease that
its worker renews while the job runs makes that second copy wait instead of running the job twice, and once the
job has ended (an `ended` key) any later copy is dropped. A worker that dies stops renewing, its lease lapses
within seconds, and the next copy of the message runs the job.

Workers write result files into their own `HUABU_HOME` outputs folder, which must be the server's (same machine
or a shared folder) for /api/v1/files; A1111 responses carry their images through Redis and need no shared folder.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import replace
from typing import Any

from huabu.core.errors import InvalidRequest
from huabu.server.catalog import Catalog
from huabu.server.config import Limits, ServerConfig
from huabu.server.jobs import Job, JobStore
from huabu.server.queue import JobQueue, error_line
from huabu.server.runner import Outcome, progress_data, run_job
from huabu.server.storage import DiskGuard

log = logging.getLogger(__name__)

TASK_NAME = "huabu.run_job"
QUEUE_NAME = "huabu"
MIRROR_INTERVAL = 0.3  # seconds between the server's looks at the workers' states
FLAG_CHECK_INTERVAL = 0.5  # seconds between a worker's looks for cancel / interrupt flags
PROGRESS_INTERVAL = 0.25  # seconds between a worker's progress reports
DEFAULT_VISIBILITY_TIMEOUT = 3600.0  # a job's message unacknowledged this long goes to another worker
LEASE_SECONDS = 30.0  # a running job's claim in Redis, renewed every third of it; at most half the visibility timeout


def make_celery(broker_url: str, settings=None, visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
                preload: str | None = None, limits: Limits | None = None):
    """A Celery app on `broker_url` (Redis, also the result backend). With `settings` it can run jobs within
    `limits`: its task builds one Engine for the worker process on first use (or now, loading `preload`)."""
    from celery import Celery

    app = Celery("huabu", broker=broker_url, backend=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1, task_track_started=True,
        task_serializer="json", result_serializer="json", accept_content=["json"], result_accept_content=["json"],
        task_default_queue=QUEUE_NAME, result_expires=7 * 24 * 3600, broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False, task_ignore_result=False,
        broker_transport_options={"visibility_timeout": visibility_timeout,
                                  "unacked_restore_interval": max(1, int(visibility_timeout / 4)),
                                  "unacked_restore_throttle": 1})
    if settings is not None:
        _register_task(app, replace(settings, allow_unsafe_pickle=False), preload, limits or Limits(),
                       min(LEASE_SECONDS, visibility_timeout / 2))
    return app


def job_from_wire(payload: Any, catalog: Catalog) -> Job:
    """A job message from the broker, checked as the HTTP routes check a request: models from the registry only,
    images inside the request, no paths, within the limits."""
    if not isinstance(payload, dict) or not isinstance(payload.get("request"), dict):
        raise InvalidRequest("a job message must be a JSON object with a request object")
    origin = payload.get("origin")
    if origin not in ("api", "a1111"):
        raise InvalidRequest(f"job origin must be 'api' or 'a1111', got {str(origin)[:50]!r}")
    job_id = payload.get("id")
    if not isinstance(job_id, str) or not re.fullmatch(r"[0-9a-f]{32}", job_id):  # it names the job's folder
        raise InvalidRequest("a job message's id must be 32 lower-case hex digits")
    kind = payload.get("kind")
    request = catalog.check_generate(payload["request"], kind)
    return Job(id=job_id, kind=kind, request=request.to_data(), origin=origin,
               save=bool(payload.get("save", True)))


def _flag_key(kind: str, job_id: str) -> str:
    return f"huabu:{kind}:{job_id}"


class Lease:
    """A worker's claim on a job in Redis, renewed by a thread while the job runs and marked ended after it."""

    def __init__(self, redis, job_id: str, worker: str, seconds: float) -> None:
        self.redis, self.key, self.worker, self.seconds = redis, _flag_key("lease", job_id), worker, seconds
        self.ended_key = _flag_key("ended", job_id)
        self._stop = threading.Event()

    def ended_on(self) -> str | None:
        """The worker that ran the job to its end, or None while it has not ended."""
        value = self.redis.get(self.ended_key)
        return value.decode() if value is not None else None

    def holder(self) -> str:
        return (self.redis.get(self.key) or b"?").decode()

    def acquire(self) -> bool:
        return bool(self.redis.set(self.key, self.worker, nx=True, px=int(self.seconds * 1000)))

    def __enter__(self) -> Lease:
        threading.Thread(target=self._renew, daemon=True, name="huabu-lease").start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.redis.set(self.ended_key, self.worker, ex=7 * 24 * 3600)
        self.redis.delete(self.key)

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.redis.pexpire(self.key, int(self.seconds * 1000))
            except Exception:  # a broker hiccup: the next renewal tries again
                log.exception("renewing the lease on %s failed", self.key)


def _register_task(app, settings, preload: str | None, limits: Limits, lease_seconds: float) -> None:
    engines: list = []  # this worker process's Engine, made once
    catalogs: list[Catalog] = []

    def engine():
        if not engines:
            from huabu.engine.generate import Engine

            engines.append(Engine(settings))
        return engines[0]

    def catalog() -> Catalog:
        if not catalogs:
            catalogs.append(Catalog(settings, engine().models, limits, default_model=settings.default_model))
        return catalogs[0]

    if preload is not None:
        engine().models.load(preload)

    @app.task(name=TASK_NAME, bind=True)
    def run(task, payload: dict[str, Any]) -> dict[str, Any]:
        worker = task.request.hostname
        try:
            job = job_from_wire(payload, catalog())
        except Exception as err:
            message, kind = error_line(err)
            log.warning("refused a job message: %s", message)
            return {"status": "failed", "error": message, "error_kind": kind, "worker": worker}
        from celery.exceptions import Ignore

        redis = app.backend.client
        lease = Lease(redis, job.id, worker, lease_seconds)
        ended_on = lease.ended_on()
        if ended_on is not None:
            log.info("job %s has ended on %s; dropping this copy of its message", job.id, ended_on)
            raise Ignore()
        if redis.exists(_flag_key("cancel", job.id)):
            return {"status": "cancelled", "worker": worker}
        if not lease.acquire():
            log.info("job %s is running on %s; this copy of its message looks again in %.0f s", job.id,
                     lease.holder(), lease_seconds)
            raise task.retry(countdown=lease_seconds, max_retries=None)
        with lease:
            return _run_claimed(task, engine(), job, worker, redis)

    def _run_claimed(task, engine, job: Job, worker: str, redis) -> dict[str, Any]:
        task.update_state(state="PROGRESS", meta={"worker": worker, "progress": {}})
        flags = {"checked": 0.0, "stop": False, "cancel": False}
        reported = [0.0]

        def on_progress(p) -> None:
            now = time.monotonic()
            if now - reported[0] >= PROGRESS_INTERVAL or p.step == p.steps:
                reported[0] = now
                task.update_state(state="PROGRESS", meta={"worker": worker, "progress": progress_data(p)})

        def should_stop() -> bool:
            now = time.monotonic()
            if now - flags["checked"] >= FLAG_CHECK_INTERVAL:
                flags["checked"] = now
                flags["cancel"] = bool(redis.exists(_flag_key("cancel", job.id)))
                flags["stop"] = flags["cancel"] or bool(redis.exists(_flag_key("interrupt", job.id)))
            return flags["stop"]

        try:
            outcome = run_job(engine, job, on_progress, should_stop)
        except Exception as err:  # the job's line goes back to the server; bugs are logged here too
            message, kind = error_line(err)
            if kind == "internal":
                log.exception("job %s failed", job.id)
            return {"status": "failed", "error": message, "error_kind": kind, "worker": worker}
        return {"status": "cancelled" if flags["cancel"] else "done", "worker": worker,
                **outcome.to_wire(images=job.answers_with_images)}


def run_worker(settings, broker_url: str, name: str, visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
               preload: str | None = None, limits: Limits | None = None) -> None:
    """Run one Celery worker process (solo pool: the process itself owns the Engine) until it is stopped."""
    from huabu.core.atomic import sweep_temporaries

    sweep_temporaries(settings.outputs_dir)  # what a killed worker left mid-write
    app = make_celery(broker_url, settings, visibility_timeout, preload, limits)
    app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--hostname={name}", f"--queues={QUEUE_NAME}",
                     "--without-gossip", "--without-mingle", "--loglevel=INFO"])


class CeleryQueue(JobQueue):
    """Sends jobs to Celery and mirrors their states into SQLite."""

    def __init__(self, store: JobStore, config: ServerConfig, broker_url: str, disk: DiskGuard | None = None) -> None:
        super().__init__(store, config, disk)
        self.app = make_celery(broker_url)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.prune(force=True)
        _, failed = self.store.recover(self.config.max_attempts, local_runs=False)
        for job_id in failed:
            self._finished(job_id)
        for job in self.store.active():
            if not job.dispatched:  # persisted, but the server stopped before the broker had it
                self._dispatch(job)
        self._thread = threading.Thread(target=self._mirror, daemon=True, name="huabu-celery-mirror")
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _dispatch(self, job: Job) -> None:
        payload = {"id": job.id, "kind": job.kind, "request": job.request, "origin": job.origin, "save": job.save}
        self.app.send_task(TASK_NAME, args=[payload], task_id=job.id, queue=QUEUE_NAME)
        self.store.mark_dispatched(job.id)

    def _revoke(self, job_id: str) -> None:
        self._set_flag("cancel", job_id)
        self.app.control.revoke(job_id)

    def cancel_running(self, job_id: str) -> None:
        self._set_flag("cancel", job_id)

    def interrupt_running(self, skip: bool = False) -> None:
        for job in self.running():
            self._set_flag("interrupt", job.id)

    def _set_flag(self, kind: str, job_id: str) -> None:
        self.app.backend.client.set(_flag_key(kind, job_id), 1, ex=7 * 24 * 3600)

    def _flags(self, job_id: str) -> tuple[bool, bool]:
        return False, bool(self.app.backend.client.exists(_flag_key("interrupt", job_id)))

    def _mirror(self) -> None:
        while not self._stopping.wait(MIRROR_INTERVAL):
            try:
                for job in self.store.active():
                    if job.dispatched:
                        self._mirror_job(job)
            except Exception:  # a broker hiccup must not end the mirror; it retries on the next round
                log.exception("mirroring job states from Celery failed")

    def _mirror_job(self, job: Job) -> None:
        result = self.app.AsyncResult(job.id)
        state = result.state
        if state in ("STARTED", "PROGRESS"):
            info = result.info if isinstance(result.info, dict) else {}
            worker = info.get("worker") or info.get("hostname")  # PROGRESS meta / Celery's STARTED meta
            self.store.mark_running(job.id, worker)
            if info.get("progress"):
                self.store.set_progress(job.id, info["progress"], worker)
        elif state == "SUCCESS":
            data = result.result or {}
            self.store.mark_running(job.id, data.get("worker"))
            if data.get("status") == "failed":
                self._complete(job, "failed", error=data.get("error"), error_kind=data.get("error_kind"))
            elif data.get("status") == "cancelled" and "images" not in data:
                self._complete(job, "cancelled")
            else:
                self._complete(job, data.get("status", "done"), Outcome.from_wire(data))
            result.forget()
        elif state == "FAILURE":
            message, _ = error_line(result.result if isinstance(result.result, BaseException)
                                    else RuntimeError(str(result.result)))
            self._complete(job, "failed", error=message, error_kind="internal")
            result.forget()
        elif state == "REVOKED":
            self._complete(job, "cancelled")
            result.forget()
