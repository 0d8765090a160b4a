"""The native jobs API: a job is JSON data (`{"kind", "request", "callback_url"}`), persisted before the 202, with
its state, progress (also as server-sent events), cancel, and results served from the output folder."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from huabu.server.jobs import FINISHED, STATES, Job
from huabu.server.security import CheckedRoute, NotFound, SafeJSONResponse, check_callback_url, safe_output_file

router = APIRouter(prefix="/api/v1", tags=["jobs"], route_class=CheckedRoute)

EVENT_POLL = 0.25  # seconds between progress checks of one event stream (queues that do not push changes)
PUSHED_POLL = 2.0  # the same, as a safety net, for queues that wake streams on every change
KEEPALIVE = 15.0  # seconds between comments that keep idle event streams open through proxies


class JobSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["image", "video", "replace", "try-on", "instant-id", "portrait"] = "image"
    request: dict[str, Any] = Field(description="GenerateRequest (image), VideoRequest (video) or AppRequest (the "
                                                "apps; portrait is refused over HTTP) fields")
    callback_url: str | None = Field(default=None, description="POSTed the finished job; host must be allowed")


def _job_or_404(http: Request, job_id: str) -> Job:
    job = http.app.state.huabu.queue.store.get(job_id)
    if job is None:
        days = http.app.state.huabu.config.keep_jobs_days
        kept = f" (finished jobs are kept {days:g} days)" if days else ""
        raise NotFound(f"no job {job_id[:64]!r}{kept}")
    return job


@router.post("/jobs", status_code=202)
def submit(http: Request, submission: JobSubmission) -> SafeJSONResponse:
    state = http.app.state.huabu
    request = state.catalog.check_generate(submission.request, submission.kind)
    callback = check_callback_url(submission.callback_url, state.config.callback_allow) \
        if submission.callback_url else None
    job = state.queue.submit(Job.new(submission.kind, request.to_data(), callback_url=callback))
    return SafeJSONResponse(job.public(), status_code=202, headers={"Location": f"/api/v1/jobs/{job.id}"})


@router.get("/jobs")
def list_jobs(http: Request, state: Literal[STATES] | None = None,  # type: ignore[valid-type]
              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=2**62)) -> list[dict[str, Any]]:
    return [job.public() for job in http.app.state.huabu.queue.store.list(state, limit, offset)]


@router.get("/jobs/{job_id}")
def get_job(http: Request, job_id: str) -> dict[str, Any]:
    return _job_or_404(http, job_id).public()


@router.post("/jobs/{job_id}/cancel")
def cancel(http: Request, job_id: str) -> dict[str, Any]:
    _job_or_404(http, job_id)
    return http.app.state.huabu.queue.cancel(job_id).public()


@router.get("/jobs/{job_id}/events")
async def events(http: Request, job_id: str) -> StreamingResponse:
    """Server-sent events: `progress` whenever the state or step changes, then one `done` / `failed` /
    `cancelled` event with the job, and the stream ends."""
    await run_in_threadpool(_job_or_404, http, job_id)
    queue = http.app.state.huabu.queue
    # Woken by the queue when the job starts, moves or ends; a queue that does not say so is polled.
    poll = PUSHED_POLL if queue.pushes_progress else EVENT_POLL

    async def stream() -> AsyncIterator[str]:
        last: tuple | None = None
        sent = time.monotonic()
        changed = queue.watch(job_id, asyncio.get_running_loop())
        try:
            while True:
                changed.clear()  # before reading: a change from here on wakes the wait below
                job = await run_in_threadpool(queue.store.get, job_id)
                if job is None:
                    return
                if job.state in FINISHED:
                    yield _event(job.state, job.public())
                    return
                key = (job.state, json.dumps(job.progress, sort_keys=True))
                if key != last or time.monotonic() - sent >= KEEPALIVE:
                    yield _event("progress", {"id": job.id, "state": job.state, "progress": job.progress}) \
                        if key != last else ": keep-alive\n\n"
                    last, sent = key, time.monotonic()
                if await http.is_disconnected():
                    return
                try:
                    await asyncio.wait_for(changed.wait(), poll)
                except asyncio.TimeoutError:
                    pass
        finally:
            queue.unwatch(job_id, changed)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


@router.get("/files/{path:path}")
def files(http: Request, path: str) -> FileResponse:
    """A result file from the output folder: images and videos only, never outside the folder."""
    target, media_type = safe_output_file(http.app.state.huabu.settings.outputs_dir, path)
    return FileResponse(target, media_type=media_type, headers={
        "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"})
