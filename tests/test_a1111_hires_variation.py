"""The hires fix and variation seeds through /sdapi/v1: A1111 payload fields in, A1111 infotext keys out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_support import LOCAL, api_settings, decode_png, make_app

from huabu.core.pnginfo import parse_infotext
from huabu.core.requests import GenerateRequest


@pytest.fixture
def client(engine, model_store, tmp_path):
    app = make_app(api_settings(model_store, tmp_path / "home"), engine)
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def post(client, **payload) -> tuple[list, dict]:
    body = {"prompt": "a red apple", "seed": 21, "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "tiny-sd"}, **payload}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    return [decode_png(text) for text in response.json()["images"]], json.loads(response.json()["info"])


def test_enable_hr_answers_the_doubled_size_with_a1111_keys_in_order(client, engine):
    images, info = post(client, enable_hr=True, hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.5,
                        hr_upscaler=None)
    assert images[0].size == (128, 128)
    text = info["infotexts"][0]
    assert "Size: 64x64, Model hash:" in text
    assert ", Denoising strength: 0.5, Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent, " in text
    assert (info["width"], info["denoising_strength"]) == (64, 0.5)
    assert info["extra_generation_params"]["Hires upscale"] == 2
    assert info["warnings"] == []
    direct = engine.generate(GenerateRequest.create(prompt="a red apple", seed=21, steps=3, width=64, height=64,
                                                    sampler="Euler", model="tiny-sd", enable_hr=True,
                                                    hr_second_pass_steps=2, denoising_strength=0.5))
    assert np.abs(np.asarray(images[0], dtype=np.int16) - np.asarray(direct.images[0], dtype=np.int16)).max() == 0


def test_hires_fields_without_enable_hr_change_nothing(client):
    plain, _ = post(client)
    ignored, info = post(client, hr_scale=3, hr_upscaler="Lanczos", denoising_strength=0.3)
    assert ignored[0].size == (64, 64) and "Hires" not in info["infotexts"][0]
    assert "Denoising strength" not in info["infotexts"][0] and info["denoising_strength"] is None
    assert np.array_equal(np.asarray(plain[0]), np.asarray(ignored[0]))


def test_hires_resize_sampler_prompt_and_unsupported_options(client):
    images, info = post(client, enable_hr=True, hr_resize_x=96, hr_resize_y=64, hr_second_pass_steps=1,
                        denoising_strength=0.6, hr_upscaler="Nearest", hr_sampler_name="Euler a",
                        hr_prompt="a green pear", hr_checkpoint_name="other")
    assert images[0].size == (96, 64)
    parsed = parse_infotext(info["infotexts"][0])
    assert (parsed["Hires resize"], parsed["Hires upscaler"], parsed["Hires sampler"], parsed["Hires prompt"]) == \
        ("96x64", "Nearest", "Euler a", "a green pear")
    assert info["warnings"] == ["hr_checkpoint_name: ignored (the hires pass uses the first pass's)"]


def test_unknown_hires_upscaler_is_a_400_line(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 32, "height": 32,
                                                      "enable_hr": True, "hr_upscaler": "4x-Nope"})
    assert response.status_code in (400, 422) and "unknown upscaler '4x-Nope'" in response.text


def test_variation_seed_fields_and_info(client):
    images, info = post(client, subseed=8, subseed_strength=1.0, batch_size=2)
    of_8, _ = post(client, seed=8)
    assert np.abs(np.asarray(images[0], dtype=np.int16) - np.asarray(of_8[0], dtype=np.int16)).max() <= 1
    assert (info["all_seeds"], info["subseed"], info["all_subseeds"], info["subseed_strength"]) == \
        ([21, 21], 8, [8, 9], 1.0)
    parsed = [parse_infotext(text) for text in info["infotexts"]]
    assert [(p["Seed"], p["Variation seed"], p["Variation seed strength"]) for p in parsed] == [(21, 8, 1), (21, 9, 1)]
    _, resized = post(client, seed_resize_from_w=32, seed_resize_from_h=32)
    assert parse_infotext(resized["infotexts"][0])["Seed resize from"] == "32x32"
    assert (resized["seed_resize_from_w"], resized["seed_resize_from_h"]) == (32, 32)
    assert resized["warnings"] == []


def test_hires_output_over_the_size_limit_and_vae_paths_are_refused(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 1024, "height": 1024,
                                                      "enable_hr": True, "hr_scale": 4})
    assert response.status_code == 400 and "the hires fix's width 4096 is over this server's limit" in response.text
    job = client.post("/api/v1/jobs", json={"kind": "image", "request": {"prompt": "x", "vae": "/etc/passwd"}})
    assert job.status_code in (400, 403) and "vae must be a name" in job.text
