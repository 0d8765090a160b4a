"""Engine.generate on tiny random models: seeds, batches, modes, infotexts, saving, hooks and bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from huabu.core.errors import BadImage, InvalidRequest, ModelNotFound
from huabu.core.requests import GenerateRequest

# A1111's own pattern for the `key: value` pairs of an infotext's last line (modules/infotext_utils.py).
A1111_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def request(model_store, **fields) -> GenerateRequest:
    base = dict(prompt="a red apple on a blue background", steps=3, width=32, height=32, seed=1234,
                model=str(model_store["folder"]))
    base.update(fields)
    return GenerateRequest.create(**base)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def test_same_seed_gives_identical_pixels(engine, model_store):
    first = engine.generate(request(model_store))
    second = engine.generate(request(model_store))
    assert first.seeds == second.seeds == [1234]
    assert max_diff(first.images[0], second.images[0]) == 0
    other = engine.generate(request(model_store, seed=1235))
    assert max_diff(first.images[0], other.images[0]) > 0


def test_batch_image_i_is_the_single_image_of_seed_plus_i(engine, model_store):
    batch = engine.generate(request(model_store, batch_size=3, n_iter=2))
    assert batch.seeds == [1234, 1235, 1236, 1237, 1238, 1239]  # n_iter continues the numbering
    for index in (1, 4):
        single = engine.generate(request(model_store, seed=1234 + index))
        # Batched matrix products may round differently from single ones: at most one level apart.
        assert max_diff(batch.images[index], single.images[0]) <= 1
    assert max_diff(batch.images[0], batch.images[1]) > 10


def test_seeds_past_the_largest_wrap_around_as_recorded(engine, model_store):
    from huabu.core.pnginfo import parse_infotext
    from huabu.core.requests import MAX_SEED

    for sampler in ("Euler", "DPM++ SDE"):  # DPM++ SDE seeds its Brownian noise per image too
        batch = engine.generate(request(model_store, seed=MAX_SEED - 1, batch_size=2, n_iter=2, sampler=sampler))
        assert batch.seeds == [MAX_SEED - 1, MAX_SEED, 0, 1]
        assert [parse_infotext(text)["Seed"] for text in batch.infotexts] == batch.seeds
        single = engine.generate(request(model_store, seed=0, sampler=sampler))  # the recorded seed reproduces it
        assert max_diff(batch.images[2], single.images[0]) <= 1


def test_random_seed_is_picked_and_recorded(engine, model_store):
    result = engine.generate(request(model_store, seed=-1))
    seed = result.seeds[0]
    assert 0 <= seed < 2**32 and result.request_used.seed == seed
    assert f"Seed: {seed}," in result.infotexts[0]
    again = engine.generate(request(model_store, seed=seed))
    assert max_diff(result.images[0], again.images[0]) == 0


def test_infotext_has_a1111_layout_and_reads_back_with_a1111_regex(engine, model_store):
    result = engine.generate(request(model_store, negative_prompt="blurry, dark", sampler="DPM++ 2M Karras",
                                     cfg_scale=6.5, clip_skip=2))
    prompt_line, negative_line, params_line = result.infotexts[0].split("\n")
    assert prompt_line == "a red apple on a blue background"
    assert negative_line == "Negative prompt: blurry, dark"
    pairs = [(k, v) for k, v in A1111_PARAM_RE.findall(params_line)]
    keys = [k for k, _ in pairs]
    assert keys == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
                    "Clip skip", "Version"]
    values = dict(pairs)
    assert values["Sampler"] == "DPM++ 2M" and values["Schedule type"] == "Karras"
    assert values["CFG scale"] == "6.5" and values["Size"] == "32x32" and values["Clip skip"] == "2"
    assert re.fullmatch(r"[0-9a-f]{10}", values["Model hash"]) and values["Model"] == "tiny-sd"
    assert values["Version"] == '"huabu 0.1.0"' or values["Version"].startswith("huabu ")


def test_default_size_is_the_models(engine, model_store):
    result = engine.generate(request(model_store, width=None, height=None, steps=2))
    assert result.images[0].size == (32, 32)  # UNet sample_size 8 x VAE factor 4
    assert result.model["default_size"] == 32 and result.model["vae_scale_factor"] == 4


def test_size_must_be_a_multiple_of_the_vae_factor(engine, model_store):
    with pytest.raises(InvalidRequest, match=r"^width 34 is not a multiple of 4 .*use 32 or 36$"):
        engine.generate(request(model_store, width=34))


def test_f8_model_works_and_checks_multiples_of_8(engine, model_store):
    result = engine.generate(request(model_store, model=str(model_store["f8"]), width=64, height=64, steps=2))
    assert result.images[0].size == (64, 64) and result.model["vae_scale_factor"] == 8
    with pytest.raises(InvalidRequest, match="multiple of 8"):
        engine.generate(request(model_store, model=str(model_store["f8"]), width=60, height=64, steps=2))


@pytest.fixture(scope="module")
def source_image(tmp_path_factory):
    rng = np.random.default_rng(0)
    array = np.zeros((32, 32, 3), np.uint8)
    array[..., 2] = 200
    array[8:24, 8:24] = [220, 30, 30]
    array += rng.integers(0, 20, array.shape, dtype=np.uint8)
    path = tmp_path_factory.mktemp("inputs") / "source.png"
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def mask_image(source_image):
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255  # repaint the right half
    path = source_image.with_name("mask.png")
    Image.fromarray(mask).save(path)
    return path


def test_img2img_differs_from_txt2img_and_strength_matters(engine, model_store, source_image):
    txt = engine.generate(request(model_store, steps=4))
    weak = engine.generate(request(model_store, mode="img2img", init_image=str(source_image), steps=4,
                                   denoising_strength=0.3))
    strong = engine.generate(request(model_store, mode="img2img", init_image=str(source_image), steps=4,
                                     denoising_strength=0.9))
    assert max_diff(weak.images[0], txt.images[0]) > 10
    assert max_diff(weak.images[0], strong.images[0]) > 10
    assert "Denoising strength: 0.3" in weak.infotexts[0]
    again = engine.generate(request(model_store, mode="img2img", init_image=str(source_image), steps=4,
                                    denoising_strength=0.3))
    assert max_diff(weak.images[0], again.images[0]) == 0
    with pytest.raises(InvalidRequest, match="leaves no step to run"):
        engine.generate(request(model_store, mode="img2img", init_image=str(source_image), steps=3,
                                denoising_strength=0.3))


def test_img2img_takes_its_size_from_the_image(engine, model_store, tmp_path):
    path = tmp_path / "odd.png"
    Image.new("RGB", (42, 37), (10, 200, 30)).save(path)
    result = engine.generate(request(model_store, mode="img2img", init_image=str(path), width=None, height=None,
                                     steps=2))
    assert result.images[0].size == (40, 36)  # rounded down to the VAE factor 4


@pytest.mark.parametrize("model_key", ["folder", "inpaint"])
def test_inpaint_keeps_unmasked_pixels_and_repaints_masked(engine, model_store, source_image, mask_image,
                                                           model_key):
    result = engine.generate(request(model_store, model=str(model_store[model_key]), mode="inpaint",
                                     init_image=str(source_image), mask=str(mask_image), denoising_strength=1.0,
                                     mask_blur=0))
    out, original = pixels(result.images[0]), pixels(Image.open(source_image))
    assert np.abs(out[:, :16] - original[:, :16]).max() <= 1  # kept
    assert np.abs(out[:, 16:] - original[:, 16:]).mean() > 20  # repainted
    assert "Mask blur: 0" in result.infotexts[0] and "Denoising strength: 1" in result.infotexts[0]


def test_nine_channel_unet_runs_txt2img_and_img2img(engine, model_store, source_image):
    loaded = engine.models.load(str(model_store["inpaint"]))
    assert loaded.is_inpaint_unet
    txt = engine.generate(request(model_store, model=str(model_store["inpaint"])))
    img = engine.generate(request(model_store, model=str(model_store["inpaint"]), mode="img2img",
                                  init_image=str(source_image), denoising_strength=0.5))
    assert txt.images[0].size == img.images[0].size == (32, 32)
    assert max_diff(txt.images[0], img.images[0]) > 10
    assert {key.kind for key in loaded.pipelines} == {"inpaint"}  # every mode ran in the one inpaint pipeline


def test_mask_must_match_the_image(engine, model_store, source_image, tmp_path):
    small = tmp_path / "small-mask.png"
    Image.new("L", (16, 16), 255).save(small)
    with pytest.raises(InvalidRequest, match=r"^the mask is 16x16 but the image is 32x32"):
        engine.generate(request(model_store, mode="inpaint", init_image=str(source_image), mask=str(small)))


def test_unreadable_image_names_the_file(engine, model_store, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(BadImage, match=r"^cannot read image .*notes\.png: not an image"):
        engine.generate(request(model_store, mode="img2img", init_image=str(text)))
    with pytest.raises(BadImage, match="image file not found"):
        engine.generate(request(model_store, mode="img2img", init_image=str(tmp_path / "missing.png")))


def unet_conditioning(engine, model_store, prompt: str) -> list:
    """The text embeddings the UNet received at each sampling step (captured with a forward pre-hook)."""
    unet = engine.models.load(str(model_store["folder"])).pipeline.unet
    seen = []
    handle = unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        engine.generate(request(model_store, prompt=prompt, steps=4, sampler="Euler"))
    finally:
        handle.remove()
    return seen


def test_prompt_editing_switches_conditioning_during_sampling(engine, model_store):
    red = unet_conditioning(engine, model_store, "red ball")
    blue = unet_conditioning(engine, model_store, "blue ball")
    edited = unet_conditioning(engine, model_store, "[red:blue:2] ball")
    assert len(edited) == 4
    # A1111 counts steps from 0 and keeps "red" while step <= 2: three steps of red, then blue.
    assert [torch.equal(c, red[0]) for c in edited] == [True, True, True, False]
    assert torch.equal(edited[3], blue[0])
    assert not torch.equal(red[0], blue[0])
    alternating = unet_conditioning(engine, model_store, "[red|blue] ball")
    # A1111's alternation schedule ends "red" at step 1, "blue" at 2, "red" at 3: red, red, blue, red.
    assert [torch.equal(c, red[0]) for c in alternating] == [True, True, False, True]
    assert torch.equal(alternating[2], blue[0])


def test_progress_and_interrupt(engine, model_store):
    seen = []
    result = engine.generate(request(model_store, steps=4, n_iter=2), progress=seen.append)
    assert [(p.iteration, p.step) for p in seen] == [(i, s) for i in range(2) for s in range(1, 5)]
    assert all(p.steps == 4 and p.total_images == 2 for p in seen)
    assert not result.interrupted

    calls = []
    stopped = engine.generate(request(model_store, steps=4, n_iter=3),
                              interrupt=lambda: calls.append(1) or len(calls) >= 2)
    assert stopped.interrupted and len(stopped.images) == 1  # later iterations never ran
    assert len(calls) == 2  # diffusers skips the remaining steps (and their callbacks) once _interrupt is set


def test_save_writes_pngs_and_indexes_them(engine, model_store, tmp_path):
    from huabu.core.pnginfo import read_parameters

    outdir = tmp_path / "new" / "folder"
    result = engine.generate(request(model_store, batch_size=2, prompt="a green cube"), save=True, outdir=outdir)
    assert [p.name for p in result.paths] == ["00000-1234.png", "00001-1235.png"]
    for path, infotext, image in zip(result.paths, result.infotexts, result.images):
        assert read_parameters(path) == infotext
        assert max_diff(Image.open(path), image) == 0
    assert not [p for p in outdir.iterdir() if p.name.startswith(".")]  # no temp files left
    found = engine.gallery.search("green cube")
    assert {item.path for item in found} >= {str(p) for p in result.paths}
    assert {item.params["Seed"] for item in found} >= {1234, 1235}


def test_a_failed_save_leaves_no_reserved_file(engine, model_store, tmp_path, monkeypatch):
    import huabu.core.pnginfo

    def disk_full(image, path, parameters):
        raise OSError(28, "No space left on device")

    outdir = tmp_path / "out"
    monkeypatch.setattr(huabu.core.pnginfo, "save_png_atomic", disk_full)
    with pytest.raises(OSError, match="No space left"):
        engine.generate(request(model_store), save=True, outdir=outdir)
    assert list(outdir.iterdir()) == []
    monkeypatch.undo()
    saved = engine.generate(request(model_store), save=True, outdir=outdir)
    assert [p.name for p in saved.paths] == ["00000-1234.png"]  # the number is free again


def test_styles_apply_before_encoding(engine, model_store):
    from huabu.engine.prompts.book import load_book

    book = load_book()
    style = next(iter(book.styles.values()))
    plain = engine.generate(request(model_store, prompt="a cat"))
    styled = engine.generate(request(model_store, prompt="a cat", styles=[style.name]))
    assert styled.infotexts[0].split("\n")[0] != "a cat"
    assert max_diff(plain.images[0], styled.images[0]) > 0


def test_lora_tags_are_taken_out_validated_and_hashed(engine, model_store, settings):
    with pytest.raises(ModelNotFound, match="LoRA 'nosuch' not found"):
        engine.generate(request(model_store, prompt="a cat <lora:nosuch:0.8>"))
    import torch
    from safetensors.torch import save_file

    settings.loras_dir.mkdir(parents=True, exist_ok=True)
    lora = settings.loras_dir / "tinystyle.safetensors"
    key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"  # a zero LoRA: changes nothing
    save_file({f"{key}.lora_down.weight": torch.zeros(2, 64), f"{key}.lora_up.weight": torch.zeros(64, 2)}, lora)
    result = engine.generate(request(model_store, prompt="a cat <lora:tinystyle:0.8>"))
    digest = engine.models.hashes.sha256(lora, kind="sshs")[:12]  # A1111's: sha256 of the tensors after the header
    assert f'Lora hashes: "tinystyle: {digest}"' in result.infotexts[0]
    assert result.infotexts[0].startswith("a cat <lora:tinystyle:0.8>\n")  # A1111 keeps the tag in the prompt
    plain = engine.generate(request(model_store, prompt="a cat "))
    assert max_diff(plain.images[0], result.images[0]) == 0  # the tag text itself never reaches the encoder


def test_controlnet_units_need_an_image_and_disabled_ones_are_skipped(engine, model_store):
    # ControlNet itself is tested in test_controlnet_engine.py.
    with pytest.raises(InvalidRequest, match="ControlNet unit 0 \\(canny\\) has no image"):
        engine.generate(request(model_store, controlnets=[{"module": "canny", "model": "x"}]))
    result = engine.generate(request(model_store, steps=2, controlnets=[{"enabled": False}]))
    assert len(result.images) == 1 and "ControlNet" not in result.infotexts[0]


def test_fp16_vae_overflow_is_decoded_again_in_fp32():
    from types import SimpleNamespace

    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor

    from huabu.engine.pipelines import decode_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[16, 32], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8, force_upcast=False)
    with torch.no_grad():
        vae.decoder.conv_out.weight.fill_(4000.0)  # finite in fp16, but sums past fp16's 65504
    vae = vae.to(torch.float16)
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert not torch.isfinite(vae.decode(latents.half() / vae.config.scaling_factor).sample).all()
    pipe = SimpleNamespace(vae=vae, image_processor=VaeImageProcessor(vae_scale_factor=2))
    images, upcast = decode_latents(pipe, latents)
    assert upcast and images[0].size == (16, 16)
    assert np.asarray(images[0]).std() > 0  # a real picture, not a NaN-black one
    assert vae.dtype == torch.float16  # cast back: pipelines encode init images in the model's dtype
    again, upcast = decode_latents(pipe, latents, force_fp32=True)
    assert upcast and np.array_equal(np.asarray(again[0]), np.asarray(images[0]))


def test_sdxl_pipelines_run_every_mode_with_pooled_embeddings(engine, model_store, source_image, mask_image):
    sdxl = str(model_store["sdxl"])
    first = engine.generate(request(model_store, model=sdxl))
    again = engine.generate(request(model_store, model=sdxl))
    assert first.model["family"] == "sdxl" and max_diff(first.images[0], again.images[0]) == 0
    edited = engine.generate(request(model_store, model=sdxl, prompt="[red:blue:1] apple"))  # swaps pooled too
    assert max_diff(edited.images[0], first.images[0]) > 0
    img = engine.generate(request(model_store, model=sdxl, mode="img2img", init_image=str(source_image), steps=4,
                                  denoising_strength=0.5))
    inp = engine.generate(request(model_store, model=sdxl, mode="inpaint", init_image=str(source_image),
                                  mask=str(mask_image), mask_blur=0))
    assert img.images[0].size == inp.images[0].size == (32, 32)
    loaded = engine.models.load(sdxl)
    assert {type(p).__name__ for p in loaded.pipelines.values()} == {
        "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"}
    assert all(p.text_encoder_2 is loaded.pipeline.text_encoder_2 for p in loaded.pipelines.values())
