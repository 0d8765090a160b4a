"""Transformer (DiT) models through Engine.generate: SD3 (with and without T5), FLUX and PixArt-Sigma folders of
tiny random weights (tests/dit_support.py), txt2img / img2img / inpaint, flow-matching samplers, infotexts and
`huabu reproduce`, and one-line errors for what runs on UNet models only."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from dit_support import build_tiny_flux, build_tiny_pixart, build_tiny_sd3
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest

FAST = {"steps": 3, "width": 32, "height": 32, "prompt": "a red apple", "negative_prompt": "blurry"}
DITS = ("tiny-sd3", "tiny-flux", "tiny-pixart")


@pytest.fixture(scope="module")
def dit_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("dit-home")
    models = home / "models"
    build_tiny_sd3().save_pretrained(models / "tiny-sd3")
    build_tiny_sd3(with_t5=False, seed=1).save_pretrained(models / "tiny-sd3-no-t5")
    build_tiny_flux().save_pretrained(models / "tiny-flux")
    build_tiny_pixart().save_pretrained(models / "tiny-pixart")
    return home


@pytest.fixture(scope="module")
def dit_engine(dit_home, tmp_path_factory):
    from huabu.core.settings import Settings
    from huabu.engine.generate import Engine

    settings = Settings.for_home(dit_home, outputs_dir=tmp_path_factory.mktemp("dit-outputs"), model_cache_size=5,
                                 device="cpu", dtype="fp32", hub_offline=True)
    return Engine(settings)


@pytest.fixture(scope="module")
def source_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit-inputs") / "source.png"
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :16] = (220, 40, 40)
    pixels[:, 16:] = (40, 40, 220)
    Image.fromarray(pixels).save(path)
    return path


def make(engine, model: str, **fields):
    return engine.generate(GenerateRequest(**{**FAST, "model": model, "seed": 7, **fields}))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.mark.parametrize("model", DITS)
def test_txt2img_has_the_size_asked_and_the_seed_reproduces_it(dit_engine, model):
    first = make(dit_engine, model, batch_size=2)
    again = make(dit_engine, model, batch_size=2)
    single = make(dit_engine, model, seed=8)
    assert [image.size for image in first.images] == [(32, 32), (32, 32)]
    assert first.seeds == [7, 8]
    assert all(max_diff(a, b) == 0 for a, b in zip(first.images, again.images))
    assert max_diff(first.images[0], first.images[1]) > 30  # another seed, another image
    # image i of a batch is the single image of seed + i (batched matmuls may round one level apart)
    assert max_diff(first.images[1], single.images[0]) <= 1


def test_model_family_comes_from_the_folder(dit_engine, dit_home):
    from huabu.engine.denoisers import folder_family

    models = dit_home / "models"
    assert [folder_family(models / name) for name in (*DITS, "tiny-sd3-no-t5")] == ["sd3", "flux", "pixart", "sd3"]
    info = make(dit_engine, "tiny-flux").model
    assert (info["family"], info["size_multiple"]) == ("flux", 4)  # VAE factor 2 x FLUX's 2x2 packing


def test_sd3_without_t5_loads_and_generates(dit_engine, dit_home):
    index = json.loads((dit_home / "models" / "tiny-sd3-no-t5" / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None]
    result = make(dit_engine, "tiny-sd3-no-t5")
    assert result.images[0].size == (32, 32)
    assert result.model["family"] == "sd3"


def test_default_size_is_sample_size_times_vae_factor_and_sizes_step_by_patches(dit_engine):
    result = dit_engine.generate(GenerateRequest(prompt="x", model="tiny-sd3", steps=2, seed=1))
    assert result.images[0].size == (16, 16)  # sample size 8 x VAE factor 2
    with pytest.raises(InvalidRequest, match=r"width 18 is not a multiple of 4 \(this model's VAE factor x patch"):
        make(dit_engine, "tiny-sd3", width=18)


def test_flow_models_take_euler_and_dpm_2m_and_write_their_names(dit_engine):
    euler = make(dit_engine, "tiny-sd3", sampler="Euler")
    dpm = make(dit_engine, "tiny-sd3", sampler="DPM++ 2M")
    assert "Sampler: Euler, Schedule type: Simple," in euler.infotexts[0]
    assert "Sampler: DPM++ 2M, Schedule type: Simple," in dpm.infotexts[0]
    assert max_diff(euler.images[0], dpm.images[0]) > 0
    flux = make(dit_engine, "tiny-flux", sampler="DPM++ 2M")  # FLUX's shift arrives as mu
    assert max_diff(flux.images[0], make(dit_engine, "tiny-flux", sampler="DPM++ 2M").images[0]) == 0


def test_flow_sampler_table():
    from huabu.core.samplers import scheduler_config
    from huabu.engine.samplers import build_scheduler

    sd3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    assert scheduler_config("Euler", None, sd3)[0] == "FlowMatchEulerDiscreteScheduler"
    name, config = scheduler_config("DPM++ 2M", "Automatic", sd3)
    assert name == "DPMSolverMultistepScheduler"
    assert (config["use_flow_sigmas"], config["flow_shift"], config["prediction_type"]) == (True, 3.0,
                                                                                           "flow_prediction")
    dpm = build_scheduler("DPM++ 2M", None, sd3)
    dpm.set_timesteps(4)
    assert float(dpm.sigmas[0]) == pytest.approx(3.0 * 0.999 / (1 + 2.0 * 0.999), rel=1e-3)
    assert build_scheduler("Euler", "Karras", sd3).config.use_karras_sigmas
    assert scheduler_config("Euler a", None, sd3) == ("FlowMatchEulerDiscreteScheduler",
                                                      {"num_train_timesteps": 1000, "shift": 3.0,
                                                       "stochastic_sampling": True})
    with pytest.raises(InvalidRequest, match="sampler 'DDIM' cannot run on a flow-matching model"):
        build_scheduler("DDIM", None, sd3)
    with pytest.raises(InvalidRequest, match="schedule type 'Karras' is not available with 'DPM\\+\\+ 2M'"):
        scheduler_config("DPM++ 2M Karras", None, sd3)
    # A shift of the user's replaces the model's own, and FLUX's size-dependent one.
    for sampler in ("Euler", "DPM++ 2M"):
        ours, theirs = build_scheduler(sampler, None, sd3, shift=6.0), build_scheduler(sampler, None,
                                                                                        {**sd3, "shift": 6.0})
        ours.set_timesteps(4), theirs.set_timesteps(4)
        assert ours.sigmas.tolist() == theirs.sigmas.tolist()
    flux = {**sd3, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}
    pinned = scheduler_config("Euler", None, flux, shift=2.0)[1]
    assert pinned["base_shift"] == pinned["max_shift"] == pytest.approx(math.log(2.0))
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pinned = build_scheduler("Euler", None, flux, shift=6.0).config
    for tokens in (16, 4096):  # the mu FLUX's pipelines pass, whatever the image size
        mu = calculate_shift(tokens, pinned.base_image_seq_len, pinned.max_image_seq_len, pinned.base_shift,
                             pinned.max_shift)
        assert mu == pytest.approx(math.log(6.0))
    plain, shifted = build_scheduler("Euler", None, flux), build_scheduler("Euler", None, flux, shift=6.0)
    plain.set_timesteps(4, mu=0.0), shifted.set_timesteps(4, mu=math.log(6.0))
    assert shifted.sigmas.tolist() == pytest.approx([6 * t / (1 + 5 * t) for t in plain.sigmas.tolist()])
    with pytest.raises(InvalidRequest, match=r"shift 2 applies to flow-matching models \(SD3, FLUX\) only"):
        scheduler_config("Euler", None, {"_class_name": "EulerDiscreteScheduler"}, shift=2.0)
    # Not flow: the UNet table, unchanged (PixArt-Sigma's DPM-Solver is an epsilon model).
    assert scheduler_config("DPM++ 2M", None, {"prediction_type": "epsilon"})[1]["use_karras_sigmas"]


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_a_shift_changes_the_image_and_is_written(dit_engine, model):
    own = make(dit_engine, model, sampler="Euler")
    shifted = make(dit_engine, model, sampler="Euler", shift=6)
    assert "Shift: 6," in shifted.infotexts[0] and "Shift:" not in own.infotexts[0]
    assert max_diff(own.images[0], shifted.images[0]) > 0
    assert max_diff(make(dit_engine, model, sampler="Euler", shift=6).images[0], shifted.images[0]) == 0


def test_an_xyz_plot_sweeps_the_shift(dit_engine):
    plot = {"x_type": "Shift", "x_values": "1, 6", "include_lone_images": True}
    result = make(dit_engine, "tiny-sd3", sampler="Euler", script={"name": "X/Y/Z plot", "args": plot})
    assert max_diff(result.images[2], make(dit_engine, "tiny-sd3", sampler="Euler", shift=6).images[0]) == 0
    assert max_diff(result.images[1], result.images[2]) > 0 and "Shift: 1," in result.infotexts[1]


def test_a_shift_on_a_model_without_flow_matching_is_refused(dit_engine):
    with pytest.raises(InvalidRequest, match="shift 3 applies to flow-matching models"):
        make(dit_engine, "tiny-pixart", shift=3)


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_euler_a_on_flow_models_repeats_and_differs_from_euler(dit_engine, source_image, model):
    ancestral = make(dit_engine, model, sampler="Euler a", seed=3)
    assert "Sampler: Euler a," in ancestral.infotexts[0]
    assert max_diff(make(dit_engine, model, sampler="Euler a", seed=3).images[0], ancestral.images[0]) == 0
    assert max_diff(make(dit_engine, model, sampler="Euler", seed=3).images[0], ancestral.images[0]) > 0
    assert max_diff(make(dit_engine, model, sampler="Euler a", seed=4).images[0], ancestral.images[0]) > 0
    edited = make(dit_engine, model, sampler="Euler a", seed=3, mode="img2img", init_image=str(source_image))
    assert max_diff(edited.images[0], make(dit_engine, model, sampler="Euler a", seed=3, mode="img2img",
                                           init_image=str(source_image)).images[0]) == 0


def test_unflowed_dit_takes_the_unet_samplers(dit_engine):
    result = make(dit_engine, "tiny-pixart", sampler="DPM++ 2M")
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in result.infotexts[0]
    assert "Sampler: Euler a," in make(dit_engine, "tiny-pixart", sampler="Euler a").infotexts[0]


@pytest.mark.parametrize("model", ("tiny-sd3", "tiny-flux"))
def test_img2img_changes_with_strength_and_reproduces(dit_engine, model, source_image):
    def img2img(strength):
        return make(dit_engine, model, mode="img2img", init_image=str(source_image), denoising_strength=strength,
                    sampler="Euler")

    low, high = img2img(0.4), img2img(0.9)
    assert low.images[0].size == (32, 32)
    assert max_diff(low.images[0], high.images[0]) > 0
    assert max_diff(low.images[0], img2img(0.4).images[0]) == 0
    assert max_diff(high.images[0], make(dit_engine, model, sampler="Euler").images[0]) > 0  # not txt2img
    assert "Denoising strength: 0.4" in low.infotexts[0]


def test_inpaint_repaints_only_the_mask(dit_engine, source_image, tmp_path):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = make(dit_engine, "tiny-sd3", mode="inpaint", init_image=str(source_image), mask=str(tmp_path / "mask.png"),
                  denoising_strength=1.0, mask_blur=0, sampler="Euler")
    out, source = pixels(result.images[0]), pixels(Image.open(source_image).convert("RGB"))
    assert np.abs(out[:4] - source[:4]).max() == 0
    assert np.abs(out[10:22, 10:22] - source[10:22, 10:22]).mean() > 5


@pytest.mark.parametrize("model", ("tiny-sd3", "tiny-flux"))
def test_infotext_reproduces_through_the_cli(dit_home, model, capsys, monkeypatch, tmp_path):
    from huabu.cli.main import main

    monkeypatch.setenv("HUABU_HOME", str(dit_home))
    monkeypatch.setenv("HUABU_DEVICE", "cpu")
    code = main(["generate", "a (red:1.2) apple", "--model", model, "--steps", "3", "--size", "32x32",
                 "--seed", "11", "--sampler", "DPM++ 2M", "--shift", "4", "-o", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 0, err
    made = next(tmp_path.glob("*.png"))
    assert "Shift: 4," in Image.open(made).text["parameters"]
    assert main(["reproduce", str(made)]) == 0
    assert capsys.readouterr().out.startswith("match")


def test_emphasis_is_dropped_with_one_warning(dit_engine, caplog):
    with caplog.at_level(logging.WARNING, logger="huabu.engine.models"):
        weighted = make(dit_engine, "tiny-pixart", prompt="a (red:1.5) apple BREAK [green] leaf", seed=3)
        make(dit_engine, "tiny-pixart", prompt="a (red:0.5) apple", seed=3)
    plain = make(dit_engine, "tiny-pixart", prompt="a red apple green leaf", seed=3)
    assert max_diff(weighted.images[0], plain.images[0]) == 0
    warnings = [r.message for r in caplog.records if "emphasis weights" in r.message]
    assert len(warnings) <= 1  # at most once per model (an earlier test may have warned already)
    assert "a (red:1.5) apple BREAK [green] leaf" in weighted.infotexts[0]  # the infotext keeps what was asked


@pytest.mark.parametrize(("fields", "message"), [
    ({"controlnets": [{"module": "none", "image": "SOURCE"}]}, "module 'none' has no default ControlNet"),
    ({"enable_hr": True, "hr_scale": 2}, "hires fix runs on UNet models only"),
    ({"subseed_strength": 0.5}, "variation seeds"),
    ({"mode": "img2img", "init_image": "SOURCE", "sampler": "DPM++ 2M"}, "img2img and inpaint need 'Euler'"),
    ({"sampler": "DDIM"}, "sampler 'DDIM' cannot run on a flow-matching model"),
])
def test_unet_only_features_fail_with_one_line(dit_engine, source_image, fields, message):
    fields = json.loads(json.dumps(fields).replace("SOURCE", str(source_image)))
    with pytest.raises(InvalidRequest, match=message) as err:
        make(dit_engine, "tiny-sd3", **fields)
    assert "\n" not in str(err.value)


def test_pixart_has_no_img2img(dit_engine, source_image):
    with pytest.raises(InvalidRequest, match="img2img is not available for PixArtSigmaPipeline models"):
        make(dit_engine, "tiny-pixart", mode="img2img", init_image=str(source_image))


def test_progress_is_reported_for_old_callback_pipelines(dit_engine):
    seen = []
    dit_engine.generate(GenerateRequest(**{**FAST, "model": "tiny-pixart", "seed": 1}), progress=seen.append)
    assert [(p.step, p.steps) for p in seen] == [(1, 3), (2, 3), (3, 3)]
