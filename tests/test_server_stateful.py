"""A hypothesis state machine over the job queue with an instant fake engine: submits (native and A1111), cancels,
server stops with running work, and restarts on the same home. Invariants: no accepted job is ever lost, every job
reaches a final state once the queue drains, and every 200 A1111 answer holds batch_size x n_iter images."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from PIL import Image
from server_support import LOCAL, api_settings

from huabu.engine.generate import GenerationResult
from huabu.server import ServerConfig, create_app
from huabu.server.jobs import FINISHED, STATES

FINAL = set(FINISHED)


class InstantEngine:
    """What LocalQueue needs of an Engine: `settings` and `generate`, which here takes a few milliseconds."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def generate(self, request, progress=None, interrupt=None, save=False, outdir=None) -> GenerationResult:
        time.sleep(0.003)
        count = request.batch_size * request.n_iter
        images = [Image.new("RGB", (request.width, request.height), "red") for _ in range(count)]
        return GenerationResult(images, [request.seed + i for i in range(count)], ["fake"] * count, request,
                                {"name": "fake"}, interrupted=bool(interrupt and interrupt()))


def _client(model_store, home: Path) -> TestClient:
    app_settings = api_settings(model_store, home)
    app = create_app(app_settings, ServerConfig(), engines=[InstantEngine(app_settings)])
    client = TestClient(app, base_url=LOCAL)
    client.__enter__()
    return client


def machine(model_store):
    class QueueMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.home = Path(tempfile.mkdtemp(prefix="huabu-stateful-"))
            self.client = _client(model_store, self.home)
            self.accepted: list[str] = []
            self.answers = 0

        @rule(batch=st.integers(1, 3), n_iter=st.integers(1, 3))
        def submit_native(self, batch: int, n_iter: int) -> None:
            response = self.client.post("/api/v1/jobs", json={"request": {
                "prompt": "x", "steps": 2, "width": 32, "height": 32, "batch_size": batch, "n_iter": n_iter}})
            assert response.status_code == 202, response.text
            self.accepted.append(response.json()["id"])

        @rule(batch=st.integers(1, 3), n_iter=st.integers(1, 3))
        def call_a1111(self, batch: int, n_iter: int) -> None:
            response = self.client.post("/sdapi/v1/txt2img", json={
                "prompt": "x", "steps": 2, "width": 32, "height": 32, "batch_size": batch, "n_iter": n_iter})
            assert response.status_code == 200, response.text
            assert len(response.json()["images"]) == batch * n_iter
            self.answers += 1

        @precondition(lambda self: self.accepted)
        @rule(index=st.integers(0, 1000))
        def cancel(self, index: int) -> None:
            job_id = self.accepted[index % len(self.accepted)]
            response = self.client.post(f"/api/v1/jobs/{job_id}/cancel")
            assert response.status_code == 200 and response.json()["state"] in STATES

        @rule()
        def restart(self) -> None:
            self.client.__exit__(None, None, None)  # stop: a running job is interrupted and queued again
            self.client = _client(model_store, self.home)

        @invariant()
        def nothing_is_lost(self) -> None:
            listed = {job["id"]: job["state"] for job in self.client.get("/api/v1/jobs?limit=500").json()}
            assert set(self.accepted) <= set(listed)
            assert set(listed.values()) <= set(STATES)

        def teardown(self) -> None:
            try:
                deadline = time.monotonic() + 30
                while True:
                    states = [self.client.get(f"/api/v1/jobs/{job_id}").json()["state"] for job_id in self.accepted]
                    if set(states) <= FINAL:
                        break
                    assert time.monotonic() < deadline, states
                    time.sleep(0.02)
            finally:
                self.client.__exit__(None, None, None)
                shutil.rmtree(self.home, ignore_errors=True)

    return QueueMachine


def test_every_job_reaches_a_final_state_and_a1111_answers_are_whole(model_store):
    QueueMachine = machine(model_store)
    QueueMachine.TestCase.settings = settings(max_examples=12, stateful_step_count=12, deadline=None,
                                              derandomize=True, database=None,
                                              suppress_health_check=list(HealthCheck))
    QueueMachine.TestCase().runTest()


@pytest.mark.slow
def test_every_job_reaches_a_final_state_and_a1111_answers_are_whole_long_run(model_store):
    QueueMachine = machine(model_store)
    QueueMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None,
                                              database=None, suppress_health_check=list(HealthCheck))
    QueueMachine.TestCase().runTest()
