"""Real video model families from diffusers folders, picked by model_index.json's class: ModelScope text-to-video
(and its video-to-video for --image) and I2VGen-XL, on tiny random components; hub ids offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from video_support import save_i2vgen_xl, save_modelscope

from huabu.core.errors import InvalidRequest, ModelNotFound
from huabu.core.requests import VideoRequest


@pytest.fixture(scope="module")
def video_models(tmp_path_factory, settings, engine):
    from huabu.engine.generate import Engine

    root = tmp_path_factory.mktemp("video-models")
    paths = {"modelscope": save_modelscope(root / "tiny-modelscope"), "i2vgen": save_i2vgen_xl(root / "tiny-i2vgen")}
    Image.new("RGB", (32, 32), (230, 60, 40)).save(root / "red.png")
    paths["image"] = root / "red.png"
    local = settings.with_(outputs_dir=root / "outputs", gallery_db=root / "gallery.sqlite")
    return Engine(local, engine.models), paths


BASE = dict(prompt="a red apple", frames=4, width=32, height=32, steps=2, seed=3)


def _stack(frames) -> np.ndarray:
    return np.stack([np.asarray(f, dtype=np.int16) for f in frames])


def test_modelscope_folder_makes_videos(video_models):
    engine, paths = video_models
    assert json.loads((paths["modelscope"] / "model_index.json").read_text())["_class_name"] == "TextToVideoSDPipeline"
    seen = []
    first = engine.generate_video(VideoRequest.create(**BASE, model=str(paths["modelscope"])), progress=seen.append)
    again = engine.generate_video(VideoRequest.create(**BASE, model=str(paths["modelscope"])))
    assert first.pipeline == "ModelScope" and len(first.frames) == 4 and first.frames[0].size == (32, 32)
    assert np.array_equal(_stack(first.frames), _stack(again.frames))
    assert [p.step for p in seen] == [1, 2]
    assert "Video model: ModelScope" in first.infotext and "Motion module" not in first.infotext
    other = engine.generate_video(VideoRequest.create(**{**BASE, "seed": 4}, model=str(paths["modelscope"])))
    assert np.abs(_stack(other.frames) - _stack(first.frames)).mean() > 0.5


def test_modelscope_animates_an_image(video_models):
    engine, paths = video_models
    result = engine.generate_video(VideoRequest.create(**{**BASE, "steps": 3}, model=str(paths["modelscope"]),
                                                       init_image=str(paths["image"]), denoising_strength=0.7))
    assert len(result.frames) == 4 and result.first_frame is not None
    assert "Denoising strength: 0.7" in result.infotext


def test_i2vgen_xl_folder_animates_an_image(video_models):
    engine, paths = video_models
    result = engine.generate_video(
        VideoRequest.create(**BASE, model=str(paths["i2vgen"]), init_image=str(paths["image"]))
    )
    assert result.pipeline == "I2VGen-XL" and len(result.frames) == 4 and result.frames[0].size == (32, 32)
    assert set(result.first_frame) == {"psnr", "mean_abs_diff"}
    interrupted = engine.generate_video(VideoRequest.create(**BASE, model=str(paths["i2vgen"]),
                                                            init_image=str(paths["image"])), interrupt=lambda: True)
    assert interrupted.interrupted and interrupted.frames == []


@pytest.mark.parametrize("fields, words", [
    ({"model": "I2V"}, "animates an image: pass --image"),
    ({"model": "MS", "motion_module": "x"}, "takes no motion module"),
    ({"model": "MS", "prompt": "a [cat:dog:0.5]"}, "prompt editing and alternation"),
    ({"model": "MS", "controlnets": [{"module": "none", "image": "IMAGE"}]}, "ControlNet units work with AnimateDiff"),
])
def test_video_model_misuse_is_one_line(video_models, fields, words):
    engine, paths = video_models
    fields = {**fields, "model": str(paths["i2vgen" if fields["model"] == "I2V" else "modelscope"])}
    if "controlnets" in fields:
        fields["controlnets"] = [{**unit, "image": str(paths["image"])} for unit in fields["controlnets"]]
    with pytest.raises(InvalidRequest, match=words) as caught:
        engine.generate_video(VideoRequest.create(**{**BASE, **fields}))
    assert "\n" not in str(caught.value)


def test_hub_video_model_offline_is_one_line(video_models):
    engine, _ = video_models
    with pytest.raises(ModelNotFound, match="hub is offline") as caught:
        engine.generate_video(VideoRequest.create(**BASE, model="ali-vilab/i2vgen-xl"))
    assert "\n" not in str(caught.value)
