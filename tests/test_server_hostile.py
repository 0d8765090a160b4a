"""Hostile fuzzing of every field of txt2img, img2img and the jobs API with what JSON parsers and servers choke on:
unpaired surrogates, NUL, NaN/Infinity, deep nesting, huge arrays and numbers. Invariants after every case: no 5xx,
every answer is JSON, `GET /api/v1/jobs` still 200, and the server's peak memory stays within a budget. The
default run sends FAST_CASES cases; the `slow` variant SLOW_CASES (`pytest -m slow tests/test_server_hostile.py`).
Each run prints its figure ("N cases, 0 5xx") for the README's Reliability section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import free_port

from huabu.core.requests import GenerateRequest
from huabu.server.a1111 import Img2ImgRequest, Txt2ImgRequest

httpx = pytest.importorskip("httpx")

FAST_CASES = 150
SLOW_CASES = 3000
MEMORY_BUDGET_MB = 100  # growth of the server process's peak RSS (VmHWM) over a whole run, after a warm-up
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAKElEQVR4nO3NMQEAAAjDMMC/ZzDBvlRA01vZJvw"
       "HAAAAAAAAAAAAbx2jxAE/i2AjOgAAAABJRU5ErkJggg==")  # 32x32 red

# JSON text, not Python values: NaN, lone surrogates and 100000-deep nesting cannot be made with json.dumps.
_HOSTILE = st.one_of(
    st.sampled_from(['"a \\ud800"', '"\\udfff"', '"\\ud800\\u0041"', '"a\\u0000b"', '"\\u0000"', "NaN", "Infinity",
                     "-Infinity", "1e999", "-1e999", "1" + "0" * 4000, "9" * 5000, "-" + "9" * 300, "1e-999",
                     "1.7976931348623157e308", "null", "true", "[]", "{}", '""', '"' + "x" * 300_000 + '"',
                     '{"\\ud800": 1}', '{"a\\u0000": [NaN]}', '"' + "\\n" * 5000 + '"', '"data:"', f'"{PNG}"',
                     f'["{PNG}", "\\ud800"]', '{"controlnet": {"args": [{"image": "\\ud800", "weight": NaN}]}}',
                     '{"sd_model_checkpoint": "\\u0000"}']),
    st.builds(lambda depth, bracket: bracket[0] * depth + bracket[1] * depth,
              st.sampled_from([10, 900, 1100, 100_000]), st.sampled_from(["[]", "{}"])).map(
        lambda text: text if text.startswith("[") else text.replace("{{", '{"a":{').replace("{}", '{"a":1}')
        if len(text) < 1000 else text),
    st.builds(lambda count, item: "[" + ",".join([item] * count) + "]",
              st.sampled_from([1000, 150_000, 300_000]), st.sampled_from(["{}", "[]", "0", '"x"', "NaN"])),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=50).map(lambda text: json.dumps(text)),
)

_FIELDS = {
    "/sdapi/v1/txt2img": sorted(Txt2ImgRequest.model_fields),
    "/sdapi/v1/img2img": sorted(Img2ImgRequest.model_fields),
    "/api/v1/jobs": sorted(GenerateRequest.model_fields),
}
_BASE = {"prompt": '"x"', "steps": "2", "width": "32", "height": "32"}


@st.composite
def hostile_case(draw) -> tuple[str, bytes]:
    """(path, body): a small valid request with one to three fields replaced by hostile JSON, or a hostile body."""
    path = draw(st.sampled_from(sorted(_FIELDS) + ["/api/v1/jobs#top", "/sdapi/v1/options", "/sdapi/v1/png-info"]))
    if path == "/sdapi/v1/options" or draw(st.integers(0, 9)) == 0:
        return path.split("#")[0], draw(_HOSTILE).encode()
    if path == "/sdapi/v1/png-info":
        return path, b'{"image": ' + draw(_HOSTILE).encode() + b"}"
    fields = dict(_BASE, **({"init_images": f'["{PNG}"]'} if path == "/sdapi/v1/img2img" else {}))
    names = _FIELDS[path.split("#")[0]] + (["kind", "callback_url", "request"] if path.endswith("#top") else [])
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        fields[name] = draw(_HOSTILE)
    top = {k: fields.pop(k) for k in ("kind", "callback_url", "request") if k in fields and path.endswith("#top")}
    body = "{" + ",".join(f'"{key}": {value}' for key, value in fields.items()) + "}"
    if path.startswith("/api/v1/jobs"):
        body = (
            "{" + ",".join([f'"request": {top.pop("request", body)}'] + [f'"{k}": {v}' for k, v in top.items()]) + "}"
        )
    return path.split("#")[0], body.encode()


def _peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of process `pid`, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def hostile_server(model_store, tmp_path_factory):
    """`huabu serve` in its own process (its memory is measured apart from this one's), with tight limits."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc (Linux)")
    home = tmp_path_factory.mktemp("hostile-home")
    (home / "models").symlink_to(model_store["home"] / "models")
    port = free_port()
    env = {**os.environ, "HUABU_HOME": str(home), "HUABU_MODEL": "tiny-sd", "HUABU_DEVICE": "cpu",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    server = subprocess.Popen([sys.executable, "-m", "huabu.cli", "serve", "--port", str(port), "--max-size", "64",
                               "--max-steps", "2", "--max-batch", "2", "--max-n-iter", "2", "--max-body-mb", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "huabu serve did not start"
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for path, extra in (("txt2img", {}), ("img2img", {"init_images": [PNG]})):  # memory is measured warm
            warm = httpx.post(f"{base}/sdapi/v1/{path}", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                               "batch_size": 2, "n_iter": 2, **extra}, timeout=120)
            assert warm.status_code == 200, warm.text
        yield base, server.pid
    finally:
        server.kill()
        server.wait()


def _fuzz(server: tuple[str, int], cases: int) -> dict[str, int]:
    base, pid = server
    counts = {"cases": 0, "5xx": 0, "4xx": 0, "2xx": 0}
    start = _peak_rss_mb(pid)
    with httpx.Client(base_url=base, timeout=120) as client:
        @given(case=hostile_case())
        @settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=cases == FAST_CASES)
        def survives(case) -> None:
            path, body = case
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
            counts["cases"] += 1
            counts[f"{response.status_code // 100}xx"] = counts.get(f"{response.status_code // 100}xx", 0) + 1
            assert response.status_code < 500, (path, body[:300], response.status_code, response.text[:300])
            assert response.headers["content-type"].startswith("application/json"), (path, body[:300])
            if response.status_code >= 400:
                detail = response.json()["detail"]
                assert isinstance(detail, str) and "\n" not in detail, (path, body[:300], detail)
            else:
                response.json()
            listing = client.get("/api/v1/jobs", params={"limit": 500})
            assert listing.status_code == 200 and isinstance(listing.json(), list)
            grown = _peak_rss_mb(pid) - start
            assert grown < MEMORY_BUDGET_MB, (path, body[:300], grown)

        survives()
    counts["peak_growth_mb"] = round(_peak_rss_mb(pid) - start)
    print(f"hostile fuzzing: {counts['cases']} cases, {counts['5xx']} 5xx ({counts})")
    return counts


def test_hostile_values_in_every_field_never_get_a_5xx(hostile_server):
    counts = _fuzz(hostile_server, FAST_CASES)
    assert counts["cases"] == FAST_CASES and counts["5xx"] == 0


@pytest.mark.slow
def test_hostile_values_in_every_field_never_get_a_5xx_long_run(hostile_server):
    counts = _fuzz(hostile_server, SLOW_CASES)
    assert counts["cases"] == SLOW_CASES and counts["5xx"] == 0
