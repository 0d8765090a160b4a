"""Security rules of the HTTP API, one test each (huabu/server/security.py names the attacks they answer): loopback
by default, --listen needs credentials, every route but /health behind them, CSRF and DNS-rebinding checks, limits,
no path traversal, media types only, no secrets in any answer, nothing unpickled and safetensors only."""

from __future__ import annotations

import base64
import io
import os
import pickle

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_support import LOCAL, TINY, api_settings, make_app, png_b64

from huabu.cli.main import build_parser, main
from huabu.server import Limits, ServerConfig
from huabu.server.security import NotFound, safe_output_file

KEY = "sekret-KEY-7f3a9"
USER, PASSWORD = "ada", "pw-Zq81x"
BEARER = {"Authorization": f"Bearer {KEY}"}
SMALL = Limits(max_width=64, max_height=64, max_steps=10, max_batch_size=2, max_n_iter=2, max_body_bytes=300_000,
               max_image_bytes=150_000, max_image_pixels=128 * 128)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def secured(engine, model_store, home):
    config = ServerConfig(api_key=KEY, api_auth=f"{USER}:{PASSWORD}", limits=SMALL)
    with TestClient(make_app(api_settings(model_store, home), engine, config), base_url=LOCAL) as client:
        yield client


@pytest.fixture
def open_client(engine, model_store, home):
    with TestClient(make_app(api_settings(model_store, home), engine, ServerConfig(limits=SMALL)),
                    base_url=LOCAL) as client:
        yield client


def test_binds_loopback_by_default_and_listen_refuses_to_start_without_credentials(capsys):
    assert ServerConfig().host == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    assert main(["serve", "--listen"]) == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in capsys.readouterr().err
    assert main(["serve", "--host", "192.0.2.7"]) == 2
    assert main(["serve", "--listen", "--api-auth", "nopassword"]) == 2
    assert ServerConfig(host="0.0.0.0", api_key="k").requires_auth
    assert ServerConfig(host="0.0.0.0", api_auth="u:p").credentials() == [("u", "p")]


def _routes(app) -> list[tuple[str, str]]:
    """Every (method, path) the app serves: the OpenAPI operations plus the documentation pages."""
    found = [("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json")]
    for path, operations in app.openapi()["paths"].items():
        path = path.replace("{job_id}", "x").replace("{path}", "a.png")
        found += [(method.upper(), path) for method in operations]
    return found


def test_every_route_but_health_needs_the_key_or_basic_auth_even_on_loopback(secured, monkeypatch):
    routes = _routes(secured.app)
    assert ("GET", "/docs") in routes and ("POST", "/sdapi/v1/txt2img") in routes and len(routes) > 35
    for method, path in routes:
        if path == "/health":
            continue
        refused = secured.request(method, path)
        assert refused.status_code == 401, (method, path)
        assert refused.headers["www-authenticate"] == 'Basic realm="huabu"'
    assert secured.get("/health").json()["status"] == "ok"

    import huabu.server.security as security

    compared = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    assert secured.get("/sdapi/v1/samplers", headers=BEARER).status_code == 200
    assert secured.get("/sdapi/v1/samplers", headers=basic(USER, PASSWORD)).status_code == 200
    assert compared  # constant-time comparison, never ==
    for wrong in ({"Authorization": "Bearer " + KEY[:-1]}, basic(USER, "guess"), basic("eve", PASSWORD),
                  {"Authorization": f"Token {KEY}"}, {"Authorization": "Basic !!!"}):
        assert secured.get("/sdapi/v1/samplers", headers=wrong).status_code == 401, wrong
    assert secured.get("/openapi.json", headers=BEARER).status_code == 200


def test_state_changing_requests_from_other_origins_and_foreign_hosts_are_refused(open_client):
    body = {"prompt": "x", **TINY}
    evil = open_client.post("/sdapi/v1/txt2img", json=body, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-origin" in evil.json()["detail"]
    assert open_client.post("/sdapi/v1/options", json={"a": 1},
                            headers={"Referer": "http://evil.example/page"}).status_code == 403
    assert open_client.post("/sdapi/v1/options", json={"a": 1}, headers={"Origin": "null"}).status_code == 403
    assert open_client.post("/sdapi/v1/interrupt", headers={"Origin": "http://127.0.0.1:9999"}).status_code == 403
    assert open_client.post("/sdapi/v1/options", json={"a": 1}, headers={"Origin": LOCAL}).status_code == 200
    assert open_client.post("/sdapi/v1/options", json={"a": 1}).status_code == 200  # scripts send no Origin
    assert open_client.get("/sdapi/v1/options", headers={"Origin": "http://evil.example"}).status_code == 200
    rebinding = open_client.get("/sdapi/v1/options", headers={"Host": "evil.example:7861"})
    assert rebinding.status_code == 421 and "localhost only" in rebinding.json()["detail"]
    assert open_client.get("/health", headers={"Host": "localhost:7861"}).status_code == 200


def _bomb_png() -> str:
    """A small PNG whose header says 20000 x 20000 pixels: Pillow would need 400 MB to decode it."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def test_limits_on_sizes_steps_batches_bodies_and_images_answer_one_line_4xx(open_client):
    for field, value in (("width", 128), ("steps", 11), ("batch_size", 3), ("n_iter", 3)):
        response = open_client.post("/sdapi/v1/txt2img", json={"prompt": "x", **TINY, field: value})
        assert response.status_code == 400, field
        assert response.json()["detail"].startswith(f"{field} {value} is over this server's limit"), field
        native = open_client.post("/api/v1/jobs", json={"request": {"prompt": "x", **TINY, field: value}})
        assert native.status_code == 400 and "\n" not in native.json()["detail"]

    for field in ("prompt", "negative_prompt"):  # under the body limit, over the prompt limit: never tokenised
        long = {"prompt": "x", **TINY, field: "a cat, " * 3000}
        response = open_client.post("/sdapi/v1/txt2img", json=long)
        assert response.status_code == 400 and response.json()["detail"] == \
            f"{field} is 21000 characters; this server's limit is 20000", field
        native = open_client.post("/api/v1/jobs", json={"request": long})
        assert native.status_code == 400 and native.json()["detail"].startswith(f"{field} is 21000 characters")
        video = open_client.post("/api/v1/jobs", json={"kind": "video", "request": {**long, "frames": 2}})
        assert video.status_code == 400 and video.json()["detail"].startswith(f"{field} is 21000 characters")

    big = {"prompt": "x" * 400_000}
    response = open_client.post("/sdapi/v1/txt2img", json=big)
    assert response.status_code == 413 and "limit is 300000" in response.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"y" * 10_000
        yield b'"}'

    streamed = open_client.post("/sdapi/v1/txt2img", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413

    noise = base64.b64encode(os.urandom(160_000)).decode()
    assert open_client.post("/sdapi/v1/png-info", json={"image": noise}).status_code == 413
    bomb = open_client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [_bomb_png()], **TINY})
    assert bomb.status_code == 413 and "limit of 16384" in bomb.json()["detail"]
    wide = open_client.post("/sdapi/v1/img2img", json={"prompt": "x", **TINY,
                                                       "init_images": [png_b64(Image.new("L", (200, 200)))]})
    assert wide.status_code == 413 and wide.json()["detail"] == \
        "init_images[0] is 200x200 pixels; the limit is 16384 pixels"
    assert open_client.post("/sdapi/v1/png-info", json={"image": "not base64!"}).status_code == 400
    text = base64.b64encode(b"<html><script>alert(1)</script></html>").decode()
    assert open_client.post("/sdapi/v1/png-info", json={"image": text}).json()["detail"] == \
        "image is not an image Pillow can read"


def test_file_route_serves_only_media_from_the_output_root(open_client, home, tmp_path):
    outputs = home / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(outputs / "ok.png")
    (outputs / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(outputs / "sub" / "deep.webp")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret")
    (outputs / "link.png").symlink_to(secret)
    (outputs / "linkdir").symlink_to(tmp_path)
    (outputs / "page.html").write_text("<script>alert(1)</script>")
    (outputs / "page.svg").write_text("<svg onload=alert(1)>")
    (outputs / "fake.png").write_text("<html><script>alert(1)</script></html>")

    ok = open_client.get("/api/v1/files/ok.png")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    assert ok.headers["x-content-type-options"] == "nosniff"
    assert open_client.get("/api/v1/files/sub/deep.webp").headers["content-type"] == "image/webp"
    fake = open_client.get("/api/v1/files/fake.png")  # HTML bytes still go out as an image, never as a page
    assert fake.headers["content-type"] == "image/png" and fake.headers["x-content-type-options"] == "nosniff"
    for path in ("link.png", "linkdir/secret.png", "page.html", "page.svg", "%2e%2e/secret.png",
                 "..%2Fsecret.png", "sub/%2e%2e/%2e%2e/secret.png", "..%5Csecret.png", "%2Fetc%2Fpasswd",
                 "%252e%252e/secret.png", "sub", "missing.png", "ok.png%00.html"):
        response = open_client.get("/api/v1/files/" + path)
        assert response.status_code == 404, path
        assert b"top secret" not in response.content and response.json()["detail"] == "file not found"
    for relative in ("../secret.png", "/etc/passwd", "..\\secret.png", "sub/../../secret.png", "./ok.png", ""):
        with pytest.raises(NotFound):
            safe_output_file(outputs, relative)


def test_no_route_returns_secrets(secured):
    for method, path in _routes(secured.app):
        if method != "GET" or "/jobs/x" in path or "/files/" in path:
            continue
        response = secured.get(path, headers=BEARER)
        assert response.status_code == 200, path
        for secret in (KEY, PASSWORD, f"{USER}:{PASSWORD}"):
            assert secret not in response.text, path
    flags = secured.get("/sdapi/v1/cmd-flags", headers=BEARER).json()
    assert flags["api_auth_enabled"] is True and not {"api_key", "api_auth", "gradio_auth"} & set(flags)


def test_nothing_from_http_is_unpickled_and_only_listed_safetensors_models_load(engine, model_store, tmp_path,
                                                                                monkeypatch):
    import torch

    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-sd").symlink_to(model_store["folder"])
    (models / "evil.safetensors").write_bytes(model_store["fake_safetensors"].read_bytes())  # a pickle inside
    settings = api_settings(model_store, tmp_path / "home", models_dir=models)

    def refuse(*args, **kwargs):
        raise AssertionError("something received over HTTP reached an unpickler")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    with TestClient(make_app(settings, engine), base_url=LOCAL) as client:
        refused = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "evil"})
        assert refused.status_code == 403 and "not a safetensors file" in refused.json()["detail"]
        override = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **TINY,
                                                          "override_settings": {"sd_model_checkpoint": "evil"}})
        assert override.status_code == 403
        assert client.post("/api/v1/jobs", json={"request": {"prompt": "x", "model": "evil"}}).status_code == 403
        for outside in (str(model_store["ckpt"]), str(model_store["single"]), "hub-user/hub-model"):
            response = client.post("/api/v1/jobs", json={"request": {"prompt": "x", "model": outside}})
            assert response.status_code == 404, outside

        pickled = base64.b64encode(pickle.dumps({"a": 1})).decode()
        assert client.post("/sdapi/v1/png-info", json={"image": pickled}).status_code == 400
        assert client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [pickled]}).status_code == 400
        unit = {"prompt": "x", **TINY, "alwayson_scripts": {"controlnet": {"args": [{"image": pickled}]}}}
        assert client.post("/sdapi/v1/txt2img", json=unit).status_code == 400

        image = "data:image/png;base64," + png_b64(Image.new("RGB", (32, 32)))
        for request in ({"mode": "img2img", "init_image": "/etc/hosts"},
                        {"mode": "inpaint", "init_image": image, "mask": str(model_store["ckpt"])},
                        {"controlnets": [{"image": "/etc/hosts"}]},
                        {"checkpoint_config": str(model_store["folder"])}):
            response = client.post("/api/v1/jobs", json={"request": {"prompt": "x", **request}})
            assert response.status_code == 403, request
        outside = tmp_path / "outside.safetensors"
        outside.write_bytes((models / "evil.safetensors").read_bytes())
        for prompt in (f"a cat <lora:{outside.with_suffix('')}:1>", "a cat <lora:../models/evil:0.5>"):
            refused = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, **TINY})
            assert refused.status_code == 403 and "LoRA" in refused.json()["detail"], prompt
        native = client.post("/api/v1/jobs", json={"request": {"prompt": "x", "loras": [{"name": str(outside)}]}})
        assert native.status_code == 403
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", **TINY}).status_code == 200


def test_a_scale_out_worker_accepts_json_only_and_checks_each_job_as_http_does(model_store, tmp_path):
    pytest.importorskip("celery", reason="celery (the server extra) is not installed")
    from huabu.core.errors import HuabuError
    from huabu.engine.models import ModelManager
    from huabu.server.catalog import Catalog
    from huabu.server.distributed import job_from_wire, make_celery

    settings = api_settings(model_store, tmp_path / "home")
    conf = make_celery("redis://127.0.0.1:1/0", settings).conf  # builds the app; connects to nothing
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"

    catalog = Catalog(settings, ModelManager(settings), SMALL, default_model=settings.default_model)
    wire = {
        "id": "0123456789abcdef" * 2,
        "kind": "image",
        "origin": "api",
        "save": True,
        "request": {"prompt": "x", **TINY},
    }
    job = job_from_wire(wire, catalog)
    assert job.request["prompt"] == "x" and job.request["model"] == "tiny-sd"
    named = job_from_wire({**wire, "request": {"prompt": "x", "model": "tiny-sd", **TINY}}, catalog)
    assert job_from_wire({**wire, "request": named.request}, catalog).request["model"] == named.request["model"]
    image = "data:image/png;base64," + png_b64(Image.new("RGB", (32, 32)))
    for bad, words in (({"steps": 11}, "limit of 10"), ({"width": 128}, "limit of 64"),
                       ({"model": str(model_store["ckpt"])}, "no model"),
                       ({"mode": "img2img", "init_image": "/etc/hosts"}, "file paths are not accepted"),
                       ({"mode": "inpaint", "init_image": image, "mask": "/etc/hosts"}, "file paths"),
                       ({"controlnets": [{"image": "/etc/hosts"}]}, "file paths"),
                       ({"controlnets": [{"model": "../x", "image": image}]}, "not a path"),
                       ({"loras": [{"name": "/tmp/evil"}]}, "not a path")):
        with pytest.raises(HuabuError, match=words):
            job_from_wire({**wire, "request": {"prompt": "x", **TINY, **bad}}, catalog)
    for bad in ("not a dict", {**wire, "request": "x"}, {**wire, "origin": "pickle"}, {**wire, "kind": "audio"},
                {**wire, "id": "../../home"}, {**wire, "id": None}):
        with pytest.raises(HuabuError):
            job_from_wire(bad, catalog)
