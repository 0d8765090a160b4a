"""/sdapi/v1/options: every A1111 key with its default, what acts (samples_format, ENSD), the cap on unknown keys."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_support import LOCAL, api_settings, make_app

from huabu.core.fields import infotext_mode, infotext_to_request_fields
from huabu.core.pnginfo import parse_infotext
from huabu.core.requests import GenerateRequest
from huabu.server.a1111_options import MAX_UNKNOWN_KEYS


@pytest.fixture
def client(engine, model_store, tmp_path):
    app = make_app(api_settings(model_store, tmp_path / "home"), engine)
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def txt2img(client, **payload) -> tuple[bytes, dict]:
    body = {"prompt": "a red apple", "seed": 21, "steps": 3, "width": 32, "height": 32,
            "override_settings": {"sd_model_checkpoint": "tiny-sd"}, **payload}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["images"][0]), json.loads(response.json()["info"])


def test_get_answers_every_a1111_key_with_its_default_or_the_live_value(client, tmp_path):
    options = client.get("/sdapi/v1/options").json()
    assert len(options) >= 300
    assert (options["send_seed"], options["samples_save"], options["samples_format"]) == (True, True, "png")
    assert options["outdir_txt2img_samples"] == "outputs/txt2img-images"
    assert options["outdir_samples"].endswith("outputs") and options["sd_vae"] == "Automatic"
    assert (options["eta_noise_seed_delta"], options["CLIP_stop_at_last_layers"]) == (0, 1)
    assert options["sd_model_checkpoint"].startswith("tiny-sd [")


def test_post_keeps_known_keys_and_caps_unknown_ones(client):
    assert client.post("/sdapi/v1/options", json={"send_seed": False, "jpeg_quality": 60}).status_code == 200
    options = client.get("/sdapi/v1/options").json()
    assert (options["send_seed"], options["jpeg_quality"]) == (False, 60)
    many = {f"my_extension_key_{i}": i for i in range(MAX_UNKNOWN_KEYS)}
    assert client.post("/sdapi/v1/options", json=many).status_code == 200
    response = client.post("/sdapi/v1/options", json={"one_too_many": 1})
    assert response.status_code == 400 and "too many option keys A1111 does not have" in response.text
    assert client.post("/sdapi/v1/options", json={"my_extension_key_3": "changed"}).status_code == 200
    for bad in ({"samples_format": "gif"}, {"CLIP_stop_at_last_layers": "two"}, {"eta_noise_seed_delta": -1}):
        assert client.post("/sdapi/v1/options", json=bad).status_code == 400, bad


def test_samples_format_sets_the_answered_format(client):
    png, info = txt2img(client)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    client.post("/sdapi/v1/options", json={"samples_format": "jpg"})
    jpeg, info = txt2img(client)
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    comment = image.getexif().get_ifd(0x8769).get(0x9286) or image.getexif().get(0x9286)
    assert comment[8:].decode("utf-16-be") == info["infotexts"][0]


def test_eta_noise_seed_delta_reseeds_ancestral_step_noise_only(client, engine):
    plain, _ = txt2img(client, sampler_name="Euler a")
    client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 31337})
    ensd, info = txt2img(client, sampler_name="Euler a")
    text = info["infotexts"][0]
    assert "ENSD: 31337" in text
    assert np.abs(_pixels(plain) - _pixels(ensd)).max() > 5
    deterministic, other = txt2img(client, sampler_name="Euler")
    client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 0})
    deterministic_plain, _ = txt2img(client, sampler_name="Euler")
    assert "ENSD" not in other["infotexts"][0]
    assert np.array_equal(_pixels(deterministic), _pixels(deterministic_plain))
    parsed = parse_infotext(text)
    fields = {**infotext_to_request_fields(parsed), "mode": infotext_mode(parsed), "model": "tiny-sd"}
    remade = engine.generate(GenerateRequest.create(**fields)).images[0]
    assert np.array_equal(np.asarray(remade, dtype=np.int16), _pixels(ensd))


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
