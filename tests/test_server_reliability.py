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
    from huabu.server.a1111_options import MAX_UNKNOWN_KEYS

    known = len(client.get("/sdapi/v1/options").json())
    assert client.post("/sdapi/v1/options", json={f"o{i}": i for i in range(MAX_UNKNOWN_KEYS)}).status_code == 200
    detail = _one_line_4xx(client.post("/sdapi/v1/options", json={f"p{i}": i for i in range(200)}), 400)
    assert detail.startswith(f"too many option keys A1111 does not have ({MAX_UNKNOWN_KEYS + 200};")
    assert client.post("/sdapi/v1/options", json={"o1": "again"}).status_code == 200  # kept keys still change
    assert len(client.get("/sdapi/v1/options").json()) == known + MAX_UNKNOWN_KEYS


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


def test_finished_jobs_drop_their_input_images_and_are_deleted_after_the_retention(engine, model_store, tmp_path):
    import sqlite3
    import time

    from PIL import Image
    from server_support import png_b64, wait_for

    home = tmp_path / "home"
    image = png_b64(Image.new("RGB", (32, 32), "red"))
    app = make_app(api_settings(model_store, home), engine, ServerConfig(keep_jobs_days=1))
    with TestClient(app, base_url=LOCAL) as client:
        a1111 = client.post("/sdapi/v1/img2img", json={"prompt": "x", **TINY, "init_images": [image],
                                                       "save_images": False})
        assert a1111.status_code == 200
        native = client.post("/api/v1/jobs", json={"request": {"prompt": "x", **TINY, "mode": "img2img",
                                                               "init_image": "data:image/png;base64," + image}})
        assert wait_for(client, native.json()["id"])["state"] == "done"
        with sqlite3.connect(home / "jobs.sqlite") as con:
            rows = con.execute("SELECT request || COALESCE(result, '') FROM jobs").fetchall()
        assert len(rows) == 2 and not [row for row in rows if image[:40] in row[0]]  # only sizes remain

        store = client.app.state.huabu.queue.store
        old = store.add(Job.new("image", {"prompt": "old"}))
        store.finish(old.id, "done")
        with sqlite3.connect(home / "jobs.sqlite") as con:
            con.execute("UPDATE jobs SET finished = ? WHERE id = ?", (time.time() - 2 * 86400, old.id))
        client.app.state.huabu.queue.prune(force=True)
        gone = client.get(f"/api/v1/jobs/{old.id}")
        assert gone.status_code == 404 and gone.json()["detail"].endswith("(finished jobs are kept 1 days)")
        assert len(client.get("/api/v1/jobs").json()) == 2


def test_the_outputs_quota_and_a_full_disk_refuse_jobs_with_one_line(engine, model_store, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    home = tmp_path / "home"
    settings = api_settings(model_store, home)
    (settings.outputs_dir / "old").mkdir(parents=True)
    (settings.outputs_dir / "old" / "big.png").write_bytes(b"\0" * 2_000_000)
    app = make_app(settings, engine, ServerConfig(max_output_gb=0.001))
    with TestClient(app, base_url=LOCAL) as client:
        refused = client.post("/api/v1/jobs", json={"request": {"prompt": "x", **TINY}})
        assert refused.status_code == 507 and refused.json()["detail"] == (
            "the outputs folder holds 0.00186 GiB; this server's limit is 0.001 GiB (--max-output-gb): delete outputs "
            "or raise the limit")
        # A1111 calls that do not save still run; those that do are refused.
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", **TINY}).status_code == 200
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", **TINY, "save_images": True}).status_code == 507

        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
        full = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **TINY})
        assert full.status_code == 507 and full.json()["detail"].startswith("the disk holding ")
        assert "\n" not in full.json()["detail"] and client.get("/api/v1/jobs").status_code == 200


def test_host_origin_method_and_content_type_matrix_of_the_api(client):
    """Foreign Host: always 421. Loopback Host: a state-changing call from a foreign Origin (or Referer) is 403,
    whatever its content type; same-origin, Origin-less (scripts) and safe methods go through."""
    bodies = {"application/json": b'{"a": 1}', "text/plain": b'{"a": 1}', "application/x-www-form-urlencoded": b"a=1",
              "multipart/form-data; boundary=x": b"--x--"}
    foreign = ("http://evil.example:7861", "null", "http://127.0.0.1:9999", "http://localhost.evil.example")
    for host in ("evil.example:7861", "evil.example", "127.0.0.1.nip.io:7861", "[::2]:7861", "localhost:7861",
                 "127.0.0.1:7861", "[::1]:7861"):
        loopback = host.rsplit(":", 1)[0].strip("[]") in ("localhost", "127.0.0.1", "::1")
        for origin in (*foreign, f"http://{host}", None):
            for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS"):
                for kind, body in bodies.items():
                    headers = {"Host": host, "Content-Type": kind, **({"Origin": origin} if origin else {})}
                    answer = client.request(method, "/sdapi/v1/options", headers=headers,
                                            content=body if method != "GET" else None)
                    if not loopback:
                        expected = {421}
                    elif method not in ("GET", "OPTIONS") and origin in foreign:
                        expected = {403}
                    else:
                        expected = {200, 400, 405, 415, 422}  # the route's own answer
                    assert answer.status_code in expected, (host, origin, method, kind, answer.status_code)
                    assert answer.headers["content-type"] == "application/json"
                    assert "access-control-allow-origin" not in answer.headers


def test_a_job_run_again_replaces_what_its_unfinished_run_wrote(engine):
    """A job runs again only after a run that never finished (a killed server, a redelivered Celery message): the
    second run replaces the first one's outputs instead of adding a second set."""
    from huabu.server.runner import run_job

    job = Job.new("image", {"prompt": "again", **TINY, "seed": 5, "batch_size": 2})
    first = run_job(engine, job)
    second = run_job(engine, job)
    folder = engine.settings.outputs_dir / "jobs" / job.id
    assert sorted(p.name for p in folder.iterdir()) == sorted(name.rsplit("/", 1)[1] for name in second.files)
    assert first.files == second.files and len(second.files) == 2
    assert len([item for item in engine.gallery.search("again") if item.path.startswith(str(folder))]) == 2
    with pytest.raises(ValueError, match="not a job id"):
        run_job(engine, Job("../../x", "image", {"prompt": "x", **TINY}))
