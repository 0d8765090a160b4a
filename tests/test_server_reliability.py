"""Issue 16: what a hostile or unlucky client found, one test each: unpaired surrogates, NaN, JSON memory
amplification and echoed unknown fields, a stored bad row, /options growth, callback URLs in logs, jobs finishing
before their A1111 route waits, retention and the outputs quota."""

from __future__ import annotations

import json
import logging
import resource

import pytest
from fastapi.testclient import TestClient
from server_support import LOCAL, TINY, api_settings, make_app

from huabu.server import Limits, ServerConfig
from huabu.server.jobs import Job, JobStore

SMALL = Limits(max_width=64, max_height=64, max_steps=4, max_batch_size=2, max_n_iter=2,
               max_body_bytes=4 * 1024 * 1024, max_json_items=20_000)


@pytest.fixture
def client(engine, model_store, tmp_path):
    app = make_app(api_settings(model_store, tmp_path / "home"), engine, ServerConfig(limits=SMALL))
    with TestClient(app, base_url=LOCAL) as client:
        yield client


def _one_line_4xx(response, status: int | None = None) -> str:
    assert 400 <= response.status_code < 500 and (status is None or response.status_code == status), \
        (response.status_code, response.text[:300])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


def test_unpaired_surrogates_are_refused_and_a_stored_one_never_breaks_a_listing(client, tmp_path):
    body = '{"prompt": "a \\ud800", "steps": 2, "width": 32, "height": 32}'
    headers = {"Content-Type": "application/json"}
    for path, content in (("/sdapi/v1/txt2img", body), ("/sdapi/v1/img2img", body),
                          ("/api/v1/jobs", '{"request": ' + body + '}'),
                          ("/sdapi/v1/options", '{"\\udfff": 1}')):
        detail = _one_line_4xx(client.post(path, content=content, headers=headers), 400)
        assert "unpaired UTF-16 surrogate" in detail, detail
    assert client.get("/api/v1/jobs").json() == []  # nothing was stored
    paired = client.post("/api/v1/jobs", content='{"request": {"prompt": "a \\ud83d\\ude00", "steps": 2}}',
                         headers=headers)
    assert paired.status_code == 202 and paired.json()["request"]["prompt"] == "a 😀"

    # A row an older version stored (surrogate and NaN inside) is listed, \\u-escaped, never a 500.
    store = client.app.state.huabu.queue.store
    old = store.add(Job.new("image", {"prompt": "a \ud800", "cfg_scale": float("nan")}, state="failed"))
    for path in ("/api/v1/jobs", f"/api/v1/jobs/{old.id}"):
        response = client.get(path)
        assert response.status_code == 200 and "\\ud800" in response.text, path
    assert client.get(f"/api/v1/jobs/{old.id}").json()["request"]["cfg_scale"] is None


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_refused_with_one_line(client, literal):
    for path, content in (("/sdapi/v1/txt2img", f'{{"prompt": "x", "subseed_strength": {literal}}}'),
                          ("/api/v1/jobs", f'{{"request": {{"prompt": "x", "cfg_scale": {literal}}}}}')):
        detail = _one_line_4xx(client.post(path, content=content, headers={"Content-Type": "application/json"}), 400)
        assert "finite number" in detail or "too large" in detail


def test_json_amplification_is_capped_and_unknown_fields_are_never_echoed(client):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bomb = b'{"prompt": "x", "junk": [' + b"{}," * 1_000_000 + b'{}]}'  # 3 MB: ~150 MB as Python objects
    detail = _one_line_4xx(client.post("/sdapi/v1/txt2img", content=bomb,
                                       headers={"Content-Type": "application/json"}), 413)
    assert detail == "request body holds up to 2000004 JSON values; the limit is 20000"
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 60, grown_mb  # the body itself, not 50x it

    many = {"prompt": "x", **TINY, **{f"k{i}": i for i in range(65)}}
    assert _one_line_4xx(client.post("/sdapi/v1/txt2img", json=many), 400) == \
        "request has 65 fields huabu does not know; the limit is 64"
    secret = "ECHO-ME-" * 100
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **TINY, "mystery": [secret] * 50})
    assert answer.status_code == 200 and secret not in answer.text
    assert "mystery" not in answer.json()["parameters"]
    assert "mystery: ignored (not an A1111 field huabu knows)" in json.loads(answer.json()["info"])["warnings"]


def test_options_are_capped(client):
    assert client.post("/sdapi/v1/options", json={f"o{i}": i for i in range(900)}).status_code == 200
    detail = _one_line_4xx(client.post("/sdapi/v1/options", json={f"p{i}": i for i in range(200)}), 400)
    assert detail == "options would hold 1100 keys; the limit is 1000"
    assert client.post("/sdapi/v1/options", json={"o1": "again"}).status_code == 200  # known keys still change
    assert len(client.get("/sdapi/v1/options").json()) < 1000


def test_callback_urls_are_logged_without_path_or_query(caplog):
    from huabu.server.queue import send_callback

    job = Job.new("image", {"prompt": "x"}, callback_url="http://127.0.0.1:9/hook?token=SECRET-TOKEN")
    with caplog.at_level(logging.INFO):
        send_callback(job)
    assert "127.0.0.1:9" in caplog.text and "SECRET-TOKEN" not in caplog.text and "/hook" not in caplog.text


def test_an_unexpected_error_is_a_one_line_json_500(engine, model_store, tmp_path, monkeypatch):
    app = make_app(api_settings(model_store, tmp_path / "home"), engine)
    monkeypatch.setattr(JobStore, "list", lambda *args, **kwargs: 1 / 0)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as client:
        response = client.get("/api/v1/jobs")
    assert response.status_code == 500 and response.json() == {
        "error": "InternalError", "detail": "internal error: ZeroDivisionError (see the server log)"}


def test_an_a1111_job_that_finishes_before_its_route_waits_still_answers_its_images(engine, model_store, tmp_path,
                                                                                    monkeypatch):
    """A delayed event loop: the job is over before the route gets back from submitting it."""
    import time

    from huabu.server.queue import JobQueue

    real_submit = JobQueue.submit

    def submit_and_finish(self, job):
        real_submit(self, job)
        deadline = time.monotonic() + 60
        while self.store.get(job.id).state not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return job

    monkeypatch.setattr(JobQueue, "submit", submit_and_finish)
    app = make_app(api_settings(model_store, tmp_path / "home"), engine)
    with TestClient(app, base_url=LOCAL) as client:
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **TINY, "batch_size": 2})
        assert answer.status_code == 200 and len(answer.json()["images"]) == 2
        assert client.app.state.huabu.queue._waiters == {}  # nothing left registered
