"""`huabu generate --hires ... / --subseed ...` and `huabu reproduce` of what they made."""

from __future__ import annotations

import pytest
from PIL import Image

from huabu.cli.main import main
from huabu.core.pnginfo import parse_infotext, read_parameters

FAST = ["--steps", "3", "--size", "32x32", "--model", "tiny-sd"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_hires_from_the_cli_is_written_and_reproduced(huabu_env, capsys, tmp_path):
    code, out, err = run(capsys, "generate", "a red apple", "--seed", "5", "--hires", "2", "--hires-steps", "2",
                         "--denoise", "0.5", "--upscaler", "Latent (bicubic)", "-o", tmp_path, *FAST)
    assert code == 0, err
    made = tmp_path / "00000-5.png"
    assert Image.open(made).size == (64, 64)
    parsed = parse_infotext(read_parameters(made))
    assert (parsed["Size"], parsed["Hires upscale"], parsed["Hires steps"], parsed["Hires upscaler"],
            parsed["Denoising strength"]) == ("32x32", 2, 2, "Latent (bicubic)", 0.5)
    assert run(capsys, "reproduce", made)[:2] == (0, "match\n")


def test_variation_seed_from_the_cli_is_written_and_reproduced(huabu_env, capsys, tmp_path):
    code, _, err = run(capsys, "generate", "a red apple", "--seed", "5", "--subseed", "9", "--subseed-strength",
                       "0.25", "--seed-resize-from", "16x16", "-o", tmp_path, *FAST)
    assert code == 0, err
    made = tmp_path / "00000-5.png"
    parsed = parse_infotext(read_parameters(made))
    assert (parsed["Variation seed"], parsed["Variation seed strength"], parsed["Seed resize from"]) == \
        (9, 0.25, "16x16")
    assert run(capsys, "reproduce", made)[:2] == (0, "match\n")


@pytest.mark.parametrize("argv, message", [
    (["--hires", "2", "--denoise", "0"], "denoising strength above 0"),
    (["--hires", "2", "--upscaler", "Bicubic++"], "unknown upscaler 'Bicubic++'"),
    (["--subseed-strength", "1.5"], "subseed_strength must be between 0.0 and 1.0"),
])
def test_bad_hires_and_variation_options_are_one_line(huabu_env, capsys, argv, message):
    code, _, err = run(capsys, "generate", "x", *FAST, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_inpaint_only_masked_with_fill_from_the_cli_reproduces(huabu_env, capsys, tmp_path):
    image, mask = Image.new("RGB", (64, 64), (200, 40, 40)), Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 48, 48))
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    code, _, err = run(capsys, "inpaint", "a leaf", "--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png",
                       "--seed", "4", "--steps", "3", "--size", "32x32", "--model", "tiny-sd", "--only-masked",
                       "--padding", "8", "--fill", "latent-noise", "--mask-blur", "0", "-o", tmp_path / "out")
    assert code == 0, err
    made = tmp_path / "out" / "00000-4.png"
    assert Image.open(made).size == (64, 64)
    parsed = parse_infotext(read_parameters(made))
    assert (parsed["Masked content"], parsed["Inpaint area"], parsed["Only masked padding"]) == \
        ("latent noise", "Only masked", 8)
    code, out, err = run(capsys, "reproduce", made, "--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png")
    assert (code, out) == (0, "match\n"), err
