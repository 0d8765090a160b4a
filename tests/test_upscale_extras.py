"""Built-in upscalers: `huabu upscale` and A1111's /extra-single-image and /extra-batch-images."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_support import LOCAL, api_settings, make_app, png_b64

from huabu.cli.main import main
from huabu.core.errors import InvalidRequest
from huabu.engine.upscalers import Upscalers, upscale


def checker() -> Image.Image:
    cells = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([cells, 255 - cells, np.full_like(cells, 80)], -1))


def test_upscale_sizes_crop_and_blend():
    image = checker()
    nearest = upscale(image, (32, 32), "Nearest", Upscalers())
    assert np.array_equal(np.asarray(nearest)[::2, ::2], np.asarray(image))
    lanczos = upscale(image, (32, 32), "Lanczos", Upscalers())
    half = upscale(image, (32, 32), "Nearest", Upscalers(), "Lanczos", 0.5)
    expected = (np.asarray(nearest, dtype=np.float32) + np.asarray(lanczos, dtype=np.float32)) / 2
    assert np.abs(np.asarray(half, dtype=np.float32) - expected).max() <= 1
    wide = upscale(image, (48, 16), "Nearest", Upscalers())  # covers 48x48, keeps the middle rows
    assert wide.size == (48, 16) and np.array_equal(np.asarray(wide), np.asarray(
        image.resize((48, 48), Image.NEAREST))[16:32])


def test_cli_upscale(tmp_path, capsys):
    checker().save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "--scale", "3", "--upscaler", "Nearest", "-o",
                 str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (48, 48)
    assert main(["upscale", str(tmp_path / "in.png"), "--upscaler", "4x-Nope", "-o", str(tmp_path / "x.png")]) == 2
    assert "unknown upscaler '4x-Nope'" in capsys.readouterr().err


@pytest.fixture
def client(engine, model_store, tmp_path):
    app = make_app(api_settings(model_store, tmp_path / "home"), engine)
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def _image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_extras_routes(client):
    single = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(checker()), "upscaling_resize": 2,
                                                                "upscaler_1": "Nearest"})
    assert single.status_code == 200, single.text
    assert _image(single.json()["image"]).size == (32, 32) and single.json()["html_info"] == ""
    sized = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_b64(checker()), "resize_mode": 1, "upscaling_resize_w": 40, "upscaling_resize_h": 24,
        "upscaler_1": "Lanczos", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.3,
        "codeformer_visibility": 1})
    assert _image(sized.json()["image"]).size == (40, 24)
    assert "face restoration: not available" in sized.json()["html_info"]
    batch = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_b64(checker()), "name": "a.png"}] * 2, "upscaling_resize": 1.5})
    assert [_image(text).size for text in batch.json()["images"]] == [(24, 24), (24, 24)]
    too_big = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(checker()), "upscaling_resize": 8,
                                                                 "resize_mode": 1, "upscaling_resize_w": 9000})
    assert too_big.status_code == 400 and "limit" in too_big.text


@pytest.fixture
def model_upscalers(tmp_path):
    """Random compact networks in an upscalers folder: .safetensors, .pth (as Real-ESRGAN ships it, under
    params_ema), and a file of another layout."""
    import torch
    from safetensors.torch import save_file

    from huabu.engine.sr_compact import CompactSR

    folder = tmp_path / "upscalers"
    folder.mkdir()
    torch.manual_seed(0)
    net = CompactSR(features=8, convs=2, scale=2)
    save_file(net.state_dict(), folder / "tiny-compact.safetensors")
    torch.save({"params_ema": net.state_dict()}, folder / "tiny-compact-pth.pth")
    save_file({"conv_first.weight": torch.zeros(4, 3, 3, 3)}, folder / "4x-esrgan.safetensors")
    return folder, net


def test_model_upscalers_load_safely_and_run(model_upscalers):
    import torch

    folder, net = model_upscalers
    upscalers = Upscalers(folder)
    assert {"tiny-compact", "tiny-compact-pth", "4x-esrgan"} <= set(upscalers.names())
    image = checker()
    out = upscalers.get("tiny-compact")(image, (32, 32))
    x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = np.round(net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255)
    assert np.abs(np.asarray(out, dtype=np.float32) - expected).max() <= 1
    assert np.array_equal(np.asarray(out), np.asarray(upscalers.get("tiny-compact-pth")(image, (32, 32))))
    assert upscalers.get("tiny-compact")(image, (48, 40)).size == (48, 40)  # two passes, then Lanczos
    with pytest.raises(InvalidRequest, match="others need spandrel, which needs torchvision"):
        upscalers.get("4x-esrgan")


def test_hires_fix_with_a_model_upscaler(engine, model_store, model_upscalers, monkeypatch):
    from huabu.core.pnginfo import parse_infotext
    from huabu.core.requests import GenerateRequest

    monkeypatch.setattr(engine, "upscalers", Upscalers(model_upscalers[0]))
    result = engine.generate(GenerateRequest.create(
        prompt="a red apple", steps=3, width=32, height=32, seed=2, model=str(model_store["folder"]),
        enable_hr=True, hr_upscaler="tiny-compact", hr_second_pass_steps=2, denoising_strength=0.5))
    assert result.images[0].size == (64, 64)
    assert parse_infotext(result.infotexts[0])["Hires upscaler"] == "tiny-compact"


def test_api_lists_and_uses_model_upscalers(client, model_upscalers, tmp_path):
    (tmp_path / "home" / "upscalers").symlink_to(model_upscalers[0])
    rows = {row["name"]: row for row in client.get("/sdapi/v1/upscalers").json()}
    assert rows["tiny-compact"]["model_path"].endswith("tiny-compact.safetensors")
    assert rows["Lanczos"]["model_path"] is None
    done = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(checker()), "upscaler_1": "tiny-compact"})
    assert done.status_code == 200 and _image(done.json()["image"]).size == (32, 32)
    refused = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(checker()), "upscaler_1": "4x-esrgan"})
    assert refused.status_code == 400 and "spandrel" in refused.text
