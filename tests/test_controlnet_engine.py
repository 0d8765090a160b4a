"""ControlNet in Engine.generate on tiny random models: weights, windows, several units, resize modes, modes,
sharing with the base model, infotext fields and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from huabu.core.errors import BadImage, InvalidRequest, ModelNotFound
from huabu.core.requests import GenerateRequest

A1111_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """A 48x40 picture with shapes (so Canny finds edges), deliberately not the output's size or aspect."""
    image = Image.new("RGB", (48, 40), (30, 60, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((6, 6, 26, 30), fill=(240, 220, 20))
    draw.ellipse((28, 10, 44, 34), fill=(200, 30, 30))
    path = tmp_path_factory.mktemp("control") / "reference.png"
    image.save(path)
    return str(path)


def request(model_store, **fields) -> GenerateRequest:
    base = dict(prompt="a red apple on a blue background", steps=2, width=32, height=32, seed=7,
                model=str(model_store["folder"]))
    base.update(fields)
    return GenerateRequest.create(**base)


def unit(controlnet_store, reference, **fields) -> dict:
    base = dict(module="canny", model=str(controlnet_store["canny"]), image=reference)
    base.update(fields)
    return base


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def test_weight_zero_and_empty_window_give_the_base_image_weight_one_differs(engine, model_store, controlnet_store,
                                                                             reference):
    base = engine.generate(request(model_store)).images[0]
    zero = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference, weight=0)]))
    closed = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference, guidance_end=0)]))
    full = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference)]))
    assert max_diff(zero.images[0], base) == 0
    assert max_diff(closed.images[0], base) == 0
    assert max_diff(full.images[0], base) > 10


def test_two_units_run_together_and_differ_from_one(engine, model_store, controlnet_store, reference):
    canny = unit(controlnet_store, reference)
    color = unit(controlnet_store, reference, module="color", model=str(controlnet_store["color"]))
    one = engine.generate(request(model_store, controlnets=[canny])).images[0]
    other = engine.generate(request(model_store, controlnets=[color])).images[0]
    both = engine.generate(request(model_store, controlnets=[canny, color]))
    assert max_diff(both.images[0], one) > 10 and max_diff(both.images[0], other) > 10
    muted = engine.generate(request(model_store, controlnets=[canny, {**color, "weight": 0}])).images[0]
    assert max_diff(muted, one) <= 1  # a muted second unit leaves the first one's image (up to float rounding)
    assert "ControlNet 0: " in both.infotexts[0] and "ControlNet 1: " in both.infotexts[0]


def test_guidance_window_changes_the_result(engine, model_store, controlnet_store, reference):
    full = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference)])).images[0]
    early = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference, guidance_end=0.5)]))
    late = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference, guidance_start=0.5)]))
    assert max_diff(early.images[0], full) > 0 and max_diff(late.images[0], full) > 0
    assert max_diff(early.images[0], late.images[0]) > 0


def test_control_modes_follow_the_extension(engine, model_store, controlnet_store, reference):
    def run(mode, cfg=7.0):
        units = [unit(controlnet_store, reference, control_mode=mode)]
        return engine.generate(request(model_store, cfg_scale=cfg, controlnets=units)).images[0]

    balanced, prompt, control = run("Balanced"), run("My prompt is more important"), run(2)
    assert max_diff(balanced, prompt) > 0 and max_diff(prompt, control) > 0 and max_diff(balanced, control) > 0
    # Without classifier-free guidance there is no negative half to keep the control from: the two modes agree.
    assert max_diff(run("My prompt is more important", cfg=1.0), run("ControlNet is more important", cfg=1.0)) == 0


def test_controlnet_pipelines_share_the_base_model_and_cache_controlnets(engine, model_store, controlnet_store,
                                                                        reference):
    from huabu.engine.controlnets import check_units

    model = engine.models.load(str(model_store["folder"]))
    units = check_units(request(model_store, controlnets=[unit(controlnet_store, reference)]).controlnets)
    first, second = engine.controlnets.plan(units, model), engine.controlnets.plan(units, model)
    assert first.nets[0] is second.nets[0]  # loaded once
    for mode in ("txt2img", "img2img", "inpaint"):
        pipe = first.pipeline(model, mode, 7.0)
        assert "ControlNet" in type(pipe).__name__
        assert pipe.unet is model.pipeline.unet and pipe.vae is model.pipeline.vae
        assert pipe.text_encoder is model.pipeline.text_encoder
        assert pipe.controlnet.nets[0] is first.nets[0]


def test_single_file_controlnet_equals_its_folder(engine, model_store, controlnet_store, reference, tmp_path):
    from huabu.engine.control.convert import export_controlnet

    single = export_controlnet(controlnet_store["canny"], tmp_path / "canny-single.safetensors")
    keys = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(single)))
    assert "control_model.input_hint_block.10.weight" in keys and "control_model.zero_convs.0.0.weight" in keys
    by_folder = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference)])).images[0]
    by_file = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference,
                                                                      model=str(single))])).images[0]
    assert max_diff(by_folder, by_file) == 0


def test_models_are_found_in_the_controlnet_folder(engine, model_store, controlnet_store, reference):
    from huabu.engine.controlnets import legacy_hash

    manager, canny, color = engine.controlnets, controlnet_store["canny"], controlnet_store["color"]
    short = legacy_hash(canny / "diffusion_pytorch_model.safetensors")
    assert [ref.name for ref in manager.list_controlnets()] == ["tiny-canny", "tiny-color"]
    for spec in ("tiny-canny", f"tiny-canny [{short}]", f"renamed [{short}]", str(canny)):  # last: found by hash
        assert manager.resolve(spec, "canny").location == str(canny.resolve())
    assert manager.resolve("", "canny").title == f"tiny-canny [{short}]"  # the module's default
    assert manager.resolve("", "t2ia_color_grid").location == str(color.resolve())  # the extension's module name
    by_default = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference, model="")]))
    explicit = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference)]))
    assert max_diff(by_default.images[0], explicit.images[0]) == 0
    assert f"Model: tiny-canny [{short}]" in by_default.infotexts[0]


def test_folder_listing_skips_annotators_and_asks_when_a_default_is_ambiguous(controlnet_store, tmp_path):
    import shutil

    import torch

    from huabu.core.errors import UnsafeCheckpoint
    from huabu.core.settings import Settings
    from huabu.engine.controlnets import ControlNetManager

    settings = Settings.for_home(tmp_path)
    root = settings.controlnet_dir
    shutil.copytree(controlnet_store["canny"], root / "sd15" / "control_canny")
    (root / "annotators").mkdir()
    (root / "annotators" / "body_pose_model.safetensors").write_bytes(b"not a ControlNet")
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    torch.save({"x": torch.zeros(1)}, root / "old_openpose.pth")  # a pickle: listed, refused only when used
    manager = ControlNetManager(settings)
    assert [ref.name for ref in manager.list_controlnets()] == ["control_canny", "old_openpose"]
    assert manager.resolve("sd15/control_canny", "canny").name == "control_canny"  # a path inside the folder
    assert manager.resolve("", "canny").name == "control_canny"
    with pytest.raises(UnsafeCheckpoint, match="old_openpose.pth is a pickle checkpoint"):
        manager.check_loadable(manager.resolve("", "pose"))
    shutil.copytree(controlnet_store["canny"], root / "canny-copy")
    with pytest.raises(InvalidRequest, match="several ControlNets .* could serve canny .*control_canny"):
        manager.resolve("", "canny")


def test_bare_names_come_from_huabu_folders_not_the_working_directory(controlnet_store, tmp_path, monkeypatch):
    import shutil

    from video_support import tiny_motion_adapter

    from huabu.core.settings import Settings
    from huabu.engine.controlnets import ControlNetManager
    from huabu.engine.motion_modules import resolve_motion_module

    settings = Settings.for_home(tmp_path / "home")
    root, cwd = settings.controlnet_dir, tmp_path / "cwd"
    shutil.copytree(controlnet_store["canny"], root / "canny")
    shutil.copytree(controlnet_store["canny"], root / "canny2")
    shutil.copytree(controlnet_store["canny"], cwd / "canny")  # same name, in the working directory
    tiny_motion_adapter(seed=0).save_pretrained(settings.motion_dir / "mm")
    tiny_motion_adapter(seed=1).save_pretrained(cwd / "mm")
    monkeypatch.chdir(cwd)
    manager = ControlNetManager(settings)
    assert manager.resolve("canny", "canny").location == str((root / "canny").resolve())
    assert manager.resolve("./canny", "canny").location == str((cwd / "canny").resolve())  # explicit: a path
    assert manager.resolve("", "canny").name == "canny"  # the whole word, not canny2
    assert Path(resolve_motion_module("mm", settings).location) == settings.motion_dir / "mm"
    assert Path(resolve_motion_module("./mm", settings).location) == (cwd / "mm").resolve()
    (root / "canny").rename(root / "other")
    with pytest.raises(ModelNotFound, match="ControlNet 'canny' not found"):
        manager.resolve("canny", "canny")


def test_infotext_field_reads_back_with_the_a1111_regex(engine, model_store, controlnet_store, reference):
    import json

    from huabu.core.control_infotext import parse_unit
    from huabu.engine.controlnets import legacy_hash

    units = [unit(controlnet_store, reference, weight=0.8, guidance_end=0.9, threshold_a=80),
             unit(controlnet_store, reference, module="color", model=str(controlnet_store["color"]),
                  resize_mode="Resize and Fill", control_mode="My prompt is more important", pixel_perfect=True)]
    text = engine.generate(request(model_store, controlnets=units)).infotexts[0]
    pairs = dict(A1111_PARAM_RE.findall(text.split("\n")[-1]))
    short = legacy_hash(controlnet_store["canny"] / "diffusion_pytorch_model.safetensors")
    first = json.loads(pairs["ControlNet 0"])
    assert first == (f"Module: canny, Model: tiny-canny [{short}], Weight: 0.8, Resize Mode: Crop and Resize, "
                     f"Processor Res: 512, Threshold A: 80.0, Threshold B: 200, Guidance Start: 0.0, "
                     f"Guidance End: 0.9, Pixel Perfect: False, Control Mode: Balanced")
    # The extension's own reading: split on "," and ": ", then True/False, int, float, text.
    second = {key: value for key, value in (item.strip().split(": ") for item in json.loads(pairs["ControlNet 1"])
                                            .split(","))}
    assert second["Module"] == "color" and second["Model"].startswith("tiny-color [")
    assert second["Resize Mode"] == "Resize and Fill" and second["Pixel Perfect"] == "True"
    assert parse_unit(json.loads(pairs["ControlNet 1"]))["control_mode"] == "My prompt is more important"
    assert parse_unit(first)["threshold_a"] == 80.0 and parse_unit(first)["processor_res"] == 512


def test_resize_modes_fit_the_output_size():
    from huabu.engine.control.resize import pixel_perfect_resolution, resize_control_map

    wide = Image.new("RGB", (80, 40), (0, 0, 0))
    ImageDraw.Draw(wide).rectangle((0, 0, 19, 39), fill=(255, 0, 0))  # red left quarter
    ImageDraw.Draw(wide).rectangle((60, 0, 79, 39), fill=(0, 0, 255))  # blue right quarter
    for mode in ("Just Resize", "Crop and Resize", "Resize and Fill"):
        assert resize_control_map(wide, 32, 48, mode).size == (32, 48)
    stretched = np.asarray(resize_control_map(wide, 32, 48, "Just Resize"))
    assert tuple(stretched[24, 1]) == (255, 0, 0) and tuple(stretched[24, 30]) == (0, 0, 255)
    cropped = np.asarray(resize_control_map(wide, 32, 32, "Crop and Resize"))
    assert cropped.max() == 0  # the centre 40x40 of the 80x40 map is black: both coloured sides are cut off
    filled = np.asarray(resize_control_map(wide, 32, 32, "Resize and Fill"))
    assert tuple(filled[0, 16]) == tuple(filled[31, 16]) == (0, 0, 0)  # bands above/below: median border colour
    assert tuple(filled[16, 1]) == (255, 0, 0) and tuple(filled[16, 30]) == (0, 0, 255)
    assert pixel_perfect_resolution((80, 40), 32, 32, "Crop and Resize") == 32
    assert pixel_perfect_resolution((80, 40), 32, 32, "Resize and Fill") == 16


def test_binary_maps_stay_binary_when_resized():
    from huabu.engine.control.resize import resize_control_map

    edges = np.zeros((128, 128, 3), dtype=np.uint8)
    edges[64, :] = 255  # a one-pixel line
    small = np.asarray(resize_control_map(Image.fromarray(edges), 32, 32, "Just Resize"))
    assert set(np.unique(small)) == {0, 255} and small[15:18].max() == 255


def test_two_colour_maps_that_are_not_grey_keep_their_colours():
    from huabu.engine.control.resize import resize_control_map

    red = np.zeros((64, 64, 3), dtype=np.uint8)
    red[16:48, 16:48] = (255, 0, 0)  # black and pure red: two colours, not an edge map
    small = np.asarray(resize_control_map(Image.fromarray(red), 32, 32, "Just Resize"))
    assert {tuple(c) for c in small.reshape(-1, 3)} == {(0, 0, 0), (255, 0, 0)}
    assert tuple(small[16, 16]) == (255, 0, 0)


def test_control_maps_are_preprocessed_at_the_output_size(engine, model_store, controlnet_store, reference):
    from huabu.engine.controlnets import check_units

    model = engine.models.load(str(model_store["folder"]))
    fields = [unit(controlnet_store, reference, pixel_perfect=True),
              unit(controlnet_store, reference, module="none", resize_mode="Just Resize")]
    units = check_units(request(model_store, controlnets=fields).controlnets)
    plan = engine.controlnets.plan(units, model)
    edges, passed = (plan.control_map(u, 40, 24) for u in units)
    assert edges.size == passed.size == (40, 24)
    assert set(np.unique(np.asarray(edges))) <= {0, 255} and np.asarray(edges).max() == 255
    assert tuple(np.asarray(passed)[0, 0]) == (30, 60, 200)  # "none" keeps the picture itself


def test_img2img_and_inpaint_with_control_keep_their_mode_properties(engine, model_store, controlnet_store,
                                                                    reference, tmp_path):
    source = Image.new("RGB", (32, 32), (20, 160, 60))
    ImageDraw.Draw(source).ellipse((6, 6, 26, 26), fill=(250, 250, 250))
    source.save(tmp_path / "source.png")
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 15, 31), fill=255)
    mask.save(tmp_path / "mask.png")
    img2img = dict(mode="img2img", init_image=str(tmp_path / "source.png"), denoising_strength=0.6, width=None,
                   height=None)
    plain = engine.generate(request(model_store, **img2img)).images[0]
    own = engine.generate(request(model_store, controlnets=[unit(controlnet_store, str(tmp_path / "source.png"))],
                                  **img2img)).images[0]
    borrowed = engine.generate(request(model_store, controlnets=[unit(controlnet_store, None)], **img2img))
    assert own.size == (32, 32) and max_diff(own, plain) > 0
    assert max_diff(borrowed.images[0], own) == 0  # a unit without an image uses the input image
    assert "Denoising strength: 0.6" in borrowed.infotexts[0] and "ControlNet 0: " in borrowed.infotexts[0]

    inpaint = dict(img2img, mode="inpaint", mask=str(tmp_path / "mask.png"), mask_blur=0)
    result = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference)], **inpaint))
    out, src = np.asarray(result.images[0]), np.asarray(source)
    assert np.array_equal(out[:, 16:], src[:, 16:])  # kept where the mask is black
    assert np.abs(out[:, :16].astype(int) - src[:, :16]).max() > 10  # repainted where it is white


def test_nine_channel_model_and_sdxl_run_with_control(engine, model_store, controlnet_store, reference):
    nine = engine.generate(request(model_store, model=str(model_store["inpaint"]),
                                   controlnets=[unit(controlnet_store, reference)]))
    assert nine.images[0].size == (32, 32)
    sdxl = dict(model=str(model_store["sdxl"]), width=32, height=32, steps=2)
    plain = engine.generate(request(model_store, **sdxl)).images[0]
    steered = engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference,
                                                                     model=str(controlnet_store["sdxl"]))],
                                      **sdxl)).images[0]
    assert max_diff(plain, steered) > 0


def test_prompt_editing_batches_and_samplers_work_with_control(engine, model_store, controlnet_store, reference):
    units = [unit(controlnet_store, reference)]
    edited = engine.generate(request(model_store, prompt="[a red apple:a blue cat:0.5]", steps=4, controlnets=units))
    apple = engine.generate(request(model_store, prompt="a red apple", steps=4, controlnets=units))
    assert max_diff(edited.images[0], apple.images[0]) > 0
    batch = engine.generate(request(model_store, batch_size=2, sampler="Euler a", controlnets=units))
    single = engine.generate(request(model_store, seed=8, sampler="Euler a", controlnets=units))
    assert batch.seeds == [7, 8] and max_diff(batch.images[1], single.images[0]) <= 1


@pytest.mark.parametrize("fields, error, pattern", [
    ({"image": None}, InvalidRequest, r"ControlNet unit 0 \(canny\) has no image"),
    ({"module": "sketchy"}, InvalidRequest, r"unknown preprocessor 'sketchy'"),
    ({"model": "no-such-controlnet"}, ModelNotFound, r"ControlNet 'no-such-controlnet' not found"),
    ({"image": "/nowhere/ref.png"}, BadImage, r"ControlNet unit 0 image file not found"),
    ({"image": "data:image/png;base64,AAAA"}, BadImage, r"cannot read ControlNet unit 0 image"),
    ({"model": "F8"}, InvalidRequest, r"shrinks control images 8x but this model's VAE works at 4x"),
    ({"model": "SDXL"}, InvalidRequest, r"was made for text width 64, the model has 32"),
    ({"module": "none", "model": ""}, InvalidRequest, r"module 'none' has no default ControlNet"),
    ({"module": "depth_midas"}, InvalidRequest,
     r"ControlNet unit 0: depth needs a depth model: put a transformers depth model folder .* at .*annotators/depth"
     r", or send a ready depth map with module none"),
    ({"module": "openpose"}, InvalidRequest,
     r"ControlNet unit 0: pose needs OpenPose body weights: put body_pose_model\.safetensors in .*annotators"
     r", or send a ready pose map with module none"),
])
def test_bad_units_give_one_line_errors(engine, model_store, controlnet_store, reference, fields, error, pattern):
    if fields.get("model") in ("F8", "SDXL"):
        fields = {**fields, "model": str(controlnet_store[fields["model"].lower()])}
    with pytest.raises(error, match=pattern) as caught:
        engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference, **fields)]))
    assert "\n" not in str(caught.value)


def test_pickle_controlnets_are_refused_unless_allowed(engine, model_store, controlnet_store, reference, tmp_path):
    import torch
    from diffusers import ControlNetModel

    from huabu.core.errors import UnsafeCheckpoint
    from huabu.engine.control.convert import controlnet_to_ldm

    net = ControlNetModel.from_pretrained(controlnet_store["canny"])
    path = tmp_path / "canny.SAFETENSORS"  # a pickle under a safetensors name: judged by its bytes
    torch.save(controlnet_to_ldm(net.state_dict(), net.config), path)
    with pytest.raises(UnsafeCheckpoint, match="pickle"):
        engine.generate(request(model_store, controlnets=[unit(controlnet_store, reference, model=str(path))]))


def test_loras_apply_under_control_and_do_not_leak(engine, model_store, controlnet_store, reference, settings):
    import torch

    from huabu.engine import lora_formats as formats

    pipe = engine.models.load(str(model_store["folder"])).pipeline
    generator, state = torch.Generator().manual_seed(3), {}
    for name, module in pipe.unet.named_modules():
        # a UNet that ran LoRAs before (other tests) holds peft's layers: the base layers keep the model's names
        name = name.removesuffix(".base_layer")
        if isinstance(module, torch.nn.Linear) and "transformer_blocks" in name and ".lora_" not in name:
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(2, module.in_features, generator=generator) * 0.5
            state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 2, generator=generator) * 0.5
            state[f"{key}.alpha"] = torch.tensor(2.0)
    formats.write_lora(settings.loras_dir / "cn-style.safetensors", formats.from_kohya(state), formats.KOHYA)
    units = [unit(controlnet_store, reference)]
    controlled = engine.generate(request(model_store, controlnets=units)).images[0]
    styled = engine.generate(request(model_store, prompt="a red apple <lora:cn-style:1>", controlnets=units))
    assert max_diff(styled.images[0], controlled) > 0 and "Lora hashes" in styled.infotexts[0]
    assert max_diff(engine.generate(request(model_store, controlnets=units)).images[0], controlled) == 0


def test_hires_fix_runs_the_units_in_both_passes_at_each_pass_size(engine, model_store, controlnet_store, reference):
    from huabu.engine.controlnets import check_units

    hires = dict(enable_hr=True, hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.6)
    canny = unit(controlnet_store, reference)
    plain = engine.generate(request(model_store, **hires)).images[0]
    muted = engine.generate(request(model_store, controlnets=[{**canny, "weight": 0}], **hires))
    assert muted.images[0].size == (64, 64) and max_diff(muted.images[0], plain) <= 1

    model = engine.models.load(str(model_store["folder"]))
    net = engine.controlnets.plan(check_units(request(model_store, controlnets=[canny]).controlnets), model).nets[0]
    sizes = []

    def record(module, args, kwargs):
        sizes.append(tuple((args[0] if args else kwargs["sample"]).shape[-2:]))

    hook = net.register_forward_pre_hook(record, with_kwargs=True)
    try:
        steered = engine.generate(request(model_store, controlnets=[canny], **hires))
    finally:
        hook.remove()
    assert (8, 8) in sizes and (16, 16) in sizes  # the 32 px pass's latents, then the 64 px pass's
    assert max_diff(steered.images[0], plain) > 10 and "ControlNet 0: " in steered.infotexts[0]
    assert "Hires upscale: 2" in steered.infotexts[0]
