"""`huabu generate/img2img --control ...`, `png-info` and `reproduce` with ControlNet units, run in-process."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw

from huabu.cli.main import main

FAST = ["--steps", "2", "--size", "32x32", "--model", "tiny-sd", "--seed", "5"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def control_env(huabu_env, controlnet_store, model_store, tmp_path):
    """The CLI's home with the session's ControlNet folder, and a reference picture."""
    (huabu_env / "controlnet").symlink_to(model_store["home"] / "controlnet")
    reference = Image.new("RGB", (40, 40), (20, 40, 180))
    ImageDraw.Draw(reference).rectangle((8, 8, 30, 24), fill=(250, 230, 30))
    reference.save(tmp_path / "ref.png")
    return tmp_path


def test_generate_with_control_records_reads_back_and_reproduces(control_env, controlnet_store, capsys):
    from huabu.engine.controlnets import legacy_hash

    ref = control_env / "ref.png"
    canny_hash = legacy_hash(controlnet_store["canny"] / "diffusion_pytorch_model.safetensors")
    code, out, err = run(capsys, "generate", "a yellow box", "--control", f"canny:{ref}:0.8:0:0.5",
                         "--control", f"color:{ref}", "--controlnet-model", "tiny-canny", "-o", control_env / "out",
                         *FAST)
    assert code == 0, err
    made = control_env / "out" / "00000-5.png"
    code, out, _ = run(capsys, "png-info", made)
    assert code == 0
    assert (f'ControlNet 0: "Module: canny, Model: tiny-canny [{canny_hash}], Weight: 0.8, '
            'Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, '
            'Guidance Start: 0.0, Guidance End: 0.5, Pixel Perfect: True, Control Mode: Balanced"') in out
    assert 'ControlNet 1: "Module: color, Model: tiny-color [' in out  # the folder's default for color
    code, out, _ = run(capsys, "png-info", made, "--json")
    units = json.loads(out)
    assert units["ControlNet 0"]["guidance_end"] == 0.5 and units["ControlNet 1"]["model"].startswith("tiny-color")

    code, out, err = run(capsys, "reproduce", made, "--model", "tiny-sd", "--control-image", ref,
                         "--control-image", ref)
    assert (code, out) == (0, "match\n"), err
    code, _, err = run(capsys, "reproduce", made, "--model", "tiny-sd")
    assert code == 2 and err.startswith("error: this image was made with 2 ControlNet unit(s)")
    other = control_env / "other.png"
    Image.new("RGB", (40, 40), (200, 0, 0)).save(other)
    code, out, _ = run(capsys, "reproduce", made, "--model", "tiny-sd", "--control-image", other,
                       "--control-image", ref)
    assert code == 1 and out.startswith("differs")


def test_img2img_units_default_to_the_input_image_and_options_are_recorded(control_env, capsys):
    ref = control_env / "ref.png"
    code, _, err = run(capsys, "img2img", "a yellow box", "--image", ref, "--strength", "0.5", "--control",
                       f"none:{ref}", "--controlnet-model", "tiny-canny", "--control-mode", "prompt",
                       "--control-resize", "fill", "--control-res", "64", "-o", control_env / "out", *FAST)
    assert code == 0, err
    code, out, _ = run(capsys, "png-info", control_env / "out" / "00000-5.png")
    assert ("Resize Mode: Resize and Fill, Processor Res: 64, Threshold A: 0.5, Threshold B: 0.5, "
            "Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: My prompt is more important"
            ) in out
    # The unit's image was the input image, so reproduce needs only --image.
    code, out, err = run(capsys, "reproduce", control_env / "out" / "00000-5.png", "--model", "tiny-sd",
                         "--image", ref)
    assert (code, out) == (0, "match\n"), err


@pytest.mark.parametrize("argv, message", [
    (["--control", "canny"], "--control 'canny': write MODULE:IMAGE[:WEIGHT[:START:END]]"),
    (["--control", "canny:{ref}:0.5:0.2"], "give WEIGHT, or WEIGHT:START:END"),
    (["--control", "canny:{ref}:0.5:0.8:0.2"], "guidance_start (0.8) must not exceed guidance_end (0.2)"),
    (["--control", "canny:{ref}", "--controlnet-model", "a", "--controlnet-model", "b"],
     "2 --controlnet-model for 1 --control"),
    (["--control", "pose:{ref}", "--controlnet-model", "tiny-canny"], "pose"),
    (["--control", "depth:{ref}"], "no ControlNet for depth in"),
])
def test_bad_control_options_end_with_one_error_line(control_env, capsys, argv, message):
    argv = [a.format(ref=control_env / "ref.png") for a in argv]
    code, _, err = run(capsys, "generate", "x", *argv, *FAST)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
