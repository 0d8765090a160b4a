"""IP-Adapter image prompts on the session's tiny model: random tiny IP-Adapters (original-layout safetensors) and
a tiny CLIP vision encoder in both folder layouts, through the engine, the CLI (generate, reproduce) and the A1111
API (sd-webui-controlnet units), with the infotext read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from huabu.core.errors import BadImage, InvalidRequest, ModelNotFound, UnsafeCheckpoint
from huabu.core.pnginfo import parse_infotext
from huabu.core.requests import GenerateRequest

FAST = dict(prompt="a red apple on a blue background", steps=2, width=32, height=32, seed=7, model="tiny-sd")


def build_tiny_ip_adapter(unet, seed: int) -> dict:
    """Random IP-Adapter weights in the original single-file layout for `unet`: `image_proj.*` (4 image tokens from
    a 32-wide CLIP image embedding) and `ip_adapter.N.to_{k,v}_ip.weight` for each cross-attention layer, numbered as
    the original (odd N, in UNet order)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    state = {"image_proj.proj.weight": torch.randn(width * 4, 32, generator=generator) * 0.5,
             "image_proj.proj.bias": torch.zeros(width * 4),
             "image_proj.norm.weight": torch.ones(width), "image_proj.norm.bias": torch.zeros(width)}
    key_id, channels = 1, unet.config.block_out_channels
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        for kind in ("k", "v"):
            state[f"ip_adapter.{key_id}.to_{kind}_ip.weight"] = torch.randn(hidden, width, generator=generator) * 0.5
        key_id += 2
    return state


def build_tiny_image_encoder(seed: int = 5):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8))


@pytest.fixture(scope="module")
def ip_store(model_store) -> dict[str, Path]:
    """The session home's IP-Adapter folder: "folder" (diffusers' load_ip_adapter layout: sd15/ with its
    image_encoder/ and weights), "flat" (a single file at the top, sharing the top image_encoder/); outside it
    "pickle" (a torch pickle named .safetensors) and "sdxl" (weights for another text width)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    home = model_store["home"]
    root = home / "ip-adapter"
    unet = UNet2DConditionModel.from_pretrained(model_store["folder"] / "unet")
    encoder = build_tiny_image_encoder()
    (root / "sd15").mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(root / "sd15" / "image_encoder")
    encoder.save_pretrained(root / "image_encoder")
    save_file(build_tiny_ip_adapter(unet, 1), root / "sd15" / "ip-adapter_tiny.safetensors")
    save_file(build_tiny_ip_adapter(unet, 2), root / "ip-adapter_tiny_flat.safetensors")
    elsewhere = home / "elsewhere" / "ip"
    elsewhere.mkdir(parents=True, exist_ok=True)
    torch.save(build_tiny_ip_adapter(unet, 3), elsewhere / "evil.safetensors")
    sdxl_unet = UNet2DConditionModel.from_pretrained(model_store["sdxl"] / "unet")
    save_file(build_tiny_ip_adapter(sdxl_unet, 4), elsewhere / "ip-adapter_sdxl_tiny.safetensors")
    return {"root": root, "folder": root / "sd15" / "ip-adapter_tiny.safetensors",
            "flat": root / "ip-adapter_tiny_flat.safetensors", "pickle": elsewhere / "evil.safetensors",
            "sdxl": elsewhere / "ip-adapter_sdxl_tiny.safetensors"}


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("ip-refs")
    paths = []
    for index, (background, shape) in enumerate((((30, 60, 200), (240, 220, 20)), ((200, 30, 30), (20, 220, 90)))):
        image = Image.new("RGB", (48, 40), background)
        ImageDraw.Draw(image).ellipse((8, 6, 34, 32), fill=shape)
        paths.append(str(folder / f"ref{index}.png"))
        image.save(paths[-1])
    return paths


def request(**fields) -> GenerateRequest:
    return GenerateRequest.create(**{**FAST, **fields})


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def test_image_prompt_steers_by_weight_and_leaves_the_model_as_it_was(engine, ip_store, references):
    base = engine.generate(request()).images[0]
    spec = {"image": references[0], "model": "sd15/ip-adapter_tiny"}
    full = engine.generate(request(ip_adapters=[spec]))
    half = engine.generate(request(ip_adapters=[{**spec, "weight": 0.5}])).images[0]
    zero = engine.generate(request(ip_adapters=[{**spec, "weight": 0}])).images[0]
    assert max_diff(full.images[0], base) > 10 and max_diff(half, full.images[0]) > 3
    assert max_diff(zero, base) <= 1
    assert max_diff(engine.generate(request()).images[0], base) == 0  # the UNet got its own processors back
    unit = parse_infotext(full.infotexts[0])["ControlNet 0"]
    assert unit.startswith("Module: ip-adapter_clip_sd15, Model: ip-adapter_tiny [") and "Weight: 1.0" in unit


def test_two_reference_images_a_batch_and_the_flat_layout(engine, ip_store, references):
    one = engine.generate(request(ip_adapters=[{"image": references[0], "model": "ip-adapter_tiny"}])).images[0]
    two = engine.generate(request(ip_adapters=[{"image": references[0], "model": "ip-adapter_tiny"},
                                               {"image": references[1], "model": "ip-adapter_tiny", "weight": 0.8}]))
    assert max_diff(two.images[0], one) > 3
    assert {"ControlNet 0", "ControlNet 1"} <= set(parse_infotext(two.infotexts[0]))
    batch = engine.generate(request(batch_size=2, ip_adapters=[{"image": references[0], "model": "ip-adapter_tiny"}]))
    assert max_diff(batch.images[0], one) <= 1 and len(batch.images) == 2
    flat = engine.generate(request(ip_adapters=[{"image": references[0], "model": "ip-adapter_tiny_flat [00000000]"}]))
    assert max_diff(flat.images[0], one) > 3  # other weights, the top folder's image encoder
    assert "Model: ip-adapter_tiny_flat [" in flat.infotexts[0]
    unguided = dict(cfg_scale=1.0, ip_adapters=[{"image": references[0], "model": "ip-adapter_tiny"}])
    plain = engine.generate(request(cfg_scale=1.0)).images[0]
    assert max_diff(engine.generate(request(**unguided)).images[0], plain) > 3  # no negative image embeddings then


def test_a_model_folders_own_adapter_needs_no_name(engine, ip_store, model_store, references, tmp_path):
    import shutil

    model = tmp_path / "mine"
    shutil.copytree(model_store["folder"], model)
    own = tmp_path / "mine-ip-adapter"  # beside the model, as huabu tiny ship-ip-adapter writes it
    own.mkdir()
    shutil.copy(ip_store["folder"], own / "ip-adapter_mine.safetensors")
    shutil.copytree(ip_store["folder"].parent / "image_encoder", own / "image_encoder")
    named = engine.generate(request(model=str(model), ip_adapters=[{"image": references[0],
                                                                    "model": "sd15/ip-adapter_tiny"}]))
    unnamed = engine.generate(request(model=str(model), ip_adapters=[{"image": references[0]}]))
    assert max_diff(unnamed.images[0], named.images[0]) == 0  # the same weights and encoder, found beside the model
    assert "Model: ip-adapter_mine [" in unnamed.infotexts[0]
    by_name = engine.generate(request(model=str(model), ip_adapters=[{"image": references[0],
                                                                      "model": "ip-adapter_mine"}]))
    assert max_diff(by_name.images[0], named.images[0]) == 0
    with pytest.raises(InvalidRequest, match="several IP-Adapters"):  # other models have no own one
        engine.generate(request(ip_adapters=[{"image": references[0]}]))


def _random_unet_lora(unet_folder: Path, path: Path) -> Path:
    """A random kohya LoRA on the to_q / to_v layers of the UNet in `unet_folder`, written to `path`."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from huabu.engine import lora_formats as formats

    unet = UNet2DConditionModel.from_pretrained(unet_folder)
    torch.manual_seed(3)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    state = {key: torch.randn_like(value) * 0.5 for key, value in get_peft_model_state_dict(unet).items()}
    return formats.write_lora(path, formats.from_peft("unet", state, 2))


def test_an_adapters_own_lora_goes_with_it_and_only_with_it(engine, ip_store, model_store, references, tmp_path):
    import shutil

    model = tmp_path / "mine"
    shutil.copytree(model_store["folder"], model)
    own = tmp_path / "mine-ip-adapter"
    own.mkdir()
    shutil.copy(ip_store["folder"], own / "ip-adapter_mine.safetensors")
    shutil.copytree(ip_store["folder"].parent / "image_encoder", own / "image_encoder")
    lora = _random_unet_lora(model / "unet", tmp_path / "faceid_lora.safetensors")
    mine = dict(model=str(model))
    base = engine.generate(request(**mine)).images[0]
    alone = engine.generate(request(**mine, ip_adapters=[{"image": references[0]}])).images[0]
    by_hand = engine.generate(request(**mine, ip_adapters=[{"image": references[0]}],
                                      loras=[{"name": str(lora)}])).images[0]
    shutil.copy(lora, own / "ip-adapter_mine_lora.safetensors")  # FaceID's naming, beside the weights
    paired = engine.generate(request(**mine, ip_adapters=[{"image": references[0]}]))  # still the one adapter
    assert max_diff(by_hand, alone) > 3 and max_diff(paired.images[0], by_hand) <= 1
    assert "Lora hashes" not in parse_infotext(paired.infotexts[0])  # the adapter's field stands for it
    zero = engine.generate(request(**mine, ip_adapters=[{"image": references[0], "weight": 0}])).images[0]
    assert max_diff(zero, base) <= 1  # its LoRA at the unit's weight, 0 too
    assert max_diff(engine.generate(request(**mine)).images[0], base) == 0  # and gone without the adapter
    assert [ref.name for ref in engine.ip_adapters.own_ip_adapters(model)] == ["ip-adapter_mine"]


def test_with_controlnet_img2img_and_hires(engine, ip_store, controlnet_store, references):
    ip = {"image": references[1], "model": "ip-adapter_tiny"}
    canny = {"module": "canny", "model": "tiny-canny", "image": references[0]}
    control_only = engine.generate(request(controlnets=[canny])).images[0]
    both = engine.generate(request(controlnets=[canny], ip_adapters=[ip]))
    assert max_diff(both.images[0], control_only) > 3
    params = parse_infotext(both.infotexts[0])
    assert params["ControlNet 0"].startswith("Module: canny") and "ip-adapter" in params["ControlNet 1"]
    # img2img: a prompt without an image uses the input image
    made = engine.generate(request(mode="img2img", init_image=references[0], denoising_strength=0.8,
                                   ip_adapters=[{"model": "ip-adapter_tiny"}]))
    plain = engine.generate(request(mode="img2img", init_image=references[0], denoising_strength=0.8))
    assert max_diff(made.images[0], plain.images[0]) > 3
    hires = engine.generate(request(enable_hr=True, hr_scale=1.5, denoising_strength=0.5, ip_adapters=[ip]))
    assert hires.images[0].size == (48, 48)


def test_bad_files_are_one_line_errors(engine, ip_store, references, model_store):
    def error(kind, **fields):
        with pytest.raises(kind) as info:
            engine.generate(request(**fields))
        message = str(info.value)
        assert "\n" not in message
        return message

    assert "evil.safetensors" in error(UnsafeCheckpoint, ip_adapters=[{"image": references[0],
                                                                      "model": str(ip_store["pickle"])}])
    assert "missing.png" in error(BadImage, ip_adapters=[{"image": "/nowhere/missing.png", "model": "ip-adapter_tiny"}])
    assert "no-such-adapter" in error(ModelNotFound, ip_adapters=[{"image": references[0],
                                                                   "model": "no-such-adapter"}])
    assert "several IP-Adapters" in error(InvalidRequest, ip_adapters=[{"image": references[0]}])
    assert "text width 64" in error(InvalidRequest, ip_adapters=[{"image": references[0],
                                                                 "model": str(ip_store["sdxl"])}])
    assert "needs an image" in error(InvalidRequest, ip_adapters=[{"model": "ip-adapter_tiny"}])
    assert "Face ID" in error(InvalidRequest, ip_adapters=[{"image": references[0], "module": "ip-adapter_face_id"}])


def test_cli_generate_png_info_and_reproduce(huabu_env, model_store, ip_store, references, capsys, tmp_path):
    from huabu.cli.main import main

    (huabu_env / "ip-adapter").symlink_to(ip_store["root"])
    (huabu_env / "controlnet").symlink_to(model_store["home"] / "controlnet")
    out = tmp_path / "out"
    argv = ["generate", "a red apple", "--steps", "2", "--size", "32x32", "--model", "tiny-sd", "--seed", "5",
            "--ip-adapter", f"{references[0]}:0.7", "--ip-adapter-model", "ip-adapter_tiny", "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    made = out / "00000-5.png"
    capsys.readouterr()
    assert main(["png-info", str(made), "--json"]) == 0
    unit = json.loads(capsys.readouterr().out)["ControlNet 0"]
    assert unit["module"] == "ip-adapter_clip_sd15" and unit["weight"] == 0.7
    assert main(["reproduce", str(made), "--control-image", references[0]]) == 0
    assert "match" in capsys.readouterr().out
    assert main(["reproduce", str(made)]) == 2
    assert "--control-image" in capsys.readouterr().err
    assert main(["generate", "x", "--ip-adapter", f"{tmp_path}/none.png", "--steps", "2", "--size", "32x32",
                 "--model", "tiny-sd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.png" in err


def test_a1111_ip_adapter_unit_is_accepted_and_its_infotext_round_trips(engine, model_store, ip_store, references,
                                                                        tmp_path):
    from fastapi.testclient import TestClient
    from server_support import LOCAL, TINY, api_settings, decode_png, make_app, png_b64

    from huabu.server.a1111 import Txt2ImgRequest, to_generate

    home = tmp_path / "home"
    home.mkdir()
    (home / "ip-adapter").symlink_to(ip_store["root"])
    reference = png_b64(Image.open(references[0]))
    title = f"ip-adapter_tiny [{'0' * 8}]"
    unit = {"enabled": True, "image": reference, "module": "ip-adapter_clip_sd15", "model": title, "weight": 0.6,
            "resize_mode": 1, "processor_res": -1, "guidance_start": 0.0, "guidance_end": 1.0}
    canny = {"enabled": True, "image": reference, "module": "canny", "model": "tiny-canny"}
    payload = {"prompt": "a red apple", "seed": 3, **TINY,
               "alwayson_scripts": {"controlnet": {"args": [unit, {**unit, "guidance_end": 0.5}, canny]}}}
    app = make_app(api_settings(model_store, home), engine)
    with TestClient(app, base_url=LOCAL) as client:
        request, warnings = to_generate(Txt2ImgRequest.model_validate(payload), client.app.state.huabu.catalog,
                                        "txt2img")
        assert [u.module for u in request.controlnets] == ["canny"] and len(request.ip_adapters) == 2
        assert request.ip_adapters[0].weight == 0.6 and request.ip_adapters[0].model == title
        assert any("guidance window ignored" in w for w in warnings)
        payload["alwayson_scripts"]["controlnet"]["args"] = [unit]
        response = client.post("/sdapi/v1/txt2img", json=payload)
        assert response.status_code == 200, response.text
        infotext = json.loads(response.json()["info"])["infotexts"][0]
        assert "Module: ip-adapter_clip_sd15, Model: ip-adapter_tiny [" in infotext and "Weight: 0.6" in infotext
        # the infotext (with the reference image again) remakes the picture
        again = client.post("/sdapi/v1/txt2img", json={"infotext": infotext, "alwayson_scripts": {"controlnet": {
            "args": [{"image": reference, "module": "ip-adapter_clip_sd15", "model": title, "weight": 0.6}]}}})
        assert again.status_code == 200, again.text
        first, second = (decode_png(r.json()["images"][0]) for r in (response, again))
        assert max_diff(first.convert("RGB"), second.convert("RGB")) == 0
        plain = client.post("/sdapi/v1/txt2img", json={k: v for k, v in payload.items() if k != "alwayson_scripts"})
        assert max_diff(decode_png(plain.json()["images"][0]).convert("RGB"), first.convert("RGB")) > 3
        path = client.post("/sdapi/v1/txt2img", json={**payload, "alwayson_scripts": {"controlnet": {"args": [
            {**unit, "model": "../elsewhere/ip/evil"}]}}})
        assert path.status_code in (400, 403, 422) and "name" in path.text


def test_infotext_splits_ip_adapter_units_from_controlnet_units():
    from huabu.core.fields import infotext_values
    from huabu.core.ip_adapters import parse_ip_adapter_spec, serialize_ip_adapter_unit

    text = ("a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32, "
            'ControlNet 0: "Module: canny, Model: c [12345678], Weight: 1.0, Resize Mode: Crop and Resize, '
            'Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0.0, Guidance End: 1.0, '
            'Pixel Perfect: False, Control Mode: Balanced", '
            f'ControlNet 1: "{serialize_ip_adapter_unit("ip-adapter_clip_h", "ip-adapter_sd15 [abcdef12]", 0.5)}"')
    values = infotext_values(parse_infotext(text))
    assert [u["module"] for u in values["controlnets"]] == ["canny"]
    assert values["ip_adapters"] == [{"module": "ip-adapter_clip_h", "model": "ip-adapter_sd15 [abcdef12]",
                                      "weight": 0.5}]
    assert parse_ip_adapter_spec("C:\\refs\\a.png:0.4") == {"image": "C:\\refs\\a.png", "weight": 0.4}
    assert parse_ip_adapter_spec("C:\\refs\\a.png") == {"image": "C:\\refs\\a.png"}
    assert "ip_adapters" not in GenerateRequest.create(prompt="x").to_data()
