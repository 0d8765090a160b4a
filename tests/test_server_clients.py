"""Real clients against a live uvicorn server on loopback: the `webuiapi` A1111 client library unchanged (also with
A1111-style HTTP Basic auth), and a bounded load test of 50 concurrent requests with every job accounted for."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from server_support import TINY, api_settings, held_app, live_server, make_app

from huabu.server import ServerConfig

webuiapi = pytest.importorskip("webuiapi", reason="webuiapi (dev extra) is not installed")


@pytest.fixture
def server(engine, model_store, tmp_path):
    with live_server(make_app(api_settings(model_store, tmp_path / "home"), engine)) as base:
        yield base


def _client(base: str) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(baseurl=f"{base}/sdapi/v1", sampler="Euler a", steps=2)


def test_webuiapi_txt2img_img2img_png_info_options_models_samplers(server):
    api = _client(server)
    result = api.txt2img(prompt="a green frog", seed=41, width=32, height=32, batch_size=2, cfg_scale=6)
    assert [image.size for image in result.images] == [(32, 32), (32, 32)]
    assert result.info["all_seeds"] == [41, 42] and result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "a green frog"
    assert any("eta" in warning for warning in result.info["warnings"])  # webuiapi sends eta=1.0

    source = Image.new("RGB", (32, 32), (20, 160, 40))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    again = api.img2img(images=[source], prompt="a frog", seed=3, width=32, height=32, denoising_strength=0.9)
    assert again.image.size == (32, 32) and again.info["denoising_strength"] == 0.9
    painted = api.img2img(images=[source], mask_image=mask, prompt="a frog", seed=3, width=32, height=32,
                          denoising_strength=0.9, mask_blur=0, inpainting_fill=1)
    kept = np.asarray(painted.image.convert("RGB"), dtype=np.int16)[:, 18:]
    assert np.abs(kept - np.asarray(source, dtype=np.int16)[:, 18:]).max() <= 2

    info = api.png_info(result.images[0])
    assert info.parameters["Seed"] == 41 and info.parameters["Prompt"] == "a green frog"
    assert info.info == result.info["infotexts"][0]

    assert "Euler a" in api.util_get_sampler_names() and "Karras" in [s["label"] for s in api.get_schedulers()]
    names = api.util_get_model_names()
    assert "tiny-inpaint" in " ".join(names)
    api.util_set_model("tiny-inpaint")
    assert api.util_get_current_model().startswith("tiny-inpaint [")
    api.set_options({"my_key": 5})
    assert api.get_options()["my_key"] == 5
    for listing in (api.get_cmd_flags, api.get_embeddings, api.get_hypernetworks, api.get_face_restorers,
                    api.get_realesrgan_models, api.get_prompt_styles, api.get_sd_vae, api.get_upscalers,
                    api.get_loras, api.get_memory, api.get_scripts):
        listing()


def test_webuiapi_progress_and_interrupt_during_a_blocking_call(engine, model_store, tmp_path):
    with live_server(held_app(api_settings(model_store, tmp_path / "home"), engine)) as base:
        api = _client(base)
        results = []
        call = threading.Thread(target=lambda: results.append(api.txt2img(prompt="long", steps=20, width=32,
                                                                          height=32, sampler_name="Euler")))
        call.start()
        deadline = time.monotonic() + 60
        progress = api.get_progress()
        while progress["state"]["sampling_step"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            progress = api.get_progress()
        assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 20
        api.interrupt()
        call.join(timeout=60)
        assert results[0].info["interrupted"] is True and len(results[0].images) == 1


def test_webuiapi_with_a1111_style_basic_auth(engine, model_store, tmp_path):
    config = ServerConfig(api_auth="bot:hunter22")
    with live_server(make_app(api_settings(model_store, tmp_path / "home"), engine, config)) as base:
        api = _client(base)
        assert api.get_sd_models()["error"] == "Unauthorized"  # webuiapi hands back the 401's JSON body
        with pytest.raises(RuntimeError, match="401"):
            api.txt2img(prompt="x", width=32, height=32)
        api.set_auth("bot", "hunter22")
        assert api.get_sd_models()[0]["model_name"]
        assert api.txt2img(prompt="x", seed=1, width=32, height=32).image.size == (32, 32)


def test_fifty_concurrent_requests_are_all_answered_and_accounted_for(server):
    count = 50

    async def one(client: httpx.AsyncClient, index: int) -> tuple[int, dict]:
        response = await client.post("/sdapi/v1/txt2img", json={"prompt": f"load {index}", "seed": 1000 + index,
                                                                 **TINY, "steps": 1})
        return response.status_code, response.json()

    async def run() -> list[tuple[int, dict]]:
        async with httpx.AsyncClient(base_url=server, timeout=240) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(count))), timeout=300)

    answers = asyncio.run(run())
    assert [status for status, _ in answers] == [200] * count
    infos = [json.loads(body["info"]) for _, body in answers]
    assert [info["all_seeds"] for info in infos] == [[1000 + i] for i in range(count)]
    assert all(len(body["images"]) == 1 for _, body in answers)
    jobs = httpx.get(f"{server}/api/v1/jobs", params={"limit": 500}).json()
    assert len(jobs) == count and {job["state"] for job in jobs} == {"done"}
    assert {job["id"] for job in jobs} == {info["job_id"] for info in infos}
    assert httpx.get(f"{server}/api/v1/jobs", params={"state": "queued"}).json() == []
