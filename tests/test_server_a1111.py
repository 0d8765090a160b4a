"""The A1111-compatible /sdapi/v1 routes on the session's tiny model: response shapes, the whole request schema,
img2img/inpaint, png-info, options, the list routes, progress and interrupt."""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_support import LOCAL, TINY, api_settings, decode_png, held_app, make_app, png_b64, wait_for

from huabu.core.pnginfo import parse_infotext
from huabu.core.requests import GenerateRequest

INFO_KEYS = {"prompt", "all_prompts", "negative_prompt", "seed", "all_seeds", "subseed", "width", "height",
             "sampler_name", "cfg_scale", "steps", "batch_size", "sd_model_name", "sd_model_hash",
             "denoising_strength", "extra_generation_params", "index_of_first_image", "infotexts", "styles",
             "job_timestamp", "clip_skip", "version", "warnings"}


@pytest.fixture
def client(engine, model_store, tmp_path):
    app = make_app(api_settings(model_store, tmp_path / "home"), engine)
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def test_txt2img_matches_a_direct_engine_call_and_answers_in_a1111_shape(client, engine):
    payload = {"prompt": "a red apple", "negative_prompt": "blurry", "seed": 77, "sampler_name": "Euler a",
               "batch_size": 2, "cfg_scale": 5, **TINY}
    begun = time.perf_counter()
    response = client.post("/sdapi/v1/txt2img", json=payload)
    elapsed = time.perf_counter() - begun
    assert response.status_code == 200, response.text
    timing = re.fullmatch(r"engine;dur=(\d+\.\d)", response.headers["server-timing"])  # the engine's milliseconds
    assert timing and 0 < float(timing[1]) <= elapsed * 1000
    body = response.json()
    images = [decode_png(text) for text in body["images"]]
    assert [image.size for image in images] == [(32, 32), (32, 32)]
    assert {k: body["parameters"][k] for k in payload} == payload
    info = json.loads(body["info"])
    assert INFO_KEYS <= set(info)
    assert info["all_seeds"] == [77, 78] and info["seed"] == 77 and info["sd_model_name"] == "tiny-sd"
    assert info["sampler_name"] == "Euler a" and info["extra_generation_params"]["Schedule type"] == "Uniform"
    assert parse_infotext(info["infotexts"][1])["Seed"] == 78
    assert images[0].info["parameters"] == info["infotexts"][0]  # each PNG carries its own infotext

    direct = engine.generate(GenerateRequest.create(prompt="a red apple", negative_prompt="blurry", seed=78,
                                                    sampler="Euler a", cfg_scale=5, model="tiny-sd", **TINY))
    api = np.asarray(images[1].convert("RGB"), dtype=np.int16)
    assert np.abs(api - np.asarray(direct.images[0], dtype=np.int16)).max() <= 1  # batch vs single rounding


def test_the_whole_a1111_request_schema_is_accepted_and_unsupported_fields_are_named(client):
    payload = {
        "prompt": "a cat", "negative_prompt": "", "styles": ["photo_portrait", "no-such-style"], "seed": 3,
        "subseed": 5, "subseed_strength": 0.3, "seed_resize_from_h": 64, "seed_resize_from_w": 64,
        "sampler_name": None, "sampler_index": "DPM fast", "scheduler": "align_your_steps", "batch_size": 1,
        "n_iter": 1, "cfg_scale": 7, "restore_faces": True, "tiling": True, "do_not_save_samples": True,
        "do_not_save_grid": True, "eta": 0.5, "denoising_strength": 0.5, "s_min_uncond": 0.1, "s_churn": 0.2,
        "s_tmax": 3.0, "s_tmin": 0.1, "s_noise": 0.9, "override_settings": {"CLIP_stop_at_last_layers": 2,
                                                                            "eta_noise_seed_delta": 31337},
        "override_settings_restore_afterwards": False, "refiner_checkpoint": "other", "refiner_switch_at": 0.8,
        "disable_extra_networks": True, "firstpass_image": None, "comments": {}, "enable_hr": True,
        "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2, "hr_upscaler": "Latent",
        "hr_second_pass_steps": 3, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None,
        "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "",
        "force_task_id": "task(abc)", "script_name": None, "script_args": [], "send_images": True,
        "save_images": True, "alwayson_scripts": {"ADetailer": {"args": []}}, "infotext": None,
        "some_future_field": {"nested": 1}, **TINY}
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    warned = " | ".join(info["warnings"])
    for name in ("restore_faces", "tiling", "eta", "s_churn", "refiner_checkpoint", "alwayson_scripts.ADetailer",
                 "some_future_field", "no-such-style", "DPM fast",
                 "align_your_steps"):
        assert name in warned, name
    assert "force_task_id" not in warned and "do_not_save_samples" not in warned
    for name in ("subseed_strength", "seed_resize_from", "enable_hr", "hr_", "eta_noise_seed_delta"):  # honoured
        assert name not in warned, name
    assert info["sampler_name"] == "Euler" and info["clip_skip"] == 2 and info["styles"] == ["photo_portrait"]
    assert info["all_prompts"][0].startswith("portrait photograph of a cat")
    assert len(response.json()["images"]) == 1


def test_infotext_fills_fields_the_request_leaves_unset(client):
    text = "a blue bird\nNegative prompt: ugly\nSteps: 2, Sampler: Euler, CFG scale: 4, Seed: 99, Size: 32x32"
    info = json.loads(client.post("/sdapi/v1/txt2img", json={"infotext": text, "steps": 1}).json()["info"])
    assert (info["prompt"], info["negative_prompt"], info["seed"], info["steps"]) == ("a blue bird", "ugly", 99, 1)
    assert (info["width"], info["cfg_scale"]) == (32, 4.0)


def test_img2img_and_inpainting_with_mask_options(client):
    source = Image.new("RGB", (32, 32), (200, 30, 30))
    source.paste((30, 30, 200), (0, 0, 16, 32))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (16, 0, 32, 32))  # repaint the right half only
    base = {"prompt": "a bird", "init_images": [png_b64(source)], "denoising_strength": 0.9, "seed": 5, **TINY}
    plain = client.post("/sdapi/v1/img2img", json=base)
    assert plain.status_code == 200, plain.text
    assert json.loads(plain.json()["info"])["denoising_strength"] == 0.9
    assert plain.json()["parameters"]["init_images"] is None  # as A1111 without include_init_images

    inpaint = client.post("/sdapi/v1/img2img", json={**base, "mask": png_b64(mask), "mask_blur": 0,
                                                     "inpainting_fill": 1, "inpaint_full_res": False,
                                                     "inpaint_full_res_padding": 32})
    assert inpaint.status_code == 200, inpaint.text
    out = np.asarray(decode_png(inpaint.json()["images"][0]).convert("RGB"), dtype=np.int16)
    src = np.asarray(source, dtype=np.int16)
    assert np.abs(out[:, :14] - src[:, :14]).max() <= 2  # kept half pasted back
    assert np.abs(out[:, 18:] - src[:, 18:]).mean() > 10  # repainted half changed
    assert "inpaint_full_res" not in " ".join(json.loads(inpaint.json()["info"])["warnings"])

    inverted = client.post("/sdapi/v1/img2img", json={**base, "mask": png_b64(mask), "mask_blur": 0,
                                                      "inpainting_mask_invert": 1, "inpainting_fill": 0,
                                                      "inpaint_full_res": True})
    out = np.asarray(decode_png(inverted.json()["images"][0]).convert("RGB"), dtype=np.int16)
    assert np.abs(out[:, 18:] - src[:, 18:]).max() <= 2 and np.abs(out[:, :14] - src[:, :14]).mean() > 10
    inverted_info = json.loads(inverted.json()["info"])
    assert inverted_info["warnings"] == []
    assert "Masked content: fill, Inpaint area: Only masked" in inverted_info["infotexts"][0]

    missing = client.post("/sdapi/v1/img2img", json={"prompt": "x", **TINY})
    assert missing.status_code == 400 and "init_images" in missing.json()["detail"]


def test_png_info_reads_back_the_parameters(client):
    made = client.post("/sdapi/v1/txt2img", json={"prompt": "a lamp", "seed": 12, **TINY}).json()
    info = client.post("/sdapi/v1/png-info", json={"image": made["images"][0]}).json()
    assert info["info"] == json.loads(made["info"])["infotexts"][0]
    assert info["parameters"]["Seed"] == 12 and info["parameters"]["Prompt"] == "a lamp"
    plain = client.post("/sdapi/v1/png-info", json={"image": png_b64(Image.new("RGB", (4, 4)))}).json()
    assert plain["info"] == "" and plain["parameters"] == {}


def test_options_round_trip_any_key_and_switch_models_only_to_listed_ones(client, model_store):
    assert client.post("/sdapi/v1/options", json={"my_client_setting": [1, "two"], "samples_format": "jpg"}
                       ).status_code == 200
    options = client.get("/sdapi/v1/options").json()
    assert options["my_client_setting"] == [1, "two"] and options["samples_format"] == "jpg"
    assert options["sd_model_checkpoint"].startswith("tiny-sd [")

    titles = {m["model_name"]: m["title"] for m in client.get("/sdapi/v1/sd-models").json()}
    assert set(titles) >= {"tiny-sd", "tiny-inpaint"}
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles["tiny-inpaint"]}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == titles["tiny-inpaint"]
    info = json.loads(client.post("/sdapi/v1/txt2img", json={"prompt": "x", **TINY}).json()["info"])
    assert info["sd_model_name"] == "tiny-inpaint" and info["is_using_inpainting_conditioning"] is True

    for bad in ("no-such-model", str(model_store["single"]), "/etc/passwd", "../models/tiny-sd"):
        response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": bad})
        assert response.status_code == 404, bad
        assert "sd-models" in response.json()["detail"]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == titles["tiny-inpaint"]


def test_list_routes_answer_with_what_huabu_has(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"Euler a", "DPM++ 2M", "UniPC"} <= {s["name"] for s in samplers}
    assert {"name", "aliases", "options"} <= set(samplers[0])
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert "Karras" in {s["label"] for s in schedulers} and {"name", "label", "aliases"} <= set(schedulers[0])
    styles = client.get("/sdapi/v1/prompt-styles").json()
    assert {"name", "prompt", "negative_prompt"} <= set(styles[0]) and "{prompt}" in styles[0]["prompt"]
    assert client.get("/sdapi/v1/memory").json()["ram"]["total"] > 0
    assert client.get("/sdapi/v1/loras").json() == []
    import torch
    from safetensors.torch import save_file

    loras_dir = client.app.state.huabu.settings.loras_dir
    (loras_dir / "styles").mkdir(parents=True)
    save_file({"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 64)},
              str(loras_dir / "styles" / "inkwash.safetensors"), metadata={"ss_output_name": "ink wash"})
    assert [(row["name"], row["alias"], row["path"]) for row in client.get("/sdapi/v1/loras").json()] == \
        [("inkwash", "ink wash", "styles/inkwash.safetensors")]
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    scripts = ["x/y/z plot", "prompt matrix", "prompts from file or textbox"]  # tests/test_scripts.py runs them
    assert client.get("/sdapi/v1/scripts").json() == {
        "txt2img": scripts,
        "img2img": [*scripts, "poor man's outpainting", "outpainting mk2"],
    }
    assert [row["name"] for row in client.get("/sdapi/v1/upscalers").json()][:3] == ["None", "Lanczos", "Nearest"]
    assert {"Latent", "Latent (nearest-exact)"} <= {row["name"] for row in
                                                    client.get("/sdapi/v1/latent-upscale-modes").json()}
    for route in ("hypernetworks", "face-restorers", "realesrgan-models", "sd-vae", "extensions", "upscalers",
                  "cmd-flags"):
        assert client.get(f"/sdapi/v1/{route}").status_code == 200, route


def test_progress_shows_a_running_job_with_a_preview_and_interrupt_stops_it(engine, model_store, tmp_path, monkeypatch):
    import huabu.engine.pipelines as pipelines

    decode, decoded_on = pipelines.decode_latents, []

    def recording_decode(*args, **kwargs):
        decoded_on.append(threading.current_thread().name)
        return decode(*args, **kwargs)

    monkeypatch.setattr(pipelines, "decode_latents", recording_decode)
    with TestClient(held_app(api_settings(model_store, tmp_path / "home"), engine), base_url=LOCAL) as client:
        job = client.post("/api/v1/jobs", json={"request": {"prompt": "slow", "steps": 20, "width": 32,
                                                            "height": 32, "sampler": "Euler", "seed": 1}}).json()
        deadline = time.monotonic() + 60
        progress = client.get("/sdapi/v1/progress").json()
        while progress["state"]["sampling_step"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            progress = client.get("/sdapi/v1/progress").json()
        assert progress["current_task"] == job["id"] and progress["state"]["sampling_steps"] == 20
        assert 0 < progress["progress"] < 1 and progress["state"]["job"] == f"task({job['id']})"
        assert decode_png(progress["current_image"]).size == (32, 32)
        # The preview is made on the engine thread between two steps, never beside it on the request's thread.
        assert decoded_on and set(decoded_on) == {"huabu-worker-0"}
        assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        finished = wait_for(client, job["id"])
        assert finished["state"] == "done" and finished["result"]["interrupted"] is True
        assert finished["progress"]["step"] < 20
        assert client.get("/sdapi/v1/progress").json()["progress"] == 0


def test_a1111_calls_run_through_the_shared_queue(client):
    """A blocking A1111 call is a job: a second one waits its turn, both appear in the jobs list."""
    results = []
    calls = [threading.Thread(target=lambda: results.append(
        client.post("/sdapi/v1/txt2img", json={"prompt": "q", **TINY}).status_code)) for _ in range(2)]
    for call in calls:
        call.start()
    for call in calls:
        call.join(timeout=60)
    assert results == [200, 200]
    jobs = client.get("/api/v1/jobs").json()
    assert [j["origin"] for j in jobs] == ["a1111", "a1111"] and {j["state"] for j in jobs} == {"done"}


def test_controlnet_units_from_alwayson_scripts_become_generate_request_units(client):
    from huabu.server.a1111 import Txt2ImgRequest, to_generate

    control = png_b64(Image.new("RGB", (32, 32), (255, 255, 255)))
    req = Txt2ImgRequest.model_validate({"prompt": "x", **TINY, "alwayson_scripts": {"controlnet": {"args": [
        {"enabled": True, "input_image": control, "module": "canny", "model": "control_canny [abc123]",
         "weight": 0.7, "resize_mode": 0, "control_mode": 2, "processor_res": -1, "threshold_a": 100,
         "threshold_b": -1, "guidance_start": 0.1, "guidance_end": 0.9, "pixel_perfect": True, "low_vram": False},
        {"enabled": False, "image": control},
        {"image": {"image": "data:image/png;base64," + control, "mask": None}, "module": "none"},
        "positional-args-are-not-units"]}}})
    request, warnings = to_generate(req, client.app.state.huabu.catalog, "txt2img")
    first, second = request.controlnets
    assert (first.module, first.model, first.weight) == ("canny", "control_canny [abc123]", 0.7)
    assert (first.resize_mode, first.control_mode) == ("Just Resize", "ControlNet is more important")
    assert (first.processor_res, first.threshold_a, first.threshold_b) == (512, 100, None)
    assert (first.guidance_start, first.guidance_end, first.pixel_perfect) == (0.1, 0.9, True)
    assert first.image.startswith("data:image/png;base64,") and second.image == first.image
    assert any("args[3]" in w for w in warnings)

    bad = {"prompt": "x", **TINY, "alwayson_scripts": {"controlnet": {"args": [{"image": control, "weight": 5}]}}}
    response = client.post("/sdapi/v1/txt2img", json=bad)
    assert response.status_code == 400 and "weight" in response.json()["detail"]


def test_controlnet_units_steer_the_image_through_the_engine(engine, model_store, controlnet_store, tmp_path):
    settings = api_settings(model_store, tmp_path / "home", controlnet_dir=controlnet_store["canny"].parent)
    edges = Image.new("RGB", (32, 32), (0, 0, 0))
    edges.paste((255, 255, 255), (8, 8, 24, 24))
    unit = {"enabled": True, "image": png_b64(edges), "module": "none", "model": "tiny-canny", "weight": 1.0,
            "resize_mode": "Crop and Resize", "control_mode": 0, "processor_res": -1}
    base = {"prompt": "a box", "seed": 4, "sampler_name": "Euler", **TINY}
    with TestClient(make_app(settings, engine), base_url=LOCAL) as client:
        plain = client.post("/sdapi/v1/txt2img", json=base).json()
        steered = client.post("/sdapi/v1/txt2img", json={**base, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
        assert steered.status_code == 200, steered.text
        info = json.loads(steered.json()["info"])
        assert "tiny-canny" in info["extra_generation_params"]["ControlNet 0"]
        a, b = (np.asarray(decode_png(body["images"][0]), dtype=np.int16) for body in (plain, steered.json()))
        assert np.abs(a - b).mean() > 1.0
        path_unit = {**unit, "model": str(controlnet_store["canny"])}
        refused = client.post("/sdapi/v1/txt2img", json={**base, "alwayson_scripts": {"controlnet": {"args": [
            path_unit]}}})
        assert refused.status_code == 403 and "not a path" in refused.json()["detail"]


def test_a_sync_call_whose_client_goes_away_is_cancelled_and_leaves_no_state(engine, model_store, tmp_path):
    import httpx
    from server_support import live_server

    app = held_app(api_settings(model_store, tmp_path / "home"), engine)
    slow = {"prompt": "slow", "steps": 20, "width": 32, "height": 32, "sampler": "Euler"}
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as api:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.post(f"{base}/sdapi/v1/txt2img", json=slow, timeout=httpx.Timeout(60, read=1.0))
        job = api.get("/api/v1/jobs").json()[0]
        assert job["origin"] == "a1111"
        finished = wait_for(api, job["id"], timeout=60)
        assert finished["state"] == "cancelled"
        assert finished["progress"].get("step", 0) < 20  # stopped early, not run to the end
        queue = app.state.huabu.queue
        assert queue._outcomes == {} and queue._waiters == {} and queue._live == {}
        done = api.post("/sdapi/v1/txt2img", json={"prompt": "after", **TINY})  # the slot is free again
        assert done.status_code == 200 and queue._outcomes == {}


def test_memory_switches_read_back_in_options_and_cmd_flags_and_change_only_at_start(engine, model_store, tmp_path):
    settings = api_settings(model_store, tmp_path / "home", vae_tiling=True, attention_slicing=True)
    with TestClient(make_app(settings, engine), base_url=LOCAL) as client:
        options = client.get("/sdapi/v1/options").json()
        assert {k: options[k] for k in ("huabu_offload", "huabu_vae_tiling", "huabu_attention_slicing",
                                        "huabu_dtype", "huabu_compile")} == \
            {"huabu_offload": "none", "huabu_vae_tiling": True, "huabu_attention_slicing": True, "huabu_dtype": "fp32",
             "huabu_compile": False}
        assert client.post("/sdapi/v1/options", json=options).status_code == 200  # a client posts back what it got
        refused = client.post("/sdapi/v1/options", json={"huabu_offload": "model", "samples_format": "jpg"})
        assert refused.status_code == 400 and "--offload" in refused.json()["detail"]
        assert client.get("/sdapi/v1/options").json()["samples_format"] == "png"  # nothing of a refused POST kept
        flags = client.get("/sdapi/v1/cmd-flags").json()
        assert (flags["medvram"], flags["lowvram"], flags["vae_tiling"], flags["attention_slicing"]) == \
            (False, False, True, True)


def test_save_images_false_writes_no_file_and_no_gallery_row_and_true_writes_both(client):
    outputs = client.app.state.huabu.settings.outputs_dir
    gallery = client.app.state.huabu.queue.runners[0].engine.gallery
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "unsaved pear", **TINY, "save_images": False}
                       ).status_code == 200
    assert gallery.search("unsaved pear") == [] and not list(outputs.rglob("*.png"))
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "saved pear", **TINY, "save_images": True}
                       ).status_code == 200
    assert len(gallery.search("saved pear")) == 1 and len(list(outputs.rglob("*.png"))) == 1
