"""The shipped huabu-tiny: a standard diffusers folder that follows prompts, and an identical single-file export."""

from pathlib import Path

import numpy as np
import pytest

from huabu.engine.models import BUILTIN_DIR, builtin_has_weights

pytestmark = pytest.mark.skipif(not builtin_has_weights(), reason="huabu-tiny weights are not in this checkout")


def test_folder_is_small_and_loads_with_plain_diffusers():
    import torch
    from diffusers import StableDiffusionPipeline

    size = sum(p.stat().st_size for p in BUILTIN_DIR.rglob("*") if p.is_file())
    assert size < 60e6
    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_DIR, local_files_only=True, dtype=torch.float32)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size * 4 == 64


def test_builtin_model_follows_the_prompt(engine):
    from huabu.core.requests import GenerateRequest
    from huabu.tiny.measure import background_colour

    result = engine.generate(GenerateRequest.create(prompt="a red apple on a blue background", seed=0, steps=20,
                                                    batch_size=2))
    assert result.images[0].size == (64, 64)
    assert [background_colour(np.asarray(im))[0] for im in result.images] == ["blue", "blue"]


def test_single_file_export_gives_the_same_image(engine, tmp_path: Path):
    from huabu.core.requests import GenerateRequest
    from huabu.engine.convert import export_single_file

    single = export_single_file(BUILTIN_DIR, tmp_path / "huabu-tiny.safetensors", config_name="huabu-tiny")
    images = []
    for model in ("huabu-tiny", str(single)):
        result = engine.generate(GenerateRequest.create(prompt="a rocket at the top on a black background",
                                                        model=model, seed=3, steps=8))
        images.append(np.asarray(result.images[0]))
    assert result.model["kind"] == "single-file"
    assert np.array_equal(images[0], images[1])


def test_shipped_glyph_controlnet_writes_the_quoted_word_where_asked(engine):
    from huabu.core.requests import GenerateRequest
    from huabu.engine.ocr import read_box

    box = [40, 8, 120, 40]
    request = GenerateRequest.create(prompt='a cat on the left and the words "画布" at the top on a blue background',
                                     width=128, height=128, seed=0, steps=20, cfg_scale=5.0,
                                     controlnets=[{"module": "glyph"}], text_boxes=[box])
    result = engine.generate(request)  # no model named: huabu-tiny's shipped glyph ControlNet
    assert "huabu-tiny-controlnet-glyph" in result.infotexts[0]
    assert read_box(result.images[0], box) == "画布"
    unguided = engine.generate(request.model_copy(update={"controlnets": [], "text_boxes": []}))
    assert read_box(unguided.images[0], box) != "画布"


def test_shipped_ip_adapter_brings_the_reference_object_without_a_name(engine):
    from huabu.core.requests import GenerateRequest
    from huabu.tiny import ip_adapter_scenes as IS
    from huabu.tiny.eval_control import png_data_url
    from huabu.tiny.eval_ip_adapter import eval_cases, read
    from huabu.tiny.ship import ip_adapter_folder

    own = ip_adapter_folder(BUILTIN_DIR)
    assert sum(p.stat().st_size for p in own.rglob("*") if p.is_file()) < 10e6
    hits = {True: 0, False: 0}
    for index, (scene, reference) in enumerate(eval_cases(6, 3333, unseen=False)):
        placed = scene.objects[0]
        for adapter in (True, False):
            request = GenerateRequest.create(
                prompt=IS.nameless_caption(scene.background, placed.position), seed=index, steps=20, cfg_scale=5.0,
                ip_adapters=[{"image": png_data_url(reference)}] if adapter else [])  # no model named
            result = engine.generate(request)
            hits[adapter] += read(np.asarray(result.images[0]), placed.size)[2] == placed.obj
            if adapter:
                assert "Model: ip-adapter_huabu-tiny [" in result.infotexts[0]
    assert hits[True] >= 2 and hits[False] == 0  # the prompt never names the object: only the reference brings it


def test_huabu_tiny_vae_keeps_colours_beyond_64_px_on_its_own_tile_size(engine):
    import torch

    from huabu.tiny import scenes
    from huabu.tiny.train_sr import scene_pair

    vae = engine.models.load(None).pipeline.vae
    assert vae.use_tiling and vae.tile_sample_min_size == 64

    def round_trip_error(image: np.ndarray) -> float:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        return float(np.abs((y[0].permute(1, 2, 0).numpy() + 1) * 127.5 - image).mean())

    small, large = scene_pair(scenes.eval_single_scenes(1)[0])
    tiled = round_trip_error(large)
    vae.disable_tiling()
    try:
        whole, whole_small = round_trip_error(large), round_trip_error(small)
    finally:
        vae.enable_tiling()
    assert round_trip_error(small) == whole_small  # 64 px images are never tiled
    assert tiled < 0.7 * whole and tiled < 1.3 * whole_small
