"""A full disk: HUABU_HOME on a small tmpfs that the test fills. Jobs are refused with a one-line 507 once free
space is under the server's floor (storage.MIN_FREE_BYTES), before any write can fail; the server keeps answering,
both databases pass `PRAGMA integrity_check`, no partial output is left, and jobs run again once space is freed.
Needs root to mount the tmpfs (skipped otherwise)."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess

import pytest
from fastapi.testclient import TestClient
from server_support import LOCAL, TINY, api_settings, make_app


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder) -> None:
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


def test_a_full_disk_gets_one_line_errors_and_leaves_consistent_state(engine, model_store, small_disk):
    home = small_disk / "home"
    with TestClient(make_app(api_settings(model_store, home), engine), base_url=LOCAL) as client:
        ok = client.post("/sdapi/v1/txt2img", json={"prompt": "before", **TINY, "save_images": True})
        assert ok.status_code == 200
        _fill(small_disk)
        statuses = []
        for index in range(6):
            for path, body in (("/sdapi/v1/txt2img", {"prompt": f"full {index}", **TINY, "save_images": True}),
                               ("/api/v1/jobs", {"request": {"prompt": f"full {index}", **TINY}})):
                answer = client.post(path, json=body)
                assert answer.status_code == 507 and answer.json()["detail"].startswith("the disk holding "), path
                assert "\n" not in answer.json()["detail"]
                statuses.append(answer.status_code)
            assert client.get("/api/v1/jobs").status_code == 200 and client.get("/health").status_code == 200
        (small_disk / "filler").unlink()
        again = client.post("/sdapi/v1/txt2img", json={"prompt": "after", **TINY, "save_images": True})
        assert again.status_code == 200 and len(again.json()["images"]) == 1
        jobs = client.get("/api/v1/jobs?limit=500").json()
        assert all(job["state"] in ("done", "failed", "cancelled", "queued", "running") for job in jobs)
    for db in ("jobs.sqlite", "gallery.sqlite"):
        with sqlite3.connect(home / db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok", db
    outputs = [path for path in (home / "outputs").rglob("*") if path.is_file()]
    assert outputs and all(path.stat().st_size > 0 and not path.name.startswith(".") for path in outputs), outputs
