"""ControlNet on transformer models: SD3ControlNetModel and FluxControlNetModel folders steer tiny random SD3 and
FLUX pipelines through diffusers' own ControlNet pipelines (the same components, built with from_pipe): a unit
changes the picture, weight 0 leaves the base model's pixels, the default ControlNet for a module is the one that
fits the model's family, and what diffusers cannot do is refused in one line before anything runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dit_support import build_tiny_flux, build_tiny_pixart, build_tiny_sd3
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from huabu.core.errors import InvalidRequest
from huabu.core.requests import ControlUnit, GenerateRequest
from huabu.core.settings import Settings

REQUEST = {"steps": 3, "width": 32, "height": 32, "seed": 5, "sampler": "Euler", "prompt": "a red apple"}


def _randomised(net, seed: int):
    """diffusers zero-initialises the blocks a ControlNet adds to the denoiser: random ones make it act."""
    torch.manual_seed(seed)
    for name, param in net.named_parameters():
        if "controlnet_" in name or "pos_embed_input" in name or "controlnet_x_embedder" in name:
            torch.nn.init.normal_(param, std=0.3)
    return net


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from diffusers import FluxControlNetModel, SD3ControlNetModel

    from huabu.engine.generate import Engine

    home = tmp_path_factory.mktemp("dit-controlnet")
    settings = Settings.for_home(home, outputs_dir=home / "outputs", device="cpu", dtype="fp32", hub_offline=True)
    sd3 = build_tiny_sd3(with_t5=False, layers=2)
    flux = build_tiny_flux()
    sd3.save_pretrained(home / "models" / "tiny-sd3")
    flux.save_pretrained(home / "models" / "tiny-flux")
    build_tiny_pixart().save_pretrained(home / "models" / "tiny-pixart")
    nets = settings.controlnet_dir
    _randomised(SD3ControlNetModel.from_transformer(sd3.transformer, num_layers=1, num_extra_conditioning_channels=0,
                                                    load_weights_from_transformer=False), 1
                ).save_pretrained(nets / "sd3-canny")
    _randomised(FluxControlNetModel.from_transformer(flux.transformer, num_layers=1, num_single_layers=1,
                                                     attention_head_dim=16, num_attention_heads=2), 2
                ).save_pretrained(nets / "flux-canny")
    save_file({"zero_convs.0.0.weight": torch.zeros(4, 4, 1, 1)}, nets / "sd3-depth-single.safetensors")
    return Engine(settings)


def _edges() -> str:
    image = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(image).rectangle((6, 6, 25, 25), outline="white", width=2)
    return _data_url(image)


def _data_url(image: Image.Image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def make(engine, model: str, **fields):
    result = engine.generate(GenerateRequest(**{**REQUEST, **fields}, model=model))
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


def unit(**fields) -> ControlUnit:
    return ControlUnit(**{"module": "canny", "image": _edges(), **fields})


@pytest.mark.parametrize("model, net", [("tiny-sd3", "sd3-canny"), ("tiny-flux", "flux-canny")])
def test_a_unit_steers_the_picture_and_weight_zero_leaves_it(engine, model, net):
    base, _ = make(engine, model)
    steered, infotext = make(engine, model, controlnets=[unit()])  # no model named: the family's canny net
    assert np.abs(steered - base).mean() > 2
    assert "ControlNet 0: \"Module: canny, Model: " + net + " [" in infotext
    idle, _ = make(engine, model, controlnets=[unit(weight=0)])
    assert np.abs(idle - base).max() <= 1
    assert np.array_equal(make(engine, model, controlnets=[unit()])[0], steered)
    assert np.array_equal(make(engine, model)[0], base)  # the next request is the plain pipeline again


def test_flux_img2img_and_inpaint_take_a_unit(engine):
    init = _data_url(Image.new("RGB", (32, 32), (200, 40, 40)))
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 23, 23), fill=255)
    for extra in ({"mode": "img2img"}, {"mode": "inpaint", "mask": _data_url(mask)}):
        fields = {**extra, "init_image": init, "denoising_strength": 0.8}
        base, _ = make(engine, "tiny-flux", **fields)
        steered, _ = make(engine, "tiny-flux", controlnets=[unit()], **fields)
        assert np.abs(steered - base).mean() > 1, extra["mode"]


@pytest.mark.parametrize("model, fields, message", [
    ("tiny-sd3", {"mode": "img2img", "init_image": "IMAGE"}, "ControlNet on SD3 models runs txt2img only"),
    ("tiny-sd3", {"controlnets": [unit(control_mode="ControlNet is more important")]},
     "control modes other than Balanced run on UNet ControlNets only; this is a SD3"),
    ("tiny-pixart", {}, "ControlNet units steer SD, SDXL, SD3 and FLUX models only"),
    ("tiny-flux", {"controlnets": [unit(model="sd3-canny")]},
     "ControlNet sd3-canny is a SD3ControlNetModel \\(for SD3 models\\); this FLUX model needs a FluxControlNetModel"),
    ("tiny-sd3", {"controlnets": [unit(model="sd3-depth-single")]},
     "ControlNet sd3-depth-single.safetensors is a single file; SD3 ControlNets load from diffusers folders"),
])
def test_what_diffusers_cannot_do_is_refused_in_one_line(engine, model, fields, message):
    fields = {"controlnets": [unit()], **fields}
    if fields.get("init_image") == "IMAGE":
        fields["init_image"] = _data_url(Image.new("RGB", (32, 32), "gray"))
    with pytest.raises(InvalidRequest, match=message) as caught:
        make(engine, model, **fields)
    assert "\n" not in str(caught.value)
