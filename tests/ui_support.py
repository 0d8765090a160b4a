"""Helpers for the studio tests: settings on the session's tiny models, an engine whose runs a test can hold at a
gate, a studio served on a free local port, and the headless-Chromium launch."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huabu.core.settings import Settings
from huabu.engine.generate import Engine

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def ui_settings(model_store: dict, home: Path) -> Settings:
    """A fresh home (gallery, outputs, LoRAs, motion modules) that generates with the session's tiny diffusers model
    by default and finds the session's tiny ControlNets (conftest's controlnet_store) once they are made."""
    return Settings.for_home(home, models_dir=model_store["home"] / "models", default_model=str(model_store["folder"]),
                             controlnet_dir=model_store["home"] / "controlnet", device="cpu", dtype="fp32",
                             hub_offline=True)


class GatedEngine(Engine):
    """A real Engine whose runs can be held: at the start (`gate`) or after their first step (`step_gate`), so a
    test can look at the app while a generation is running. `entered` / `stepped` say how far a run got; `steps`
    counts the steps the last run made."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.gate: threading.Event | None = None
        self.step_gate: threading.Event | None = None
        self.entered = threading.Event()
        self.stepped = threading.Event()
        self.steps = 0

    def generate(self, request, progress=None, interrupt=None, save=False, outdir=None, extensions=()):
        self.entered.set()
        self.steps = 0
        if self.gate is not None:
            assert self.gate.wait(60), "the test never opened the gate"

        def counted(p) -> None:
            self.steps += 1
            if progress is not None:
                progress(p)
            if self.step_gate is not None and self.steps == 1:
                self.stepped.set()
                assert self.step_gate.wait(60), "the test never opened the step gate"

        return super().generate(request, counted, interrupt, save, outdir, extensions)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(studio, auth: list[tuple[str, str]] | None = None) -> Iterator[str]:
    """Serve `studio` on 127.0.0.1 (behind gradio's login when `auth` is given) for the duration; yields its URL."""
    port = free_port()
    demo = studio.launch("127.0.0.1", port, block=False, quiet=True, auth=auth)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
