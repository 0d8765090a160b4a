"""Variation seeds, seed resize and the hires fix on the tiny models: pixels, sizes, infotexts and remakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.core.fields import infotext_mode, infotext_to_request_fields
from huabu.core.pnginfo import parse_infotext
from huabu.core.requests import GenerateRequest
from huabu.engine.hires import hires_size, second_pass_steps
from huabu.engine.noise import batch_noise, slerp


def request(model_store, **fields) -> GenerateRequest:
    base = dict(prompt="a red apple on a blue background", steps=3, width=32, height=32, seed=1234,
                model=str(model_store["folder"]))
    base.update(fields)
    return GenerateRequest.create(**base)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def keys(infotext: str) -> list[str]:
    return list(parse_infotext(infotext))


def remade(engine, infotext: str, model_store) -> Image.Image:
    parsed = parse_infotext(infotext)
    fields = infotext_to_request_fields(parsed)
    fields.update(mode=infotext_mode(parsed), model=str(model_store["folder"]))
    return engine.generate(GenerateRequest.create(**fields)).images[0]


# --- variation seeds -------------------------------------------------------------------------------------------

def test_slerp_ends_are_the_two_noises():
    low, high = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(4, 8, 8)
    assert torch.equal(slerp(1.0, low, high), high)
    assert torch.allclose(slerp(0.0, low, high), low, atol=1e-6)
    middle = slerp(0.5, low, high)
    assert (middle - low).abs().max() > 0.1 and (middle - high).abs().max() > 0.1


def test_variation_strength_0_is_the_seed_and_1_is_the_subseed(engine, model_store):
    plain = engine.generate(request(model_store))
    zero = engine.generate(request(model_store, subseed=99, subseed_strength=0.0))
    assert max_diff(plain.images[0], zero.images[0]) == 0
    assert "Variation seed" not in zero.infotexts[0]
    full = engine.generate(request(model_store, subseed=99, subseed_strength=1.0))
    of_99 = engine.generate(request(model_store, seed=99))
    assert max_diff(full.images[0], of_99.images[0]) == 0
    half = engine.generate(request(model_store, subseed=99, subseed_strength=0.5))
    assert max_diff(half.images[0], plain.images[0]) > 5 and max_diff(half.images[0], of_99.images[0]) > 5
    order = keys(half.infotexts[0])
    assert order.index("Model") < order.index("Variation seed") < order.index("Variation seed strength")
    parsed = parse_infotext(half.infotexts[0])
    assert (parsed["Seed"], parsed["Variation seed"], parsed["Variation seed strength"]) == (1234, 99, 0.5)
    assert max_diff(remade(engine, half.infotexts[0], model_store), half.images[0]) == 0


def test_a_variation_batch_shares_its_seed_and_steps_its_subseed(engine, model_store):
    batch = engine.generate(request(model_store, subseed=7, subseed_strength=0.3, batch_size=2, n_iter=2))
    parsed = [parse_infotext(text) for text in batch.infotexts]
    assert [p["Seed"] for p in parsed] == [1234] * 4
    assert [p["Variation seed"] for p in parsed] == [7, 8, 9, 10]
    assert max_diff(batch.images[0], batch.images[1]) > 5
    random_subseed = engine.generate(request(model_store, subseed_strength=0.3))
    assert random_subseed.request_used.subseed != -1
    assert parse_infotext(random_subseed.infotexts[0])["Variation seed"] == random_subseed.request_used.subseed


def test_seed_resize_centres_the_smaller_noise():
    req = GenerateRequest.create(prompt="x", seed=5, width=32, height=32, seed_resize_from_w=16,
                                 seed_resize_from_h=16)
    noise = batch_noise(req, [5], [], 4, (8, 8), 4, torch.float32)[0]
    small = torch.randn((4, 4, 4), generator=torch.Generator().manual_seed(5))
    full = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(noise[:, 2:6, 2:6], small)
    assert torch.equal(noise[:, :2], full[:, :2])
    bigger = GenerateRequest.create(prompt="x", seed=5, seed_resize_from_w=64, seed_resize_from_h=64)
    large = torch.randn((4, 16, 16), generator=torch.Generator().manual_seed(5))
    assert torch.equal(batch_noise(bigger, [5], [], 4, (8, 8), 4, torch.float32)[0], large[:, 4:12, 4:12])


def test_seed_resize_in_the_infotext_and_the_image(engine, model_store):
    same = engine.generate(request(model_store, seed_resize_from_w=32, seed_resize_from_h=32))
    plain = engine.generate(request(model_store))
    assert max_diff(same.images[0], plain.images[0]) == 0  # drawn at the output's own size: the plain noise
    resized = engine.generate(request(model_store, seed_resize_from_w=16, seed_resize_from_h=16))
    assert parse_infotext(resized.infotexts[0])["Seed resize from"] == "16x16"
    assert max_diff(resized.images[0], plain.images[0]) > 5
    assert max_diff(remade(engine, resized.infotexts[0], model_store), resized.images[0]) == 0


def test_variation_seeds_act_in_img2img(engine, model_store, tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(source)
    base = dict(mode="img2img", init_image=str(source), denoising_strength=0.8)
    plain = engine.generate(request(model_store, **base))
    zero = engine.generate(request(model_store, **base, subseed=3, subseed_strength=0.0))
    assert max_diff(plain.images[0], zero.images[0]) == 0
    varied = engine.generate(request(model_store, **base, subseed=3, subseed_strength=0.7))
    other = engine.generate(request(model_store, **base, subseed=4, subseed_strength=0.7))
    assert max_diff(varied.images[0], other.images[0]) > 5
    assert parse_infotext(varied.infotexts[0])["Variation seed"] == 3


# --- hires fix -----------------------------------------------------------------------------------------------

def test_hires_sizes_follow_a1111():
    def size(**fields):
        req = GenerateRequest.create(prompt="x", width=64, height=48, enable_hr=True, **fields)
        return hires_size(req, 8)

    assert size(hr_scale=2).output == (128, 96)
    assert size(hr_scale=1.5).output == (96, 72)
    assert size(hr_resize_x=128).output == (128, 96)  # one side: the aspect is kept
    assert size(hr_resize_y=96).output == (128, 96)
    both = size(hr_resize_x=128, hr_resize_y=128)  # another aspect: cover, then crop
    assert (both.width, both.height, both.output) == (168, 128, (128, 128))
    assert second_pass_steps(10, 0.5) == 20 and int(second_pass_steps(10, 0.3) * 0.3) == 10


def test_hires_fix_doubles_the_size_and_writes_a1111_fields(engine, model_store):
    steps: list[tuple[int, int]] = []
    result = engine.generate(request(model_store, enable_hr=True, hr_scale=2, hr_second_pass_steps=4,
                                     denoising_strength=0.5, hr_upscaler="Latent"),
                             progress=lambda p: steps.append((p.step, p.steps)))
    image = result.images[0]
    assert image.size == (64, 64)
    assert steps[-1] == (7, 7) and len(steps) == 7  # 3 first-pass steps, then exactly 4 hires steps
    text = result.infotexts[0]
    order = keys(text)
    hires = ["Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler"]
    assert [k for k in order if k in hires] == hires
    assert order.index("Model") < order.index("Denoising strength") < order.index("Hires upscale")
    parsed = parse_infotext(text)
    assert (parsed["Size"], parsed["Hires upscale"], parsed["Hires steps"], parsed["Hires upscaler"],
            parsed["Denoising strength"]) == ("32x32", 2, 4, "Latent", 0.5)
    assert infotext_mode(parsed) == "txt2img"
    assert max_diff(remade(engine, text, model_store), image) == 0
    plain = engine.generate(request(model_store)).images[0]
    upscaled = plain.resize((64, 64), Image.LANCZOS)
    assert max_diff(upscaled, image) > 5  # repainted, not just resized


def test_hires_upscalers_differ_and_resize_crops(engine, model_store):
    base = dict(enable_hr=True, hr_second_pass_steps=2, denoising_strength=0.6)
    latent = engine.generate(request(model_store, **base)).images[0]
    nearest = engine.generate(request(model_store, **base, hr_upscaler="Latent (nearest-exact)")).images[0]
    lanczos = engine.generate(request(model_store, **base, hr_upscaler="Lanczos"))
    assert max_diff(latent, nearest) > 0 and max_diff(latent, lanczos.images[0]) > 0
    assert parse_infotext(lanczos.infotexts[0])["Hires upscaler"] == "Lanczos"
    cropped = engine.generate(request(model_store, **base, hr_resize_x=48, hr_resize_y=32))
    assert cropped.images[0].size == (48, 32)
    assert parse_infotext(cropped.infotexts[0])["Hires resize"] == "48x32"
    assert "Hires upscale" not in parse_infotext(cropped.infotexts[0])


def test_hires_prompt_and_sampler_are_written_when_they_differ(engine, model_store):
    result = engine.generate(request(model_store, enable_hr=True, hr_second_pass_steps=2, denoising_strength=0.6,
                                     hr_prompt="a green pear", hr_sampler="Euler"))
    parsed = parse_infotext(result.infotexts[0])
    assert (parsed["Hires prompt"], parsed["Hires sampler"]) == ("a green pear", "Euler")
    same = engine.generate(request(model_store, enable_hr=True, hr_second_pass_steps=2, denoising_strength=0.6))
    assert max_diff(result.images[0], same.images[0]) > 0
    assert max_diff(remade(engine, result.infotexts[0], model_store), result.images[0]) == 0


def test_a_bad_attention_weight_fails_before_any_step(engine, model_store):
    from huabu.core.errors import PromptSyntaxError

    steps = []
    for fields in ({"prompt": "a (pear:1.2.3)"}, {"negative_prompt": "(blur:0.5.5)"},
                   {"enable_hr": True, "hr_prompt": "a (pear:1.2.3)"},
                   {"enable_hr": True, "hr_negative_prompt": "(x:1..)"}):
        with pytest.raises(PromptSyntaxError, match="is not a number"):
            engine.generate(request(model_store, hr_second_pass_steps=2, denoising_strength=0.6, **fields),
                            progress=steps.append)
    assert steps == []
    # what A1111 keeps as text is no error: a weight-less colon stays a word
    assert engine.generate(request(model_store, enable_hr=True, hr_second_pass_steps=1, denoising_strength=0.6,
                                   hr_prompt="(blur:x)")).images


def test_hires_with_variation_seeds_remakes(engine, model_store):
    result = engine.generate(request(model_store, enable_hr=True, hr_second_pass_steps=2, denoising_strength=0.6,
                                     subseed=11, subseed_strength=0.4))
    assert result.images[0].size == (64, 64)
    assert max_diff(remade(engine, result.infotexts[0], model_store), result.images[0]) == 0


def test_hires_on_sdxl(engine, model_store):
    result = engine.generate(request(model_store, model=str(model_store["sdxl"]), enable_hr=True, hr_scale=1.5,
                                     hr_second_pass_steps=2, denoising_strength=0.6))
    assert result.images[0].size == (48, 48)
    assert parse_infotext(result.infotexts[0])["Hires upscale"] == 1.5


def test_hires_refusals(engine, model_store, tmp_path):
    with pytest.raises(InvalidRequest, match="txt2img option"):
        request(model_store, mode="img2img", init_image="x.png", enable_hr=True)
    with pytest.raises(InvalidRequest, match="unknown upscaler 'Bogus'"):
        engine.generate(request(model_store, enable_hr=True, hr_upscaler="Bogus"))
    with pytest.raises(InvalidRequest, match="9-channel"):
        engine.generate(request(model_store, model=str(model_store["inpaint"]), enable_hr=True))
