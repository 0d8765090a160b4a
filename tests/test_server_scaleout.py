"""Scale-out: a local redis-server, two `huabu worker` processes (Celery, each with its own Engine) and the API in
broker mode. Jobs spread over both workers; one worker is SIGKILLed mid-job and every job still ends done."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from server_support import LOCAL, api_settings, free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (Debian package redis-server; "
                                       "scripts/install.sh --dev installs it)")
celery = pytest.importorskip("celery", reason="celery (the server extra) is not installed")

REQUEUE_AFTER = 3  # seconds before a job's message goes to the other worker again; each job here takes ~1 s
JOBS = 6


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    handle = open(log, "wb")
    try:
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        handle.close()


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _until(check, timeout: float, what: str, logs: list[Path] = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in logs if log.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def test_two_workers_share_the_queue_and_a_killed_worker_loses_no_job(engine, model_store, tmp_path):
    import redis

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(model_store["home"] / "models")
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    processes: dict[str, subprocess.Popen] = {}
    logs = [tmp_path / "redis.log", tmp_path / "w1.log", tmp_path / "w2.log"]
    try:
        processes["redis"] = _spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                     str(tmp_path), "--save", "", "--appendonly", "no"], logs[0])
        client = redis.Redis(host="127.0.0.1", port=port)
        _until(lambda: _pings(client), 30, "redis-server", logs)

        env = {**os.environ, "HUABU_HOME": str(home), "HUABU_DEVICE": "cpu", "HUABU_DTYPE": "fp32",
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        for name, log in (("w1", logs[1]), ("w2", logs[2])):
            processes[name] = _spawn([sys.executable, "-m", "huabu.cli.main", "worker", "--broker", broker, "--name",
                                      f"{name}@test", "--requeue-after", str(REQUEUE_AFTER), "--preload", "tiny-sd"],
                                     log, env)

        from huabu.server import ServerConfig
        from huabu.server.app import create_app

        app = create_app(api_settings(model_store, home, models_dir=home / "models"),
                         ServerConfig(broker_url=broker))
        with TestClient(app, base_url=LOCAL) as api:
            control = app.state.huabu.queue.app.control
            _until(lambda: len(control.ping(timeout=0.5)) == 2, 180, "both workers to answer a ping", logs)

            # A job outliving REQUEUE_AFTER: the copy of its message the other worker gets waits on the job's lease,
            # and is dropped once the job has ended, so the job runs on one worker only.
            long = api.post("/api/v1/jobs", json={"request": {"prompt": "long", "steps": 150, "n_iter": 16,
                                                              "width": 96, "height": 96, "seed": 99}}).json()["id"]
            _until(lambda: _logged(logs, f"job {long} is running on"), 120, "the long job's copy to wait", logs)
            assert api.post(f"/api/v1/jobs/{long}/cancel").status_code == 200
            ran_on = _until(lambda: _logged(logs, f"job {long} has ended on "), 60, "the copy to be dropped", logs)
            ended = api.get(f"/api/v1/jobs/{long}").json()
            assert ended["state"] == "cancelled" and ended["worker"] in ran_on

            request = {"prompt": "spread", "steps": 100, "width": 96, "height": 96, "sampler": "Euler"}
            ids = [api.post("/api/v1/jobs", json={"request": {**request, "seed": i}}).json()["id"]
                   for i in range(JOBS)]
            seen: dict[str, set[str]] = {job_id: set() for job_id in ids}

            def observe() -> list[dict]:
                jobs = [api.get(f"/api/v1/jobs/{job_id}").json() for job_id in ids]
                for job in jobs:
                    if job["worker"]:
                        seen[job["id"]].add(job["worker"])
                return jobs

            victim = _until(lambda: next((job for job in observe() if job["state"] == "running"
                                          and job["worker"] == "w1@test"
                                          and job["progress"].get("step", 0) >= 1), None),
                            120, "a job running on w1", logs)
            _kill(processes["w1"])

            def all_finished() -> list[dict] | None:
                jobs = observe()
                return jobs if all(job["state"] in ("done", "failed", "cancelled") for job in jobs) else None

            final = _until(all_finished, 180, "every job to finish", logs)
            assert [job["state"] for job in final] == ["done"] * JOBS, [job["error"] for job in final]
            workers = set().union(*seen.values())
            assert workers == {"w1@test", "w2@test"}  # both took jobs
            assert seen[victim["id"]] == {"w1@test", "w2@test"}  # the killed worker's job was taken over
            assert next(job for job in final if job["id"] == victim["id"])["worker"] == "w2@test"
            assert sorted(seed for job in final for seed in job["result"]["seeds"]) == list(range(JOBS))
            for job in final:
                served = api.get(job["result"]["images"][0])
                assert served.status_code == 200 and served.headers["content-type"] == "image/png"
            assert app.state.huabu.queue.app.conf.accept_content == ["json"]  # no pickle over the broker
    finally:
        for name in ("w1", "w2", "redis"):
            if name in processes:
                _kill(processes[name])


def _logged(logs: list[Path], text: str) -> str | None:
    """The first line holding `text` in the worker logs, else None."""
    for log in logs:
        if log.exists():
            found = next((line for line in log.read_text(errors="replace").splitlines() if text in line), None)
            if found:
                return found
    return None


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # not accepting connections yet
        return False
