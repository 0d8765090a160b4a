"""Inpainting the A1111 way on the tiny model: only masked (crop, inpaint, paste back), masked content 0-3."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from huabu.core.fields import infotext_mode, infotext_to_request_fields
from huabu.core.pnginfo import parse_infotext
from huabu.core.requests import GenerateRequest
from huabu.engine.inpaint_area import fill_masked, fit_box, mask_box


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture
def scene(tmp_path):
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    image.paste((40, 40, 200), (0, 0, 32, 64))
    image.paste((250, 250, 250), (40, 40, 48, 48))  # what the mask hides: "fill" paints it red again
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 48, 48))
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    return image, mask, tmp_path / "in.png", tmp_path / "mask.png"


def request(model_store, scene, **fields) -> GenerateRequest:
    _, _, image, mask = scene
    base = dict(mode="inpaint", prompt="a green leaf", steps=3, seed=3, init_image=str(image), mask=str(mask),
                denoising_strength=0.9, mask_blur=0, model=str(model_store["folder"]))
    base.update(fields)
    return GenerateRequest.create(**base)


def test_crop_boxes_follow_a1111():
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 48, 48))
    assert mask_box(mask, 0) == (40, 40, 48, 48)
    assert mask_box(mask, 20) == (20, 20, 64, 64)  # padding stops at the edges
    assert fit_box((40, 40, 48, 44), 32, 32, 64, 64) == (40, 38, 48, 46)  # grown to the 1:1 generation size
    assert fit_box((56, 0, 64, 8), 64, 32, 64, 64) == (48, 0, 64, 8)  # shifted back inside the image


def test_fill_paints_the_mask_with_the_surroundings(scene):
    image, mask, _, _ = scene
    filled = arr(fill_masked(image, mask))
    assert np.array_equal(filled[mask_array(mask) == 0], arr(image)[mask_array(mask) == 0])
    assert np.abs(filled[44, 44] - np.array([200, 40, 40])).max() <= 30  # red all around the hole


def mask_array(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask)


def test_only_masked_inpaints_a_crop_and_pastes_it_back(engine, model_store, scene):
    image, mask, _, _ = scene
    result = engine.generate(request(model_store, scene, inpaint_full_res=True, inpaint_full_res_padding=4,
                                     width=32, height=32))
    out = arr(result.images[0])
    assert result.images[0].size == (64, 64)
    outside = mask_array(mask) == 0
    assert np.abs(out[outside] - arr(image)[outside]).max() == 0
    assert np.abs(out[40:48, 40:48] - arr(image)[40:48, 40:48]).mean() > 10
    whole = engine.generate(request(model_store, scene, width=64, height=64))
    assert np.abs(arr(whole.images[0])[40:48, 40:48] - out[40:48, 40:48]).mean() > 3
    parsed = parse_infotext(result.infotexts[0])
    assert (parsed["Size"], parsed["Inpaint area"], parsed["Only masked padding"]) == ("32x32", "Only masked", 4)
    assert "Masked content" not in parsed and "Inpaint area" not in whole.infotexts[0]
    fields = infotext_to_request_fields(parsed)
    assert (fields["inpaint_full_res"], fields["inpaint_full_res_padding"]) == (True, 4)
    again = engine.generate(request(model_store, scene, **{**fields, "mode": infotext_mode(parsed),
                                                            "model": str(model_store["folder"])}))
    assert np.array_equal(arr(again.images[0]), out)


def test_masked_content_modes_start_from_different_latents(engine, model_store, scene):
    image, mask, _, _ = scene
    made = {fill: engine.generate(request(model_store, scene, inpainting_fill=fill, denoising_strength=0.6))
            for fill in range(4)}
    inside = [arr(made[fill].images[0])[40:48, 40:48] for fill in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(inside[a] - inside[b]).mean() > 1, (a, b)
    outside = mask_array(mask) == 0
    for fill in range(4):
        assert np.abs(arr(made[fill].images[0])[outside] - arr(image)[outside]).max() <= 2
    names = [parse_infotext(made[fill].infotexts[0]).get("Masked content") for fill in range(4)]
    assert names == ["fill", None, "latent noise", "latent nothing"]
    fields = infotext_to_request_fields(parse_infotext(made[2].infotexts[0]))
    assert fields["inpainting_fill"] == 2
