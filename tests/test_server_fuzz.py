"""schemathesis against the server's own OpenAPI spec, on a live loopback server with tight limits so that valid
generated requests stay tiny: no generated request gets a 5xx. The default run takes a few examples per operation;
the `slow` variant many more (`pytest -m slow tests/test_server_fuzz.py`). Edge strings that random generation is
unlikely to reach are sent to every image field explicitly.

schemathesis' pytest integration (`from_fixture`) does not run under pytest 9, so each operation's hypothesis
strategy is driven here directly."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from server_support import api_settings, live_server, make_app

from huabu.server import Limits, ServerConfig

httpx = pytest.importorskip("httpx")

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) is not installed")

FUZZ_LIMITS = Limits(max_width=64, max_height=64, max_steps=3, max_batch_size=2, max_n_iter=2,
                     max_body_bytes=1024 * 1024, max_image_bytes=256 * 1024, max_image_pixels=64 * 64)


@pytest.fixture(scope="module")
def fuzz_server(engine, model_store, tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")
    with live_server(make_app(api_settings(model_store, home), engine, ServerConfig(limits=FUZZ_LIMITS))) as base:
        yield base


def _fuzz(base: str, examples: int, derandomize: bool) -> int:
    """Run `examples` generated cases against every operation; returns how many operations were exercised."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=derandomize, database=None)
        def no_server_error(case) -> None:
            response = case.call(base_url=base, timeout=120)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])

        no_server_error()
    return len(operations)


def test_no_generated_request_gets_a_server_error(fuzz_server):
    assert _fuzz(fuzz_server, examples=8, derandomize=True) > 35


EDGE_IMAGES = ("", "data:", "data:x", ",", "data:image/png;base64,", "data:image/png;base64,!!!", "!!!", "data:,",
               "data:image/png;base64,AAAA")


def _image_fields(value: str) -> list[tuple[str, dict]]:
    """Every place a request carries an image, holding `value`."""
    tiny = {"prompt": "x", "steps": 1, "width": 32, "height": 32}
    unit = {"alwayson_scripts": {"controlnet": {"args": [{"module": "none", "image": value}]}}}
    ok = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5E"
          "rkJggg==")
    return [("/sdapi/v1/png-info", {"image": value}),
            ("/sdapi/v1/img2img", {**tiny, "init_images": [value]}),
            ("/sdapi/v1/img2img", {**tiny, "init_images": [ok], "mask": value}),
            ("/sdapi/v1/txt2img", {**tiny, **unit}),
            ("/api/v1/jobs", {"request": {**tiny, "mode": "img2img", "init_image": value}}),
            ("/api/v1/jobs", {"request": {**tiny, "mode": "inpaint", "init_image": ok, "mask": value}}),
            ("/api/v1/jobs", {"request": {**tiny, "controlnets": [{"module": "none", "image": value}]}})]


def test_edge_case_image_strings_get_a_one_line_4xx_in_every_image_field(fuzz_server):
    with httpx.Client(base_url=fuzz_server, timeout=60) as client:
        for value in EDGE_IMAGES:
            for path, body in _image_fields(value):
                response = client.post(path, json=body)
                assert 400 <= response.status_code < 500, (path, value, response.status_code, response.text[:300])
                detail = response.json()["detail"]
                assert isinstance(detail, str) and detail and "\n" not in detail, (path, value, detail)


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error_long_run(fuzz_server):
    assert _fuzz(fuzz_server, examples=100, derandomize=False) > 35
