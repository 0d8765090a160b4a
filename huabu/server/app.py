"""The FastAPI application: routes, the security guard, one-line JSON errors, and the queue's lifetime."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import huabu
from huabu.core.atomic import sweep_temporaries
from huabu.core.errors import HuabuError, ModelNotFound, UnsafeCheckpoint
from huabu.core.settings import Settings
from huabu.server.catalog import Catalog
from huabu.server.config import ServerConfig
from huabu.server.jobs import JobStore
from huabu.server.queue import JobQueue
from huabu.server.security import Guard, NotAllowed, NotFound, PayloadTooLarge, SafeJSONResponse
from huabu.server.storage import DISK_ERROR, DISK_FULL, DiskGuard, StorageFull, is_disk_full

log = logging.getLogger(__name__)

JOBS_DB = "jobs.sqlite"

_STATUS = ((NotFound, 404), (ModelNotFound, 404), (PayloadTooLarge, 413), (NotAllowed, 403), (UnsafeCheckpoint, 403),
           (StorageFull, 507))


@dataclass
class ServerState:
    settings: Settings
    config: ServerConfig
    queue: JobQueue
    catalog: Catalog


def create_app(settings: Settings, config: ServerConfig | None = None, engines: list | None = None) -> FastAPI:
    """The API app. Local mode runs jobs on `engines` of this process when given (tests, benchmarks), else on
    `config.workers` child processes with an Engine each; with `config.broker_url` jobs go to Celery workers.
    Pickle checkpoints are never loaded on behalf of HTTP clients, whatever the environment says."""
    config = config or ServerConfig()
    settings = replace(settings, allow_unsafe_pickle=False)
    store = JobStore(settings.home / JOBS_DB)
    quota = None if config.max_output_gb is None else int(config.max_output_gb * 2**30)
    disk = DiskGuard(settings.home, settings.outputs_dir, quota)
    if config.broker_url:
        from huabu.server.distributed import CeleryQueue

        queue: JobQueue = CeleryQueue(store, config, config.broker_url, disk)
    elif engines:
        from huabu.server.queue import EngineThread, LocalQueue

        queue = LocalQueue(store, config, [EngineThread(engine) for engine in engines], disk)
    else:
        from huabu.server.engine_process import EngineProcess
        from huabu.server.queue import LocalQueue

        queue = LocalQueue(store, config, [EngineProcess(settings, f"engine-{i}") for i in range(config.workers)],
                           disk)
    from huabu.engine.models import ModelManager

    models = ModelManager(settings)  # lists and resolves names for HTTP clients; loads nothing
    state = ServerState(settings, config, queue,
                        Catalog(settings, models, config.limits, default_model=settings.default_model))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        removed = sweep_temporaries(settings.outputs_dir)  # what a killed run left mid-write
        if removed:
            log.warning("removed %d temporary file(s) a stopped run left in %s", removed, settings.outputs_dir)
        queue.start()
        try:
            yield
        finally:
            queue.stop()

    app = FastAPI(
        title="huabu API",
        version=huabu.__version__,
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
        description="A1111-compatible /sdapi/v1 routes and huabu's native jobs API.",
    )
    app.state.huabu = state
    from huabu.server import a1111, a1111_controlnet, native

    app.include_router(a1111.router)
    app.include_router(a1111_controlnet.router)
    app.include_router(native.router)

    @app.get("/health", tags=["server"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": huabu.__version__}

    @app.exception_handler(HuabuError)
    async def huabu_error(request: Request, err: HuabuError) -> JSONResponse:
        status = next((code for cls, code in _STATUS if isinstance(err, cls)), 400)
        return _error(status, type(err).__name__, str(err))

    @app.exception_handler(a1111.JobFailed)
    async def job_failed(request: Request, err: a1111.JobFailed) -> JSONResponse:
        return _error(500, "JobFailed", str(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, "HTTPException", str(err.detail), err.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:  # logged with its traceback by starlette
        if is_disk_full(err):
            return _error(507, "StorageFull", DISK_FULL)
        if isinstance(err, sqlite3.OperationalError):  # SQLite's "disk I/O error", also what a full tmpfs gives
            return _error(503, "StorageError", DISK_ERROR)
        return _error(500, "InternalError", f"internal error: {type(err).__name__} (see the server log)")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, "ValidationError", _validation_line(err))

    app.add_middleware(Guard, config=config)
    return app


def _error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return SafeJSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def _validation_line(err: RequestValidationError) -> str:
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
    return f"{where}: {str(first.get('msg', 'invalid value')).lower()}"
