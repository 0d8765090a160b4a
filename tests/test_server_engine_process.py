"""The default local backend: each worker's Engine in a spawned child process. Its images equal the in-process
engine's, progress and cancels cross the pipe, and a killed child fails its job with a line and is replaced."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from fastapi.testclient import TestClient
from server_support import LOCAL, TINY, api_settings, decode_png, make_app

LONG = {"steps": 150, "width": 64, "height": 64}  # long enough to be stopped part way


def _wait(client, job_id: str, done, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while not done(job := client.get(f"/api/v1/jobs/{job_id}").json()):
        assert time.monotonic() < deadline, f"job {job_id} stuck at {job}"
        time.sleep(0.05)
    return job


def test_a_child_engine_makes_the_in_process_images_and_reports_progress(engine, model_store, tmp_path):
    from huabu.server import ServerConfig, create_app

    settings = api_settings(model_store, tmp_path / "home")
    with TestClient(create_app(settings, ServerConfig()), base_url=LOCAL) as client:
        runner = client.app.state.huabu.queue.runners[0]
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a red apple", "seed": 5, **TINY})
        assert answer.status_code == 200, answer.text
        answer = answer.json()
        assert runner.pid not in (None, os.getpid())
        job = client.post("/api/v1/jobs", json={"request": {"prompt": "a cat", "seed": 6, **TINY}}).json()
        job = _wait(client, job["id"], lambda j: j["state"] in ("done", "failed"))
    with TestClient(make_app(settings, engine), base_url=LOCAL) as client:  # the same call, engine in this process
        in_process = client.post("/sdapi/v1/txt2img", json={"prompt": "a red apple", "seed": 5, **TINY}).json()
    child, ours = (np.asarray(decode_png(a["images"][0]).convert("RGB")) for a in (answer, in_process))
    assert np.array_equal(child, ours) and child.std() > 5
    assert job["state"] == "done" and job["progress"]["step"] == TINY["steps"]
    assert job["result"]["infotexts"][0].startswith("a cat") and job["result"]["count"] == 1
    assert runner.pid is None  # the server's stop closed the pipe and the child exited


def test_a_child_engine_is_cancelled_and_a_killed_one_is_replaced(model_store, tmp_path):
    from huabu.server import ServerConfig, create_app

    settings = api_settings(model_store, tmp_path / "home")
    with TestClient(create_app(settings, ServerConfig()), base_url=LOCAL) as client:
        runner = client.app.state.huabu.queue.runners[0]
        started = lambda j: j["progress"].get("step", 0) > 0  # noqa: E731
        first = client.post("/api/v1/jobs", json={"request": {"prompt": "x", "seed": 1, **LONG}}).json()
        _wait(client, first["id"], started)
        client.post(f"/api/v1/jobs/{first['id']}/cancel")
        cancelled = _wait(client, first["id"], lambda j: j["state"] != "running")
        assert cancelled["state"] == "cancelled" and cancelled["progress"]["step"] < LONG["steps"]

        second = client.post("/api/v1/jobs", json={"request": {"prompt": "x", "seed": 2, **LONG}}).json()
        _wait(client, second["id"], started)
        os.kill(runner.pid, signal.SIGKILL)
        failed = _wait(client, second["id"], lambda j: j["state"] != "running")
        assert failed["state"] == "failed" and "engine process" in failed["error"]

        third = client.post("/api/v1/jobs", json={"request": {"prompt": "x", "seed": 3, **TINY}}).json()
        assert _wait(client, third["id"], lambda j: j["state"] not in ("queued", "running"))["state"] == "done"


def test_only_a1111_outcomes_carry_their_images_across_the_pipe():
    from PIL import Image

    from huabu.server.runner import Outcome

    outcome = Outcome([Image.new("RGB", (8, 8), "red")], [1], ["x"], {}, {}, ["jobs/a/00000-1.png"])
    native = Outcome.from_wire(outcome.to_wire(images=False))  # a native job's image is in its file
    assert native.images == [] and native.summary()["count"] == 1
    a1111 = Outcome.from_wire(outcome.to_wire())
    assert a1111.count == 1 and a1111.images[0].getpixel((0, 0)) == (255, 0, 0)
