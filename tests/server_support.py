"""Helpers for the HTTP API tests: a server home per test on the session's tiny models, tiny requests, PNG
base64, a live uvicorn server on a loopback port."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

TINY = {"steps": 2, "width": 32, "height": 32}  # a txt2img in a fraction of a second on the session's tiny model
LOCAL = "http://127.0.0.1"


def api_settings(model_store, home: Path, **overrides):
    """Settings whose home (jobs.sqlite, outputs, gallery) is `home` and whose models are the session's."""
    from huabu.core.settings import Settings

    fields = dict(models_dir=model_store["home"] / "models", default_model="tiny-sd", device="cpu", dtype="fp32",
                  hub_offline=True)
    fields.update(overrides)
    return Settings.for_home(home, **fields)


def make_app(settings, engine, config=None):
    """An app whose local worker shares the session engine's loaded models."""
    from huabu.engine.generate import Engine
    from huabu.server import ServerConfig, create_app

    return create_app(settings, config or ServerConfig(), engines=[Engine(settings, models=engine.models)])


def held_app(settings, engine, config=None, hold_at: int = 2):
    """An app whose worker holds every job of more than `hold_at` steps at step `hold_at` (repeating that step's
    progress report, so previews are still made) until it is asked to stop: cancel, interrupt or server stop. Tests
    of stopping a job then never race a job that ends first on a fast machine; TINY jobs run through."""
    from huabu.engine.generate import Engine
    from huabu.server import ServerConfig, create_app

    class HeldEngine(Engine):
        def generate(self, request, progress=None, interrupt=None, save=False, outdir=None, extensions=()):
            def held(p):
                progress(p)
                deadline = time.monotonic() + 60
                while hold_at <= p.step < p.steps and not interrupt() and time.monotonic() < deadline:
                    time.sleep(0.02)
                    progress(p)

            return super().generate(request, held, interrupt, save, outdir, extensions)

    return create_app(settings, config or ServerConfig(), engines=[HeldEngine(settings, models=engine.models)])


def wait_until_held(client, job_id: str, hold_at: int = 2, timeout: float = 60.0) -> None:
    """Wait until a held_app job reports step `hold_at`: "running" is written when a worker claims the job, a moment
    before the worker registers it as stoppable; a held job surely is."""
    deadline = time.monotonic() + timeout
    while client.get(f"/api/v1/jobs/{job_id}").json()["progress"].get("step", 0) < hold_at:
        assert time.monotonic() < deadline, f"job {job_id} never reached step {hold_at}"
        time.sleep(0.05)


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> Image.Image:
    assert not text.startswith("data:")
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    assert image.format == "PNG"
    image.load()
    return image


def wait_for(client, job_id: str, timeout: float = 60.0, states=("done", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout}s (last: {job})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(app) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
