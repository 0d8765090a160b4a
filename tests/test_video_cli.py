"""`huabu video`, run in-process: files with their parameters, the first-frame figure, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from video_support import tiny_motion_adapter

from huabu.cli.main import main

FAST = ["--frames", "4", "--steps", "2", "--size", "32x32", "--model", "tiny-sd", "--seed", "3"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def video_env(huabu_env):
    tiny_motion_adapter().save_pretrained(huabu_env / "motion" / "tiny-mm")
    return huabu_env


def test_video_writes_gif_with_parameters(video_env, capsys, tmp_path):
    from huabu.engine.video_export import read_video_parameters

    target = tmp_path / "out.gif"
    code, out, err = run(capsys, "video", "a rocket moving up", "--negative", "blurry", "--fps", "4", "-o", target,
                         *FAST)
    assert code == 0, err
    assert out.strip() == f"{target}  (seed 3, 4 frames at 4 fps)"
    with Image.open(target) as gif:
        assert gif.n_frames == 4 and gif.size == (32, 32) and gif.info["duration"] == 250
    text = read_video_parameters(target)
    assert text.startswith("a rocket moving up\nNegative prompt: blurry\nSteps: 2, ")
    assert "Frames: 4, FPS: 4, Motion module: tiny-mm" in text
    code, out, _ = run(capsys, "history", "rocket", "--kind", "video")
    assert code == 0 and str(target) in out


def test_video_from_image_prints_first_frame_fidelity(video_env, capsys, tmp_path):
    import imageio_ffmpeg

    image = tmp_path / "first.png"
    Image.fromarray(np.full((32, 32, 3), (30, 140, 220), np.uint8)).save(image)
    code, out, err = run(capsys, "video", "a blue sky", "--image", image, "--strength", "0.6", "-o", tmp_path, *FAST)
    assert code == 0, err
    path_line, fidelity_line = out.strip().splitlines()
    made = tmp_path / "00000-3.mp4"
    assert path_line.startswith(f"{made}  (seed 3") and made.is_file()
    assert fidelity_line.startswith("first frame vs --image: PSNR ") and "dB, mean abs difference" in fidelity_line
    assert sum(1 for _ in imageio_ffmpeg.read_frames(str(made))) - 1 == 4


def test_video_with_a_controlnet_unit(video_env, capsys, tmp_path, controlnet_store):
    from huabu.engine.video_export import read_video_parameters

    control = tmp_path / "edges.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))).save(control)
    target = tmp_path / "steered.webm"
    code, out, err = run(capsys, "video", "a cat", "--control", f"none:{control}:0.8", "--controlnet-model",
                         controlnet_store["canny"], "-o", target, *FAST)
    assert code == 0, err
    assert 'ControlNet 0: "Module: none, Model: tiny-canny [' in read_video_parameters(target)


@pytest.mark.parametrize("argv, words", [
    (["--frames", "0"], "frames must be between 2 and 128 (got 0)"),
    (["--image", "NOT_IMAGE"], "not an image file Pillow can open"),
    (["--motion-module", "nope"], "unknown motion module 'nope'"),
    (["-o", "OUT.avi"], "use a .mp4, .webm or .gif file name"),
    (["--sparse-control", "x"], "SparseCtrl RGB) animates an image"),
    (["--image", "NOT_IMAGE", "--strength", "0.1"], "leaves no step to run"),
])
def test_video_bad_input_is_one_line(video_env, capsys, tmp_path, argv, words):
    (tmp_path / "note.png").write_text("not a picture")
    argv = [str(tmp_path / "note.png") if a == "NOT_IMAGE" else str(tmp_path / a) if a == "OUT.avi" else a
            for a in argv]
    code, out, err = run(capsys, "video", "a cat", *FAST, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and words in err and err.count("\n") == 1
