"""sd-webui-controlnet's own routes: the version, the models a unit may name (titles that txt2img then takes), the
modules with their sliders, and /controlnet/detect giving what `huabu preprocess` gives."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_support import LOCAL, TINY, api_settings, decode_png, make_app, png_b64


@pytest.fixture
def client(engine, model_store, controlnet_store, tmp_path):
    import torch
    from safetensors.torch import save_file

    ip_adapters = tmp_path / "ip-adapter"
    ip_adapters.mkdir()
    save_file({"image_proj.proj.weight": torch.zeros(4, 4)}, str(ip_adapters / "ip-adapter_sd15.safetensors"))
    settings = api_settings(model_store, tmp_path / "home", controlnet_dir=controlnet_store["canny"].parent,
                            ip_adapter_dir=ip_adapters)
    with TestClient(make_app(settings, engine), base_url=LOCAL) as test_client:
        yield test_client


def _square() -> Image.Image:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (16, 16, 48, 48))
    return image


def test_version_models_and_modules_as_the_extension_lists_them(client):
    assert client.get("/controlnet/version").json() == {"version": 2}
    titles = client.get("/controlnet/model_list").json()["model_list"]
    names = sorted(title.split(" [")[0] for title in titles)
    assert names == ["ip-adapter_sd15", "tiny-canny", "tiny-color"]
    assert all(title.endswith("]") and len(title.split(" [")[1]) == 9 for title in titles)  # name [8 hex digits]
    canny = next(title for title in titles if title.startswith("tiny-canny"))
    unit = {"image": png_b64(_square().resize((32, 32))), "module": "canny", "model": canny}
    made = client.post("/sdapi/v1/txt2img", json={"prompt": "a box", "seed": 1, **TINY,
                                                   "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert made.status_code == 200, made.text  # a listed title is a model a unit can name

    modules = client.get("/controlnet/module_list").json()
    assert {"canny", "openpose", "depth_midas", "softedge", "ip-adapter_clip_sd15", "none"} <= set(
        modules["module_list"])
    sliders = modules["module_detail"]["canny"]["sliders"]
    assert [(s["name"], s["value"]) for s in sliders] == [("Preprocessor Resolution", 512),
                                                          ("Canny Low Threshold", 100), ("Canny High Threshold", 200)]
    assert modules["module_detail"]["none"]["sliders"] == []


def test_detect_gives_the_preprocessors_own_map(client):
    from huabu.engine.control.registry import preprocess

    body = {"controlnet_module": "canny", "controlnet_input_images": [png_b64(_square())] * 2,
            "controlnet_processor_res": 64, "controlnet_threshold_a": 50, "controlnet_threshold_b": 150}
    answer = client.post("/controlnet/detect", json=body)
    assert answer.status_code == 200, answer.text
    maps = [np.asarray(decode_png(text).convert("RGB")) for text in answer.json()["images"]]
    expected = np.asarray(preprocess("canny", _square(), resolution=64, low=50, high=150).convert("RGB"))
    assert len(maps) == 2 and all(np.array_equal(got, expected) for got in maps)
    assert 0 < (expected > 0).mean() < 0.5 and answer.json()["info"] == "Success"  # edges, not a blank map


@pytest.mark.parametrize(("body", "message"), [
    ({"controlnet_module": "ip-adapter_clip_sd15"}, "makes an image embedding, not a map"),
    ({"controlnet_module": "sharpen"}, "unknown preprocessor 'sharpen'"),
    ({"controlnet_module": "glyph"}, "draws words, not an image"),
    ({"controlnet_module": "canny", "controlnet_input_images": []}, "controlnet_input_images is empty"),
    ({"controlnet_module": "canny", "controlnet_input_images": ["not base64!"]}, "controlnet_input_images[0]"),
])
def test_detect_refuses_what_it_cannot_run_in_one_line(client, body, message):
    answer = client.post("/controlnet/detect", json={"controlnet_input_images": [png_b64(_square())], **body})
    assert answer.status_code == 400 and message in answer.json()["detail"], answer.text
