"""Running one job on an Engine: the only place the server calls into generation, shared by the local threads and
the Celery workers. A job's request was validated when it was accepted; it is validated again here because a
job read back from SQLite or a broker is just data.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from huabu.core.apps import API_APPS, AppRequest
from huabu.core.requests import GenerateRequest, VideoRequest
from huabu.engine.generate import Engine
from huabu.engine.job import Progress
from huabu.server.jobs import Job

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a finished job produced. `images` stay in memory for the A1111 response; `summary()` is the JSON kept
    in the job row."""

    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    request_used: dict[str, Any]
    model: dict[str, Any]
    files: list[str] = field(default_factory=list)  # relative to the outputs folder (served by /api/v1/files)
    interrupted: bool = False
    # The images as the wire carried them (base64 PNGs with their infotexts), so an A1111 answer in PNG sends them
    # as they are instead of decoding and encoding them again; empty for an outcome made in this process.
    encoded: list[str] = field(default_factory=list)
    count: int | None = None  # images made; given only where they did not travel with the outcome
    seconds: float | None = None  # the engine's time on the job, saving included, timed where it ran

    def __post_init__(self) -> None:
        if self.count is None:
            self.count = len(self.images)

    def summary(self) -> dict[str, Any]:
        return {"files": self.files, "seeds": self.seeds, "infotexts": self.infotexts,
                "request_used": self.request_used, "model": self.model, "interrupted": self.interrupted,
                "count": self.count, "seconds": self.seconds}

    def to_wire(self, images: bool = True) -> dict[str, Any]:
        """The summary plus, with `images`, the images as base64 PNGs (a Celery result travels through Redis as
        JSON), which a job that answers with them needs (Job.answers_with_images)."""
        encoded = [png_base64(image, text) for image, text in zip(self.images, self.infotexts)] if images else []
        return {**self.summary(), "images": encoded}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Outcome:
        encoded = data.get("images", [])
        images = [Image.open(io.BytesIO(base64.b64decode(text))) for text in encoded]  # decoded only if used
        return cls(images, data["seeds"], data["infotexts"], data["request_used"], data["model"], data["files"],
                   data["interrupted"], encoded, data.get("count", len(encoded)), data.get("seconds"))


PROGRESS_INTERVAL = 0.2  # seconds between progress reports of one job (each is a row written and a wake-up)


@dataclass
class ProgressGate:
    """Lets a job's progress through at most every PROGRESS_INTERVAL seconds, and always its last step."""

    last: float = 0.0

    def passes(self, p: Progress) -> bool:
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL or progress_fraction(p) >= 1.0:
            self.last = now
            return True
        return False


def progress_fraction(p: Progress) -> float:
    return (p.iteration * p.steps + p.step) / max(1, p.n_iter * p.steps)


def progress_data(p: Progress) -> dict[str, Any]:
    return {"fraction": round(progress_fraction(p), 4), "step": p.step, "steps": p.steps, "iteration": p.iteration,
            "n_iter": p.n_iter, "first_image": p.first_image, "total_images": p.total_images}


def run_job(engine: Engine, job: Job, progress: Callable[[Progress], None] | None = None,
            interrupt: Callable[[], bool] | None = None) -> Outcome:
    """Run `job` through `Engine.generate` (images) or `Engine.generate_video`, timed; user errors raise HuabuError
    with one line."""
    begun = time.perf_counter()
    outcome = _outcome(engine, job, progress, interrupt)
    outcome.seconds = time.perf_counter() - begun
    return outcome


def _outcome(engine: Engine, job: Job, progress: Callable[[Progress], None] | None,
             interrupt: Callable[[], bool] | None) -> Outcome:
    root = Path(os.path.realpath(engine.settings.outputs_dir))
    if job.kind == "video":  # the file is the result (saved whatever job.save says): no frames travel in memory
        video = engine.generate_video(VideoRequest.from_data(job.request), progress, interrupt, save=True,
                                      output=_fresh_job_folder(engine, root, job))
        files = [Path(os.path.realpath(video.path)).relative_to(root).as_posix()] if video.path else []
        return Outcome([], [video.seed], [video.infotext], video.request_used.to_data(), video.model, files,
                       video.interrupted)
    outdir = _fresh_job_folder(engine, root, job) if job.save else None
    if job.kind in API_APPS:  # the app's request is what was used: its generation's holds the images made for it
        from huabu.engine.apps import run_app

        app = AppRequest.from_data(job.request)
        result = run_app(engine, app, progress=progress, interrupt=interrupt, save=job.save, outdir=outdir)
        used = app.model_copy(update={"seed": result.request_used.seed, "image": None, "mask": None,
                                      "reference": None}).to_data()  # the images are in the job's request
    else:
        request = GenerateRequest.from_data(job.request)
        result = engine.generate(request, progress=progress, interrupt=interrupt, save=job.save, outdir=outdir)
        used = result.request_used.to_data()
    files = [Path(os.path.realpath(path)).relative_to(root).as_posix() for path in result.paths]
    return Outcome(result.images, result.seeds, result.infotexts, used, result.model, files, result.interrupted)


def _fresh_job_folder(engine: Engine, root: Path, job: Job) -> Path:
    """`outputs/jobs/<job id>`, emptied: a job runs again only when an earlier run of it never finished (its
    process was killed, or its Celery message redelivered), and what that run wrote was never reported to anyone,
    so the run again replaces it instead of adding a second set of outputs."""
    folder = job_folder(root, job.id)
    if folder.exists():
        engine.gallery.remove_under(folder)
        shutil.rmtree(folder)
    return folder


def job_folder(root: Path, job_id: str) -> Path:
    """`outputs/jobs/<job id>`: where a job that saves writes its files."""
    if not re.fullmatch(r"[0-9a-f]{32}", job_id):  # Job.new's ids; anything else must never name a folder
        raise ValueError(f"not a job id: {job_id[:40]!r}")
    return root / "jobs" / job_id


def png_base64(image: Image.Image, infotext: str | None = None) -> str:
    """An image as A1111 returns it: base64 PNG without a data: prefix, with the `parameters` chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if infotext:
        info.add_itxt("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def preview_png(engine: Engine, job: Job, latents: Any) -> str | None:
    """The first image of `latents` decoded with the job's model VAE, as base64 PNG; None when that fails."""
    try:
        from huabu.engine.pipelines import decode_latents

        model = engine.models.load(job.request.get("model"), job.request.get("checkpoint_config"))
        images, _ = decode_latents(model.pipeline, latents[:1].to(model.pipeline.vae.device), model.vae_needs_fp32)
        return png_base64(images[0])
    except Exception as err:  # a preview is best effort: never fail a job or /progress because of it
        log.debug("no preview for job %s: %s", job.id, err)
        return None
