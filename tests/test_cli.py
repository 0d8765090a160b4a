"""The `huabu` command line, run in-process: outputs, png-info, reproduce, history, listings and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from huabu.cli.main import main

FAST = ["--steps", "3", "--size", "32x32", "--model", "tiny-sd"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_imports_no_heavy_libraries():
    probe = ("import sys; from huabu.cli.main import build_parser; build_parser().format_help(); "
             "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture
def generated(huabu_env, capsys, tmp_path):
    outdir = tmp_path / "made" / "here"
    code, out, err = run(capsys, "generate", "a red apple on a blue background", "--negative", "blurry",
                         "--cfg", "7", "--sampler", "DPM++ 2M Karras", "--seed", "42", "--batch", "2",
                         "-o", outdir, *FAST)
    assert code == 0, err
    return outdir, out


def test_generate_writes_pngs_with_parameters(generated, capsys):
    outdir, out = generated
    files = sorted(outdir.glob("*.png"))
    assert [f.name for f in files] == ["00000-42.png", "00001-43.png"]
    assert out.splitlines() == [f"{files[0]}  (seed 42)", f"{files[1]}  (seed 43)"]
    code, out, _ = run(capsys, "png-info", files[1])
    assert code == 0
    lines = out.strip().split("\n")
    assert lines[:2] == ["a red apple on a blue background", "Negative prompt: blurry"]
    assert lines[2].startswith("Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 43, "
                               "Size: 32x32, Model hash: ")
    assert ", Model: tiny-sd, Version: huabu " in lines[2]


def test_reproduce_matches_and_detects_changes(generated, capsys, tmp_path):
    from huabu.core.pnginfo import read_parameters, save_png_atomic

    code, out, err = run(capsys, "generate", "a lone apple", "--seed", "7", "-o", tmp_path, *FAST)
    single = tmp_path / "00000-7.png"
    assert run(capsys, "reproduce", single)[:2] == (0, "match\n")
    # An image from a batch is remade alone: batched matrix products may round one level differently.
    outdir, _ = generated
    second = outdir / "00001-43.png"
    code, out, err = run(capsys, "reproduce", second, "--tolerance", "1")
    assert (code, out) == (0, "match\n"), err
    changed = np.asarray(Image.open(second)).copy()
    changed[5, 5] = (changed[5, 5].astype(int) + 40) % 256
    tampered = save_png_atomic(Image.fromarray(changed), tmp_path / "tampered.png", read_parameters(second))
    code, out, _ = run(capsys, "reproduce", tampered)
    assert code == 1 and out.startswith("differs (max abs pixel difference ") and out.strip()[-1] == ")"


def test_loras_given_outside_the_prompt_are_written_into_it(huabu_env, capsys, tmp_path, settings):
    from video_support import save_tiny_lora

    from huabu.engine.models import ModelManager

    pipe = ModelManager(settings).load("tiny-sd").pipeline  # its own copy: the session's may hold LoRA layers
    save_tiny_lora(pipe, huabu_env / "loras" / "tiny-style.safetensors")
    code, _, err = run(capsys, "generate", "a red apple", "--lora", "tiny-style:0.8", "--seed", "3", "-o",
                       tmp_path / "lora", *FAST)
    assert code == 0, err
    made = tmp_path / "lora" / "00000-3.png"
    code, out, _ = run(capsys, "png-info", made)
    lines = out.strip().split("\n")
    assert lines[0] == "a red apple <lora:tiny-style:0.8>" and 'Lora hashes: "tiny-style: ' in lines[-1]
    assert run(capsys, "reproduce", made)[:2] == (0, "match\n")
    run(capsys, "generate", "a red apple", "--seed", "3", "-o", tmp_path / "plain", *FAST)
    assert np.abs(np.asarray(Image.open(tmp_path / "plain" / "00000-3.png"), dtype=np.int16)
                  - np.asarray(Image.open(made), dtype=np.int16)).max() > 10  # the match needed the LoRA
    # The same tag already in the prompt is neither written nor applied twice.
    run(capsys, "generate", "a red apple <lora:tiny-style:0.8>", "--lora", "tiny-style:0.8", "--seed", "3", "-o",
        tmp_path / "both", *FAST)
    both = tmp_path / "both" / "00000-3.png"
    assert run(capsys, "png-info", both)[1].split("\n")[0] == "a red apple <lora:tiny-style:0.8>"
    assert np.array_equal(np.asarray(Image.open(both)), np.asarray(Image.open(made)))


def test_history_searches_prompts(generated, capsys):
    code, out, _ = run(capsys, "history", "blue background")
    assert code == 0
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert [row[3].rsplit("/", 1)[1] for row in rows] == ["00001-43.png", "00000-42.png"]
    assert all(row[2] == "txt2img" and row[4] == "a red apple on a blue background" for row in rows)
    assert run(capsys, "history", "banana")[1] == ""


@pytest.fixture
def picture(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 1] = 180
    image[10:22, 10:22] = (240, 240, 0)
    path = tmp_path / "picture.png"
    Image.fromarray(image).save(path)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return path, tmp_path / "mask.png"


def test_img2img_and_inpaint_commands(huabu_env, capsys, tmp_path, picture):
    image, mask = picture
    code, out, err = run(capsys, "img2img", "a yellow square", "--image", image, "--strength", "0.6", "--seed", "1",
                         "-o", tmp_path / "i2i", *FAST)
    assert code == 0, err
    assert "Denoising strength: 0.6" in Image.open(out.split()[0]).text["parameters"]
    code, out, err = run(capsys, "inpaint", "a yellow square", "--image", image, "--mask", mask, "--seed", "1",
                         "--mask-blur", "0", "-o", tmp_path / "inp", *FAST)
    assert code == 0, err
    result = np.asarray(Image.open(out.split()[0]), dtype=np.int16)
    original = np.asarray(Image.open(image), dtype=np.int16)
    assert np.abs(result[:8] - original[:8]).max() <= 1  # outside the mask
    assert "Mask blur: 0" in Image.open(out.split()[0]).text["parameters"]


def test_allowed_pickle_checkpoint_generates(huabu_env, capsys, tmp_path, model_store):
    code, _, err = run(capsys, "generate", "a cat", "--steps", "2", "--size", "32x32", "-o", tmp_path,
                       "--model", model_store["ckpt"], "--model-config", model_store["folder"],
                       "--allow-unsafe-pickle")
    assert code == 0, err
    assert len(list(tmp_path.glob("*.png"))) == 1


def bad_inputs(model_store, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all")
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    Image.new("L", (16, 16)).save(tmp_path / "small-mask.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "plain.png")
    image, small_mask = tmp_path / "image.png", tmp_path / "small-mask.png"
    return {
        "size": (["generate", "x", *FAST, "--size", "33x32"], "width 33 is not a multiple of 4"),
        "steps": (["generate", "x", *FAST, "--steps", "0"], "steps must be between 1 and 150 (got 0)"),
        "cfg": (["generate", "x", *FAST, "--cfg", "31"], "cfg_scale must be between 0.0 and 30.0 (got 31.0)"),
        "batch": (["generate", "x", *FAST, "--batch", "17"], "batch_size must be between 1 and 16 (got 17)"),
        "sampler": (["generate", "x", *FAST, "--sampler", "Eulr"], "unknown sampler 'Eulr'"),
        "non-image": (["img2img", "x", *FAST, "--image", notes], f"cannot read image {notes}: not an image"),
        "missing image": (["img2img", "x", *FAST, "--image", tmp_path / "gone.png"], "image file not found"),
        "mask size": (["inpaint", "x", *FAST, "--image", image, "--mask", small_mask],
                      "the mask is 16x16 but the image is 32x32"),
        "missing model": (["generate", "x", "--model", "/no/where/model.safetensors"],
                          "model file or folder not found: /no/where/model.safetensors"),
        "pickle": (["generate", "x", "--model", model_store["ckpt"]], "tiny.ckpt is a pickle checkpoint"),
        "renamed pickle": (["generate", "x", "--model", model_store["fake_safetensors"]],
                           "renamed.SAFETENSORS is a pickle checkpoint"),
        "hub offline": (["generate", "x", "--model", "someone/some-model"],
                        "model 'someone/some-model' is not a local path and the hub is offline"),
        "no parameters": (["reproduce", tmp_path / "plain.png"], "has no A1111 parameters chunk"),
        "fp16 on cpu": (["generate", "x", *FAST, "--device", "cpu", "--dtype", "fp16"], "--dtype fp16 needs a GPU"),
    }


CASES = ["size", "steps", "cfg", "batch", "sampler", "non-image", "missing image", "mask size", "missing model",
         "pickle", "renamed pickle", "hub offline", "no parameters", "fp16 on cpu"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_code_2(huabu_env, capsys, tmp_path, model_store, case):
    argv, expected = bad_inputs(model_store, tmp_path)[case]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err and out == ""


def test_missing_gpu_is_one_line(huabu_env, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    code, _, err = run(capsys, "generate", "x", *FAST, "--device", "cuda")
    assert (code, err) == (2, "error: --device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False)\n")


def test_builtin_model_without_weights(huabu_env, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("huabu.engine.models.BUILTIN_DIR", tmp_path / "stripped")  # e.g. a checkout without weights
    code, _, err = run(capsys, "generate", "a red apple")
    assert (code, err) == (2, "error: built-in model huabu-tiny has no weights in this checkout yet\n")


def test_samplers_and_models_listings(huabu_env, capsys):
    code, out, _ = run(capsys, "samplers")
    assert code == 0
    names = {line.strip().split("  ")[0] for line in out.splitlines() if line.startswith("  ")}
    assert {"Euler", "Euler a", "Heun", "LMS", "DDIM", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM2", "UniPC",
            "LCM", "Karras", "Exponential", "SGM Uniform"} <= names
    code, out, _ = run(capsys, "models")
    assert code == 0 and "tiny-sd  (diffusers)" in out and "tiny-inpaint  (diffusers)" in out


def test_progress_bar_per_pipeline_call(monkeypatch):
    import io

    from huabu.cli.images import progress_bars
    from huabu.engine.job import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    update, close = progress_bars()
    for iteration in range(2):
        for step in range(1, 4):
            update(Progress(iteration, 2, step, 3, iteration, 1, 2))
    close()
    text = terminal.getvalue()
    assert "image 1/2" in text and "image 2/2" in text and "3/3" in text


@pytest.mark.parametrize("bad", ["Steps: abc", "Seed: x", "CFG scale: much", "Size: 32xbig", "Clip skip: two",
                                 "Denoising strength: lots", "Mask blur: soft"])
def test_reproduce_with_a_non_numeric_parameter_is_one_line(huabu_env, capsys, tmp_path, bad):
    from huabu.core.pnginfo import save_png_atomic

    good = {"Steps": "3", "Sampler": "Euler", "CFG scale": "7", "Seed": "1", "Size": "32x32", "Model": "tiny-sd"}
    key, value = bad.split(": ")
    fields = {**good, key: value}
    text = "a kite\n" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + ", Version: huabu 0"
    made = save_png_atomic(Image.new("RGB", (32, 32)), tmp_path / "bad.png", text)
    image = ["--image", made, "--mask", made]
    code, out, err = run(capsys, "reproduce", made, *image)
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and key in err, err


def test_fast_preset_sets_the_lcm_options_and_refuses_other_models():
    import argparse

    from huabu.cli.images import request_from_args
    from huabu.cli.options import add_generation_options
    from huabu.core.errors import InvalidRequest

    parser = argparse.ArgumentParser()
    add_generation_options(parser)
    request = request_from_args(parser.parse_args(["a cat", "--fast", "--steps", "30", "--lora", "x:0.5"]), "txt2img")
    assert (request.steps, request.cfg_scale, request.sampler) == (4, 1.0, "LCM")
    assert [(lora.name, lora.weight) for lora in request.loras] == [("x", 0.5), ("huabu-tiny-lcm", 1.0)]
    with pytest.raises(InvalidRequest, match="--fast is huabu-tiny's preset"):
        request_from_args(parser.parse_args(["a cat", "--fast", "--model", "sd15.safetensors"]), "txt2img")


def test_fast_generates_with_the_shipped_lcm_lora_and_records_it(huabu_env, capsys, tmp_path):
    from huabu.core.pnginfo import read_parameters
    from huabu.engine.loras import BUILTIN_LORAS_DIR

    assert (BUILTIN_LORAS_DIR / "huabu-tiny-lcm.safetensors").is_file()
    prompt = "a red apple in the top left corner on a blue background"
    code, _, err = run(capsys, "generate", prompt, "--fast", "--seed", "3", "-o", tmp_path / "fast")
    assert code == 0, err
    fast = sorted((tmp_path / "fast").glob("*.png"))[0]
    info = read_parameters(fast)
    assert "<lora:huabu-tiny-lcm:1>" in info and "Steps: 4" in info
    assert "Sampler: LCM" in info and "CFG scale: 1" in info
    # the LoRA does the work: the same 4 LCM steps without it give another picture
    code, _, err = run(capsys, "generate", prompt, "--steps", "4", "--cfg", "1", "--sampler", "LCM", "--seed", "3",
                       "-o", tmp_path / "plain")
    plain = sorted((tmp_path / "plain").glob("*.png"))[0]
    difference = np.abs(np.asarray(Image.open(fast), np.int16) - np.asarray(Image.open(plain), np.int16)).mean()
    assert difference > 10
