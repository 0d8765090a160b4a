"""Hostile fuzzing of every field of txt2img, img2img and the jobs API with what JSON parsers and servers choke on:
unpaired surrogates, NUL, NaN/Infinity, deep nesting, huge arrays and numbers. Invariants after every case: no 5xx,
every answer is JSON, `GET /api/v1/jobs` still 200, and the server's peak memory stays within a budget. The
default run sends FAST_CASES cases; the `slow` variant SLOW_CASES (`pytest -m slow tests/test_server_hostile.py`).
Each run prints its figure ("N cases, 0 5xx") for the README's Reliability section."""

from __future__ import annotations

import json
import resource

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import api_settings, live_server, make_app

from huabu.core.requests import GenerateRequest
from huabu.server import Limits, ServerConfig
from huabu.server.a1111 import Img2ImgRequest, Txt2ImgRequest

httpx = pytest.importorskip("httpx")

FAST_CASES = 150
SLOW_CASES = 3000
MEMORY_BUDGET_MB = 200  # growth of the server process's peak RSS over a whole run
LIMITS = Limits(max_width=64, max_height=64, max_steps=2, max_batch_size=2, max_n_iter=2,
                max_body_bytes=1024 * 1024, max_image_bytes=256 * 1024, max_image_pixels=64 * 64)
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
        body = "{" + ",".join([f'"request": {top.pop("request", body)}'] + [f'"{k}": {v}' for k, v in top.items()]) + "}"
    return path.split("#")[0], body.encode()


@pytest.fixture(scope="module")
def hostile_server(engine, model_store, tmp_path_factory):
    home = tmp_path_factory.mktemp("hostile-home")
    with live_server(make_app(api_settings(model_store, home), engine, ServerConfig(limits=LIMITS))) as base:
        for path, extra in (("txt2img", {}), ("img2img", {"init_images": [PNG]})):  # memory is measured warm
            warm = httpx.post(f"{base}/sdapi/v1/{path}", json={"prompt": "x", "steps": 2, "width": 32, "height": 32,
                                                               "batch_size": 2, "n_iter": 2, **extra}, timeout=120)
            assert warm.status_code == 200, warm.text
        yield base


def _fuzz(base: str, cases: int) -> dict[str, int]:
    counts = {"cases": 0, "5xx": 0, "4xx": 0, "2xx": 0}
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024
            assert grown < MEMORY_BUDGET_MB, (path, body[:300], grown)

        survives()
    counts["peak_growth_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024)
    print(f"hostile fuzzing: {counts['cases']} cases, {counts['5xx']} 5xx ({counts})")
    return counts


def test_hostile_values_in_every_field_never_get_a_5xx(hostile_server):
    counts = _fuzz(hostile_server, FAST_CASES)
    assert counts["cases"] == FAST_CASES and counts["5xx"] == 0


@pytest.mark.slow
def test_hostile_values_in_every_field_never_get_a_5xx_long_run(hostile_server):
    counts = _fuzz(hostile_server, SLOW_CASES)
    assert counts["cases"] == SLOW_CASES and counts["5xx"] == 0
