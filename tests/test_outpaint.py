"""Outpainting on the tiny model: the grown canvas, the kept region, the infotext, CLI and A1111 scripts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_support import LOCAL, api_settings, decode_png, make_app, png_b64

from huabu.cli.main import main
from huabu.core.errors import InvalidRequest
from huabu.core.pnginfo import parse_infotext, read_parameters
from huabu.core.requests import GenerateRequest
from huabu.engine.inpaint_area import outpaint_canvas


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def source() -> Image.Image:
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    image.paste((40, 40, 200), (0, 0, 16, 32))
    return image


def test_canvas_grows_with_the_edges_stretched():
    canvas, mask = outpaint_canvas(source(), (8, 4, 0, 12))
    assert canvas.size == mask.size == (44, 44)
    assert np.array_equal(arr(canvas)[0:32, 8:40], arr(source()))
    assert tuple(arr(canvas)[40, 0]) == (40, 40, 200) and tuple(arr(canvas)[40, 43]) == (200, 40, 40)
    hard = np.asarray(mask)
    assert hard[:32, 8:40].max() == 0 and hard[:, :8].min() == 255 and hard[32:].min() == 255


@pytest.mark.parametrize("fill", [0, 1, 2])
def test_outpainting_keeps_the_original_and_paints_the_border(engine, model_store, tmp_path, fill):
    path = tmp_path / "in.png"
    source().save(path)
    result = engine.generate(GenerateRequest.create(
        mode="inpaint", prompt="a red apple", init_image=str(path), outpaint_left=16, outpaint_right=16,
        steps=3, seed=2, denoising_strength=0.9, mask_blur=4, inpainting_fill=fill, model=str(model_store["folder"])))
    out = arr(result.images[0])
    assert result.images[0].size == (64, 32)
    assert np.abs(out[:, 16:48] - arr(source())).max() <= 2
    stretched = arr(outpaint_canvas(source(), (16, 16, 0, 0))[0])
    assert np.abs(out[:, :16] - stretched[:, :16]).mean() > 5  # painted, not just the stretched edge
    assert parse_infotext(result.infotexts[0])["Outpaint"] == "left 16 right 16 up 0 down 0"


def test_outpaint_from_the_cli_reproduces(huabu_env, capsys, tmp_path):
    source().save(tmp_path / "in.png")
    code = main(["outpaint", "a red apple", "--image", str(tmp_path / "in.png"), "--left", "16", "--right", "16",
                 "--up", "0", "--down", "8", "--steps", "3", "--seed", "6", "--model", "tiny-sd", "-o",
                 str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    made = tmp_path / "out" / "00000-6.png"
    image = Image.open(made)
    assert image.size == (64, 40)
    assert np.abs(arr(image)[0:32, 16:48] - arr(source())).max() <= 2
    parsed = parse_infotext(read_parameters(made))
    assert (parsed["Outpaint"], parsed["Masked content"]) == ("left 16 right 16 up 0 down 8", "fill")
    capsys.readouterr()
    assert main(["reproduce", str(made), "--image", str(tmp_path / "in.png")]) == 0
    assert capsys.readouterr().out == "match\n"


def test_outpainting_needs_inpaint_mode_without_a_mask():
    with pytest.raises(InvalidRequest, match="outpainting is inpaint mode without a mask"):
        GenerateRequest.create(mode="img2img", init_image="x.png", outpaint_left=8)


@pytest.fixture
def client(engine, model_store, tmp_path):
    app = make_app(api_settings(model_store, tmp_path / "home"), engine)
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


@pytest.mark.parametrize("script, args, fill", [
    ("Poor man's outpainting", [16, 4, 0, ["left", "up"]], "fill"),
    ("Outpainting mk2", ["", 16, 4, ["left", "up"], 1.0, 0.05], "latent noise"),
])
def test_a1111_outpainting_scripts(client, script, args, fill):
    payload = {"prompt": "a red apple", "init_images": [png_b64(source())], "steps": 3, "seed": 3, "width": 512,
               "height": 512, "denoising_strength": 0.9, "script_name": script, "script_args": args,
               "override_settings": {"sd_model_checkpoint": "tiny-sd"}}
    response = client.post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["warnings"] == []
    image = decode_png(response.json()["images"][0])
    assert image.size == (48, 48)
    assert np.abs(arr(image)[16:, 16:] - arr(source())).max() <= 2
    parsed = parse_infotext(info["infotexts"][0])
    assert (parsed["Outpaint"], parsed["Masked content"]) == ("left 16 right 0 up 16 down 0", fill)


def test_a1111_outpainting_script_with_bad_directions_is_a_400(client):
    response = client.post("/sdapi/v1/img2img", json={
        "prompt": "x", "init_images": [png_b64(source())], "steps": 1, "script_name": "Poor man's outpainting",
        "script_args": [8, 4, 1, ["sideways"]], "override_settings": {"sd_model_checkpoint": "tiny-sd"}})
    assert response.status_code == 400 and "unknown direction(s) sideways" in response.text
