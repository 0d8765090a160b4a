"""Memory and speed switches (Settings.offload, vae_tiling, attention_slicing, dtype fp8, compile) on the tiny SD
pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.engine.generate import Engine


def _image(settings, model_store, **changes) -> np.ndarray:
    engine = Engine(settings.with_(**changes))
    request = GenerateRequest.create(prompt="a red apple", steps=3, width=32, height=32, seed=7,
                                     model=str(model_store["folder"]))
    return np.asarray(engine.generate(request).images[0], dtype=np.int16)


def test_slicing_and_tiling_keep_the_image_and_are_set_on_the_shared_modules(settings, model_store):
    plain = _image(settings, model_store)
    engine = Engine(settings.with_(attention_slicing=True, vae_tiling=True))
    loaded = engine.models.load(str(model_store["folder"]))
    assert loaded.pipeline.vae.use_tiling
    processors = {type(p).__name__ for p in loaded.pipeline.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}
    request = GenerateRequest.create(prompt="a red apple", steps=3, width=32, height=32, seed=7,
                                     model=str(model_store["folder"]), mode="txt2img")
    sliced = np.asarray(engine.generate(request).images[0], dtype=np.int16)
    assert np.abs(sliced - plain).max() <= 1  # the same image: slicing and (untriggered) tiling change no math


def test_fp8_stores_the_unet_in_float8_and_stays_close(settings, model_store):
    import torch

    engine = Engine(settings.with_(dtype="fp8"))
    loaded = engine.models.load(str(model_store["folder"]))
    weights = {p.dtype for name, p in loaded.pipeline.unet.named_parameters() if name.endswith("to_q.weight")}
    assert weights == {torch.float8_e4m3fn}
    plain = _image(settings, model_store)
    fp8 = _image(settings, model_store, dtype="fp8")
    assert 0 < np.abs(fp8 - plain).mean() < 20  # rounded weights: a slightly different, not a broken, image


def test_compile_compiles_the_unet_in_place_once_per_loaded_pipeline(settings, model_store):
    from diffusers import UNet2DConditionModel

    loaded = Engine(settings.with_(compile=True)).models.load(str(model_store["folder"]))
    unet = loaded.pipeline.unet
    assert isinstance(unet, UNet2DConditionModel) and unet._compiled_call_impl is not None
    plain = Engine(settings).models.load(str(model_store["folder"])).pipeline.unet
    assert plain._compiled_call_impl is None


def test_compile_freezes_weights_and_drops_python_between_kernels_on_a_cpu_only():
    import torch

    from huabu.engine.memory import compile_options

    assert compile_options(torch.device("cpu")) == {"freezing": True, "cpp_wrapper": True}
    assert compile_options(torch.device("cuda")) == {}


@pytest.mark.slow
def test_a_compiled_unet_draws_the_same_image(settings, model_store):
    plain = _image(settings, model_store)
    compiled = _image(settings, model_store, compile=True)
    assert np.abs(compiled - plain).max() <= 2  # inductor reorders float sums: within rounding


def test_offload_without_a_gpu_is_refused_in_one_line(settings, model_store):
    engine = Engine(settings.with_(offload="model"))
    with pytest.raises(InvalidRequest, match="no GPU here") as err:
        engine.models.load(str(model_store["folder"]))
    assert "\n" not in str(err.value)
    with pytest.raises(InvalidRequest, match="offload must be one of"):
        settings.with_(offload="disk")


@pytest.mark.parametrize("command", ["serve", "worker", "studio"])
def test_serve_worker_and_studio_take_the_memory_flags(command, monkeypatch, tmp_path):
    from huabu.cli.main import build_parser
    from huabu.cli.options import settings_from_args

    monkeypatch.setenv("HUABU_HOME", str(tmp_path))
    extra = ["--broker", "redis://127.0.0.1:1/0"] if command == "worker" else []
    args = build_parser().parse_args([command, *extra, "--offload", "model", "--vae-tiling", "--attention-slicing",
                                      "--dtype", "fp8", "--compile"])
    settings = settings_from_args(args)
    assert (settings.offload, settings.vae_tiling, settings.attention_slicing, settings.dtype, settings.compile) == \
        ("model", True, True, "fp8", True)
    plain = settings_from_args(build_parser().parse_args([command, *extra]))
    assert (plain.offload, plain.vae_tiling, plain.attention_slicing) == ("none", False, False)
