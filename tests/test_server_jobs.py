"""The native jobs API: submit, state, list, server-sent progress events, cancel, results from the output folder,
completion callbacks to allowed hosts only, and the SQLite store's recovery rules."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_support import LOCAL, TINY, api_settings, held_app, make_app, wait_for, wait_until_held

from huabu.core.pnginfo import read_parameters
from huabu.server import ServerConfig
from huabu.server.jobs import Job, JobStore

HELD = {"prompt": "held", "steps": 20, "width": 32, "height": 32, "sampler": "Euler"}  # for held_app


@pytest.fixture
def client(engine, model_store, tmp_path):
    config = ServerConfig(callback_allow=("127.0.0.1",))
    app = make_app(api_settings(model_store, tmp_path / "home"), engine, config)
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def test_a_job_is_accepted_persisted_run_and_its_files_served(client, tmp_path):
    response = client.post("/api/v1/jobs", json={"kind": "image", "request": {"prompt": "a kite", "seed": 21,
                                                                              "batch_size": 2, **TINY}})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/api/v1/jobs/{job['id']}"
    stored = JobStore(tmp_path / "home" / "jobs.sqlite").get(job["id"])  # in SQLite before the 202
    assert stored is not None and stored.request["prompt"] == "a kite" and stored.request["model"] == "tiny-sd"

    done = wait_for(client, job["id"])
    assert done["state"] == "done" and done["result"]["seeds"] == [21, 22] and done["progress"]["fraction"] == 1.0
    assert done["error"] is None and done["worker"] == "local-0" and done["attempts"] == 1
    assert 0 < done["result"]["seconds"] <= done["finished"] - done["started"]  # the engine's part of the run
    for url, infotext in zip(done["result"]["images"], done["result"]["infotexts"]):
        served = client.get(url)
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        path = tmp_path / "home" / "outputs" / url.split("/api/v1/files/", 1)[1]  # outputs/jobs/<id>/NNNNN-seed.png
        assert served.content == path.read_bytes() and read_parameters(path) == infotext
    assert [j["id"] for j in client.get("/api/v1/jobs", params={"state": "done"}).json()] == [job["id"]]
    assert client.get("/api/v1/jobs", params={"state": "queued"}).json() == []
    assert client.get("/api/v1/jobs/nope").status_code == 404


def test_bad_job_requests_are_refused_with_one_line(client):
    response = client.post("/api/v1/jobs", json={"request": {"prompt": "x", "steps": 0}})
    assert response.status_code == 400 and response.json()["detail"] == "steps must be between 1 and 150 (got 0)"
    assert client.post("/api/v1/jobs", json={"kind": "audio", "request": {}}).status_code == 422
    unknown = client.post("/api/v1/jobs", json={"request": {"prompt": "x", "colour": "red"}})
    assert unknown.status_code == 400 and "colour" in unknown.json()["detail"]
    video = client.post("/api/v1/jobs", json={"kind": "video", "request": {"prompt": "x", "frames": 1}})
    assert video.status_code == 400 and "frames" in video.json()["detail"]


def test_events_stream_progress_then_the_final_state(client):
    job = client.post("/api/v1/jobs", json={"request": {"prompt": "sse", "steps": 6, "width": 32, "height": 32,
                                                        "sampler": "Euler"}}).json()
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    events = [block.split("\n") for block in text.strip().split("\n\n") if block.startswith("event:")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[-1] == "done" and set(names[:-1]) == {"progress"}
    final = json.loads(events[-1][1].removeprefix("data: "))
    assert final["id"] == job["id"] and final["result"]["count"] == 1
    steps = [json.loads(lines[1].removeprefix("data: "))["progress"].get("step", 0) for lines in events[:-1]]
    assert steps == sorted(steps)


def test_cancel_a_queued_and_a_running_job(engine, model_store, tmp_path):
    with TestClient(held_app(api_settings(model_store, tmp_path / "home"), engine), base_url=LOCAL) as client:
        running = client.post("/api/v1/jobs", json={"request": HELD}).json()
        queued = client.post("/api/v1/jobs", json={"request": {"prompt": "never", **TINY}}).json()
        cancelled = client.post(f"/api/v1/jobs/{queued['id']}/cancel").json()
        assert cancelled["state"] == "cancelled"
        wait_until_held(client, running["id"])
        client.post(f"/api/v1/jobs/{running['id']}/cancel")
        stopped = wait_for(client, running["id"])
        assert stopped["state"] == "cancelled" and stopped["progress"]["step"] < HELD["steps"]
        assert client.get(f"/api/v1/jobs/{queued['id']}").json()["result"] is None


class _Recorder(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.hits.append((self.path, json.loads(body)))
        if self.server.redirect_to:
            self.send_response(307)
            self.send_header("Location", self.server.redirect_to)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _recorder(redirect_to: str | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.hits, server.redirect_to = [], redirect_to
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _wait_hits(server, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(server.hits) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_completion_callback_goes_to_allowed_hosts_only_and_never_follows_redirects(client):
    target = _recorder()
    elsewhere = _recorder()
    redirector = _recorder(redirect_to=f"http://localhost:{elsewhere.server_port}/stolen")
    try:
        url = f"http://127.0.0.1:{target.server_port}/done"
        job = client.post("/api/v1/jobs", json={"request": {"prompt": "cb", **TINY}, "callback_url": url}).json()
        _wait_hits(target, 1)
        assert target.hits[0][0] == "/done"
        assert target.hits[0][1]["id"] == job["id"] and target.hits[0][1]["state"] == "done"

        refused = client.post("/api/v1/jobs", json={"request": {"prompt": "cb", **TINY},
                                                    "callback_url": f"http://localhost:{target.server_port}/x"})
        assert refused.status_code == 403 and "not allowed" in refused.json()["detail"]
        assert client.post("/api/v1/jobs", json={"request": {"prompt": "cb", **TINY},
                                                 "callback_url": "file:///etc/passwd"}).status_code == 400

        url = f"http://127.0.0.1:{redirector.server_port}/hop"
        client.post("/api/v1/jobs", json={"request": {"prompt": "cb", **TINY}, "callback_url": url})
        _wait_hits(redirector, 1)
        time.sleep(0.3)
        assert len(redirector.hits) == 1 and elsewhere.hits == []
    finally:
        for server in (target, elsewhere, redirector):
            server.shutdown()


def test_recovery_requeues_native_jobs_and_fails_the_rest_with_a_line(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    queued = store.add(Job.new("image", {"prompt": "a"}))
    running = store.add(Job.new("image", {"prompt": "b"}))
    tired = store.add(Job.new("image", {"prompt": "c"}))
    sync = store.add(Job.new("image", {"prompt": "d"}, origin="a1111"))
    done = store.add(Job.new("image", {"prompt": "e"}))
    assert store.claim_next("w").id == queued.id  # oldest first
    store.finish(queued.id, "done", {"files": []})
    store.add(Job.new("image", {"prompt": "f"}))
    for job_id in (running.id, tired.id, sync.id, done.id):
        with store._connect() as con:
            con.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (job_id,))
    store.finish(done.id, "done", {})
    with store._connect() as con:
        con.execute("UPDATE jobs SET attempts = 2 WHERE id = ?", (tired.id,))
    requeued, failed = store.recover(max_attempts=2)
    assert requeued == [running.id] and set(failed) == {tired.id, sync.id}
    assert store.get(running.id).state == "queued"
    assert "2 times" in store.get(tired.id).error and "send the request again" in store.get(sync.id).error
    assert store.get(done.id).state == "done"
    assert not store.cancel_queued(done.id) and store.cancel_queued(running.id)


def test_job_listing_elides_embedded_images(client):
    from server_support import png_b64

    image = "data:image/png;base64," + png_b64(Image.new("RGB", (32, 32)))
    job = client.post("/api/v1/jobs", json={"request": {"mode": "img2img", "prompt": "x", "init_image": image,
                                                        "denoising_strength": 0.5, **TINY}}).json()
    assert job["request"]["init_image"].startswith("data:image/png;base64,...")
    assert wait_for(client, job["id"])["state"] == "done"


def test_video_jobs_run_through_the_engine_and_serve_their_file(engine, model_store, tmp_path):
    from video_support import tiny_motion_adapter

    tiny_motion_adapter(seed=0).save_pretrained(tmp_path / "motion" / "tiny-mm")
    settings = api_settings(model_store, tmp_path / "home", motion_dir=tmp_path / "motion")
    with TestClient(make_app(settings, engine), base_url=LOCAL) as client:
        request = {"prompt": "a red apple", "frames": 4, "steps": 2, "width": 32, "height": 32, "seed": 9,
                   "format": "gif"}
        job = client.post("/api/v1/jobs", json={"kind": "video", "request": request}).json()
        done = wait_for(client, job["id"], timeout=120)
        assert done["state"] == "done", done["error"]
        assert done["result"]["seeds"] == [9] and "Frames: 4" in done["result"]["infotexts"][0]
        assert done["result"]["images"][0].startswith(f"/api/v1/files/jobs/{job['id']}/")  # a rerun replaces it
        served = client.get(done["result"]["images"][0])
        assert served.status_code == 200 and served.headers["content-type"] == "image/gif"
        with Image.open(io.BytesIO(served.content)) as gif:
            assert gif.n_frames == 4 and gif.size == (32, 32)
        refused = client.post("/api/v1/jobs", json={"kind": "video", "request": {
            **request, "motion_module": str(tmp_path / "motion" / "tiny-mm")}})
        assert refused.status_code == 403


def test_a_graceful_stop_puts_the_running_job_back_in_the_queue(engine, model_store, tmp_path):
    settings = api_settings(model_store, tmp_path / "home")
    with TestClient(held_app(settings, engine), base_url=LOCAL) as client:
        job = client.post("/api/v1/jobs", json={"request": HELD}).json()
        wait_until_held(client, job["id"])
    stored = JobStore(tmp_path / "home" / "jobs.sqlite").get(job["id"])
    assert (stored.state, stored.attempts, stored.result) == ("queued", 1, None)
    with TestClient(make_app(settings, engine), base_url=LOCAL) as client:  # the next start runs it anew, to the end
        again = wait_for(client, job["id"])
        assert (again["state"], again["attempts"], again["result"]["count"]) == ("done", 2, 1)


def test_job_answers_name_the_model_not_its_path_on_the_server(client, model_store):
    title = next(m["title"] for m in client.get("/sdapi/v1/sd-models").json() if m["model_name"] == "tiny-sd")
    job = client.post("/api/v1/jobs", json={"request": {"prompt": "x", "model": title, **TINY}}).json()
    done = wait_for(client, job["id"])
    assert done["state"] == "done" and done["request"]["model"] == "tiny-sd"
    assert all(url.startswith("/api/v1/files/") for url in done["result"]["images"])
    home = str(model_store["home"])
    for answer in (job, done, client.get("/api/v1/jobs").json()):
        assert home not in json.dumps(answer)
    resubmitted = client.post("/api/v1/jobs", json={"request": done["request"]})  # a listing's request runs again
    assert resubmitted.status_code == 202
    assert wait_for(client, resubmitted.json()["id"])["state"] == "done"


def test_a_job_that_finished_while_the_server_stops_stays_done(engine, model_store, tmp_path):
    from huabu.engine.generate import Engine
    from huabu.server.queue import EngineThread, LocalQueue

    settings = api_settings(model_store, tmp_path / "home")
    store = JobStore(tmp_path / "jobs.sqlite")
    worker = EngineThread(Engine(settings, models=engine.models))
    queue = LocalQueue(store, ServerConfig(), [worker])
    job = store.add(Job.new("image", {"prompt": "x", "seed": 3, "model": "tiny-sd", **TINY}))
    queue.stop()  # the stop arrives while the job's last step runs: nothing is left to interrupt
    queue._run(worker, store.claim_next("local-0"))
    finished = store.get(job.id)
    assert finished.state == "done", finished.error
    assert finished.result["seeds"] == [3] and not finished.result["interrupted"]


def test_a_cancel_between_the_claim_and_the_run_is_not_lost(engine, model_store, tmp_path):
    from huabu.engine.generate import Engine
    from huabu.server.queue import EngineThread, LocalQueue

    settings = api_settings(model_store, tmp_path / "home")
    store = JobStore(tmp_path / "jobs.sqlite")
    worker = EngineThread(Engine(settings, models=engine.models))
    queue = LocalQueue(store, ServerConfig(), [worker])
    job = store.add(Job.new("image", {"prompt": "x", "seed": 3, "model": "tiny-sd", **{**TINY, "steps": 20}}))
    claimed = store.claim_next("local-0")  # the worker has the job; its run has not started
    assert queue.cancel(job.id).state == "running"
    queue._run(worker, claimed)
    cancelled = store.get(job.id)
    assert cancelled.state == "cancelled" and cancelled.progress["step"] < 20


def test_a_route_waiting_for_the_end_sleeps_through_the_start_and_progress(tmp_path):
    import asyncio

    from huabu.server.queue import LocalQueue
    from huabu.server.runner import Outcome

    release = threading.Event()

    class Reporting:  # a runner that reports two steps, then ends when the test says so
        def run(self, job, live, report):
            report({"fraction": 0.5})
            report({"fraction": 1.0})
            release.wait(10)
            return Outcome([], [1], ["x"], job.request, {})

        def close(self):
            pass

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store = JobStore(tmp_path / "jobs.sqlite")
        queue = LocalQueue(store, ServerConfig(), [Reporting()])
        queue.start()
        try:
            job = Job.new("image", {"prompt": "x"}, origin="a1111")
            end = queue.watch(job.id, loop, ends_only=True)
            changes = queue.watch(job.id, loop)
            queue.submit(job)
            await asyncio.wait_for(changes.wait(), 10)  # an event stream is woken by the start and each step
            while store.get(job.id).progress.get("fraction") != 1.0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # wake-ups sent from the worker thread have arrived
            assert not end.is_set()
            release.set()
            await asyncio.wait_for(end.wait(), 10)
            assert store.get(job.id).state == "done"
        finally:
            release.set()
            queue.stop()

    asyncio.run(scenario())
