"""A server killed mid-job loses nothing: `huabu serve` runs in a subprocess, is SIGKILLed while a job runs, and
the next start (an app on the same home) finishes every accepted native job and fails the interrupted A1111 call
with a line saying why."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from server_support import LOCAL, api_settings, free_port, make_app, wait_for

from huabu.server.jobs import Job, JobStore


def _start(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HUABU_HOME": str(home), "HUABU_MODEL": "tiny-sd", "HUABU_DEVICE": "cpu",
           "HUABU_DTYPE": "fp32", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("HUABU_API_KEY", None)
    env.pop("HUABU_API_AUTH", None)
    return subprocess.Popen([sys.executable, "-m", "huabu.cli.main", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait_healthy(process: subprocess.Popen, base: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def _poll(base: str, job_id: str, until, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/api/v1/jobs/{job_id}", timeout=5.0).json()
        if until(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the expected state (last: {job})")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    process.stderr.close()


def test_a_killed_server_requeues_every_accepted_job_on_restart(engine, model_store, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(model_store["home"] / "models")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start(home, port)
    try:
        _wait_healthy(server, base)
        # 128x128 x 150 steps takes seconds, so the job is still running when the server is killed below
        slow = {"prompt": "long", "steps": 150, "width": 128, "height": 128, "sampler": "Euler", "seed": 3}
        first = httpx.post(f"{base}/api/v1/jobs", json={"request": slow}).json()
        others = [httpx.post(f"{base}/api/v1/jobs", json={"request": {"prompt": f"p{i}", "steps": 2, "width": 32,
                                                                      "height": 32, "seed": i}}).json()
                  for i in range(2)]
        blocked = threading.Thread(target=lambda: _swallow(lambda: httpx.post(
            f"{base}/sdapi/v1/txt2img", json={"prompt": "sync", "steps": 2, "width": 32, "height": 32},
            timeout=120)), daemon=True)
        blocked.start()
        _poll(base, first["id"], lambda job: job["state"] == "running" and job["progress"].get("step", 0) >= 2)
        deadline = time.monotonic() + 30
        store = JobStore(home / "jobs.sqlite")
        while len(store.active()) < 4 and time.monotonic() < deadline:  # the A1111 call is in the queue too
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)  # no shutdown handler runs
        server.wait(timeout=30)
        blocked.join(timeout=30)

        states = {job.id: job.state for job in store.active()}
        assert states[first["id"]] == "running"
        assert [states[job["id"]] for job in others] == ["queued", "queued"]
        sync_id = next(job_id for job_id in states if store.get(job_id).origin == "a1111")

        # The next start (in this process, on the session's loaded models) finds and finishes them.
        with TestClient(make_app(api_settings(model_store, home), engine), base_url=LOCAL) as client:
            finished = [wait_for(client, job["id"], timeout=120) for job in (first, *others)]
            assert [job["state"] for job in finished] == ["done", "done", "done"]
            assert finished[0]["attempts"] == 2 and finished[0]["result"]["seeds"] == [3]
            for job in finished:
                image = client.get(job["result"]["images"][0])
                assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            sync = client.get(f"/api/v1/jobs/{sync_id}").json()
            assert sync["state"] == "failed" and "send the request again" in sync["error"]
            assert {job["id"] for job in client.get("/api/v1/jobs").json()} == \
                {first["id"], sync_id, *(job["id"] for job in others)}
    finally:
        _stop(server)


def _swallow(call) -> None:
    try:
        call()
    except httpx.HTTPError:
        pass  # the server was killed under this request, as intended


def test_a_job_that_kept_killing_the_server_is_failed_not_retried_forever(tmp_path):
    attempts = 2
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.add(Job.new("image", {"prompt": "x"}))
    for _ in range(attempts):
        store.recover(attempts)
        assert store.claim_next("local-0").id == job.id  # started, then the server dies again
    requeued, failed = store.recover(attempts)
    assert failed == [job.id] and requeued == []
    assert store.get(job.id).state == "failed" and f"{attempts} times" in store.get(job.id).error


def test_a_job_store_transaction_that_fails_at_commit_leaves_its_thread_connection_usable(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    con = store._connections.get()
    con.execute("CREATE TABLE parents (id INTEGER PRIMARY KEY)")
    con.execute("CREATE TABLE children (parent INTEGER REFERENCES parents(id) DEFERRABLE INITIALLY DEFERRED)")
    con.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(sqlite3.IntegrityError):  # a deferred foreign key fails the COMMIT itself
        with store._transaction() as tx:
            tx.execute("INSERT INTO children VALUES (7)")
    assert not con.in_transaction
    job = store.add(Job.new("image", {"prompt": "after"}))
    assert store.get(job.id).request == {"prompt": "after"}
