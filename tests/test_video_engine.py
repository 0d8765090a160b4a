"""Video through the engine on conftest's tiny SD model with tiny random AnimateDiff motion modules (4 frames,
32x32, 3 steps): determinism, motion weights, image-to-video fidelity, prompt editing, progress/interrupt, saving,
motion-module files and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from video_support import save_sparsectrl, tiny_motion_adapter

from huabu.core.errors import BadImage, InvalidRequest, ModelNotFound, UnsafeCheckpoint
from huabu.core.requests import VideoRequest


@pytest.fixture(scope="module")
def video_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    tiny_motion_adapter(seed=0).save_pretrained(root / "motion" / "tiny-mm")
    tiny_motion_adapter(seed=1).save_pretrained(root / "elsewhere" / "tiny-mm-b")
    save_sparsectrl(root / "controlnet" / "tiny-sparse")
    Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))).save(root / "ramp.png")
    (root / "not-an-image.png").write_text("hello")
    return root


@pytest.fixture(scope="module")
def vengine(settings, engine, video_dirs):
    """An Engine sharing the session's loaded models, with its own motion, ControlNet, outputs and gallery."""
    from huabu.engine.generate import Engine

    local = settings.with_(motion_dir=video_dirs / "motion", controlnet_dir=video_dirs / "controlnet",
                           outputs_dir=video_dirs / "outputs", gallery_db=video_dirs / "gallery.sqlite")
    return Engine(local, engine.models)


BASE = dict(prompt="a red apple", model="tiny-sd", frames=4, width=32, height=32, steps=3, seed=7)


def _video(vengine, **fields):
    return vengine.generate_video(VideoRequest.create(**{**BASE, **fields}))


def _stack(frames) -> np.ndarray:
    return np.stack([np.asarray(f, dtype=np.int16) for f in frames])


def test_same_seed_same_frames_and_parameters_recorded(vengine):
    first, second = _video(vengine), _video(vengine)
    assert len(first.frames) == 4 and first.frames[0].size == (32, 32)
    assert np.array_equal(_stack(first.frames), _stack(second.frames))
    assert first.pipeline == "AnimateDiff" and first.seed == 7
    # The only module in the motion folder is the default; its name and hash go into the infotext.
    for part in ("Seed: 7", "Frames: 4", "FPS: 8", "Motion module: tiny-mm", "Motion module hash: ", "Size: 32x32"):
        assert part in first.infotext
    frames = _stack(first.frames)
    assert np.abs(frames[1:] - frames[:-1]).max() > 0  # the frames are not one image repeated


def test_random_seed_is_recorded(vengine):
    result = _video(vengine, seed=-1)
    assert 0 <= result.seed and f"Seed: {result.seed}" in result.infotext
    assert result.request_used.seed == result.seed


def test_motion_module_weights_change_the_video(vengine, video_dirs):
    a = _stack(_video(vengine, motion_module="tiny-mm").frames)
    b = _stack(_video(vengine, motion_module=str(video_dirs / "elsewhere" / "tiny-mm-b")).frames)
    assert np.abs(a - b).mean() > 1.0


def test_prompt_editing_switches_prompt_mid_video(vengine):
    ddim = dict(sampler="DDIM", steps=4)  # DDIM: the last steps still move the result visibly
    cat, dog = (
        _stack(_video(vengine, prompt="a cat", **ddim).frames),
        _stack(_video(vengine, prompt="a dog", **ddim).frames),
    )
    edited = _stack(_video(vengine, prompt="a [cat:dog:0.25]", **ddim).frames)  # cat for 2 steps, then dog
    assert np.abs(edited - cat).mean() > 0.1 and np.abs(edited - dog).mean() > 0.1


def test_long_prompts_and_break_are_conditioning(vengine):
    short = _stack(_video(vengine, prompt="a red apple").frames)
    split = _video(vengine, prompt="a red apple BREAK on a blue table")
    long = _video(vengine, prompt=", ".join(["a red apple on a blue table"] * 14))  # about 100 tokens: two chunks
    assert np.abs(_stack(split.frames) - short).mean() > 0.5 and np.abs(_stack(long.frames) - short).mean() > 0.5


def _round_trip(vengine, image: Image.Image) -> Image.Image:
    """What the tiny random VAE makes of an image: the closest a first frame can get with this model."""
    from huabu.engine.pipelines import decode_latents
    from huabu.engine.video import encode_image

    model = vengine.models.load("tiny-sd")
    return decode_latents(model.pipeline, encode_image(model, image))[0][0]


def test_image_to_video_pins_the_first_frame(vengine, video_dirs):
    from huabu.engine.metrics import first_frame_fidelity

    image_path = video_dirs / "ramp.png"
    image = Image.open(image_path).convert("RGB")
    reference = _round_trip(vengine, image)
    i2v = _video(vengine, init_image=str(image_path), denoising_strength=0.7)
    t2v = _video(vengine)
    loose = _video(vengine, init_image=str(image_path), denoising_strength=0.7, anchor_first_frame=False)
    pinned = first_frame_fidelity(reference, i2v.frames[0])
    assert pinned["mean_abs_diff"] < 1.0  # frame 0 is the image, through this VAE
    assert first_frame_fidelity(reference, t2v.frames[0])["mean_abs_diff"] > 10 * max(pinned["mean_abs_diff"], 0.5)
    assert first_frame_fidelity(reference, loose.frames[0])["mean_abs_diff"] > pinned["mean_abs_diff"]
    # The result reports the fidelity against the input image itself, as the CLI prints it.
    assert i2v.first_frame == pytest.approx(first_frame_fidelity(image, i2v.frames[0]))
    assert "Denoising strength: 0.7" in i2v.infotext and "First frame: anchored" in i2v.infotext
    assert np.abs(_stack(i2v.frames)[1:] - _stack(i2v.frames)[0]).max() > 0


def test_sparsectrl_conditions_on_the_image(vengine, video_dirs):
    image = str(video_dirs / "ramp.png")
    plain = _stack(_video(vengine).frames)
    sparse = _video(vengine, init_image=image, sparse_control="tiny-sparse", anchor_first_frame=False)
    assert np.abs(_stack(sparse.frames) - plain).mean() > 0.5
    assert "SparseCtrl: tiny-sparse" in sparse.infotext and "Denoising strength" not in sparse.infotext


def test_controlnet_units_steer_text_and_image_to_video(vengine, video_dirs, controlnet_store):
    unit = {"module": "none", "image": str(video_dirs / "ramp.png"), "model": str(controlnet_store["canny"])}
    plain = _stack(_video(vengine).frames)
    steered = _video(vengine, controlnets=[unit])
    assert np.abs(_stack(steered.frames) - plain).mean() > 0.5
    assert 'ControlNet 0: "Module: none, Model: tiny-canny [' in steered.infotext
    weightless = _video(vengine, controlnets=[{**unit, "weight": 0.0}])
    assert np.array_equal(_stack(weightless.frames), plain)
    # Image-to-video with a unit: the unit's image defaults to the input image, frame 0 stays pinned.
    i2v = _video(vengine, init_image=str(video_dirs / "ramp.png"), controlnets=[{**unit, "image": None}])
    assert "ControlNet 0" in i2v.infotext and len(i2v.frames) == 4


def test_loras_reach_the_motion_unet_whatever_ran_before(vengine, engine, tmp_path):
    """A LoRA changes the video and leaves no trace after; stills that loaded it first (into the base UNet and the
    shared text encoder) change nothing about either."""
    from video_support import save_tiny_lora

    from huabu.core.requests import GenerateRequest
    from huabu.engine.generate import Engine
    from huabu.engine.models import ModelManager

    def fresh_engine():
        local = vengine.settings.with_(loras_dir=tmp_path / "loras")
        return Engine(local, ModelManager(local, engine.models.hashes))

    first = fresh_engine()
    save_tiny_lora(first.models.load("tiny-sd").pipeline, tmp_path / "loras" / "tiny-style.safetensors")
    plain = _stack(_video(first).frames)
    styled = _stack(_video(first, prompt="a red apple <lora:tiny-style:1>").frames)
    assert np.abs(styled - plain).mean() > 1.0
    assert np.array_equal(_stack(_video(first).frames), plain)
    after_stills = fresh_engine()
    after_stills.generate(GenerateRequest.create(prompt="a pear <lora:tiny-style:1>", model="tiny-sd", steps=2,
                                                 width=32, height=32))
    assert np.array_equal(_stack(_video(after_stills, prompt="a red apple <lora:tiny-style:1>").frames), styled)
    assert np.array_equal(_stack(_video(after_stills).frames), plain)


def test_each_unet_gets_the_lora_whichever_pipeline_loaded_it_first(vengine, engine, tmp_path):
    """The motion UNet is the video pipeline's own, the text encoder is the stills': apply_loras checks each
    component, so a LoRA loaded for a still reaches the motion UNet and one loaded for a video reaches the stills'
    UNet (the still then equals one made on a fresh engine)."""
    from video_support import save_tiny_lora

    from huabu.core.requests import GenerateRequest
    from huabu.engine.generate import Engine
    from huabu.engine.models import ModelManager

    def fresh_engine():
        local = vengine.settings.with_(loras_dir=tmp_path / "loras")
        return Engine(local, ModelManager(local, engine.models.hashes))

    still = GenerateRequest.create(prompt="a pear <lora:tiny-style:1>", model="tiny-sd", steps=2, width=32,
                                   height=32, seed=3)
    stills_first = fresh_engine()
    save_tiny_lora(stills_first.models.load("tiny-sd").pipeline, tmp_path / "loras" / "tiny-style.safetensors")
    expected_still = np.asarray(stills_first.generate(still).images[0], dtype=np.int16)
    _video(stills_first, prompt="a red apple <lora:tiny-style:1>")
    model = stills_first.models.load("tiny-sd")
    video_pipe = next(p for key, p in model.pipelines.items() if key.kind == "animatediff")
    name = next(iter(model.lora_targets))
    assert model.lora_targets[name] == {"unet", "text_encoder"}
    assert type(video_pipe.unet).__name__ == "UNetMotionModel" and video_pipe.unet is not model.pipeline.unet
    assert name in video_pipe.get_list_adapters()["unet"] and name in model.pipeline.get_list_adapters()["unet"]

    videos_first = fresh_engine()
    _video(videos_first, prompt="a red apple <lora:tiny-style:1>")
    held = videos_first.models.load("tiny-sd").pipeline.get_list_adapters()
    assert name in held["text_encoder"] and name not in held.get("unet", [])  # only the shared part has it yet
    after_video = np.asarray(videos_first.generate(still).images[0], dtype=np.int16)
    assert np.array_equal(after_video, expected_still)


def test_progress_and_interrupt(vengine):
    seen = []
    finished = vengine.generate_video(VideoRequest.create(**BASE), progress=seen.append)
    assert not finished.interrupted
    assert [p.step for p in seen] == [1, 2, 3] and {p.steps for p in seen} == {3}
    assert seen[-1].latents.shape[:2] == (1, 4)  # frame 0's latents, for previews
    stopped = []
    result = vengine.generate_video(VideoRequest.create(**BASE), progress=stopped.append, interrupt=lambda: True)
    assert result.interrupted and [p.step for p in stopped] == [1] and len(result.frames) == 4


def test_saves_video_with_parameters_and_gallery_entry(vengine, tmp_path):
    import imageio_ffmpeg

    from huabu.engine.video_export import read_video_parameters

    result = vengine.generate_video(VideoRequest.create(**BASE), save=True, output=tmp_path / "clip.mp4")
    assert result.path == tmp_path / "clip.mp4" and result.request_used.format == "mp4"
    reader = imageio_ffmpeg.read_frames(str(result.path))
    meta = next(reader)
    assert meta["size"] == (32, 32) and sum(1 for _ in reader) == 4
    assert read_video_parameters(result.path) == result.infotext
    item = vengine.gallery.get(result.gallery_id)
    assert item.kind == "video" and item.path == str(result.path) and item.params["Frames"] == 4
    numbered = vengine.generate_video(VideoRequest.create(**BASE, format="gif"), save=True, output=tmp_path / "dir")
    assert numbered.path.parent == tmp_path / "dir" and numbered.path.name.endswith("-7.gif")


def test_a_motion_module_changed_on_disk_is_loaded_again(vengine, tmp_path):
    import os

    path = tmp_path / "mm.safetensors"

    def write(seed: int) -> None:
        adapter = tiny_motion_adapter(seed=seed)
        save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(path),
                  metadata={"huabu_config": json.dumps(adapter.config)})

    write(0)
    first = _stack(_video(vengine, motion_module=str(path)).frames)
    stamp = path.stat().st_mtime_ns
    write(1)  # the same size: only the modification time tells the file changed
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    second = _stack(_video(vengine, motion_module=str(path)).frames)
    assert np.abs(first - second).mean() > 1.0
    write(0)
    assert np.array_equal(_stack(_video(vengine, motion_module=str(path)).frames), first)


def test_motion_module_single_files(vengine, video_dirs, tmp_path):
    """A diffusers-key .safetensors (config in huabu_config metadata) and one with the original AnimateDiff keys
    (architecture read off the weights) make the same video as the folder they came from."""
    adapter = tiny_motion_adapter(seed=3, heads=8, max_frames=32)  # 8 heads: what an unlabelled file assumes
    adapter.save_pretrained(tmp_path / "folder")
    state = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    save_file(
        state, str(tmp_path / "diffusers-keys.safetensors"), metadata={"huabu_config": json.dumps(adapter.config)}
    )
    original = {_original_key(k).replace("pos_embed", "pos_encoder"): v for k, v in state.items()}
    save_file(original, str(tmp_path / "mm_original.safetensors"))
    short = {k: v[:, :24].contiguous() if k.endswith("pos_encoder.pe") else v for k, v in original.items()}
    save_file(short, str(tmp_path / "mm_v1.safetensors"))  # AnimateDiff v1 modules hold 24 positions
    expected = _stack(_video(vengine, motion_module=str(tmp_path / "folder")).frames)
    for name in ("diffusers-keys.safetensors", "mm_original.safetensors"):
        frames = _stack(_video(vengine, motion_module=str(tmp_path / name)).frames)
        assert np.array_equal(frames, expected), name
    with pytest.raises(InvalidRequest, match="makes at most 24 frames"):
        _video(vengine, motion_module=str(tmp_path / "mm_v1.safetensors"), frames=25)


def _original_key(key: str) -> str:
    """diffusers MotionAdapter key -> the original AnimateDiff checkpoint's (inverse of diffusers' converter)."""
    key = key.replace(".norm1", ".norms.0").replace(".norm2", ".norms.1").replace(".norm3", ".ff_norm")
    key = key.replace(".attn1", ".attention_blocks.0").replace(".attn2", ".attention_blocks.1")
    head, sep, tail = key.partition(".motion_modules.")
    index, _, rest = tail.partition(".")
    return f"{head}{sep}{index}.temporal_transformer.{rest}"


def test_pickle_motion_module_is_refused(vengine, tmp_path):
    torch.save({"down_blocks.0.motion_modules.0.proj_in.weight": torch.zeros(2, 2)}, tmp_path / "mm.safetensors")
    with pytest.raises(UnsafeCheckpoint, match="pickle"):
        _video(vengine, motion_module=str(tmp_path / "mm.safetensors"))


@pytest.mark.parametrize("fields, error, words", [
    ({"frames": 9}, InvalidRequest, "at most 8 frames"),
    ({"motion_module": "no-such-module"}, ModelNotFound, "unknown motion module 'no-such-module'"),
    ({"motion_module": "guoyww/animatediff-motion-adapter-v1-5-2"}, ModelNotFound, "hub is offline"),
    ({"init_image": "NOT_AN_IMAGE"}, BadImage, "not an image"),
    ({"sparse_control": "nowhere", "init_image": "RAMP"}, ModelNotFound, "SparseCtrl model 'nowhere' not found"),
    ({"controlnets": [{"module": "canny"}]}, InvalidRequest, "ControlNet unit 0 .canny. has no image"),
    ({"sparse_control": "tiny-sparse", "init_image": "RAMP", "controlnets": [{"module": "none", "image": "RAMP"}]},
     InvalidRequest, "SparseCtrl or ControlNet units"),
])
def test_bad_input_is_one_line(vengine, video_dirs, fields, error, words):
    paths = {"NOT_AN_IMAGE": str(video_dirs / "not-an-image.png"), "RAMP": str(video_dirs / "ramp.png")}
    fields = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}
    fields["controlnets"] = [{k: paths.get(v, v) for k, v in unit.items()} for unit in fields.get("controlnets", [])]
    with pytest.raises(error, match=words) as caught:
        _video(vengine, **fields)
    assert "\n" not in str(caught.value)


def test_model_that_cannot_animate(vengine, model_store, tmp_path):
    with pytest.raises(InvalidRequest, match="SDXL"):
        _video(vengine, model=str(model_store["sdxl"]))
    from diffusers import MotionAdapter

    MotionAdapter(block_out_channels=(32, 32), motion_layers_per_block=1, motion_norm_num_groups=16,
                  motion_num_attention_heads=2).save_pretrained(tmp_path / "wrong-shape")
    with pytest.raises(InvalidRequest, match=r"made for a UNet with channels \[32, 32\]"):
        _video(vengine, motion_module=str(tmp_path / "wrong-shape"))


def test_motion_folder_default_needs_a_choice(vengine, video_dirs, tmp_path):
    from huabu.engine.generate import Engine

    tiny_motion_adapter(seed=4).save_pretrained(tmp_path / "two" / "a")
    tiny_motion_adapter(seed=5).save_pretrained(tmp_path / "two" / "b")
    crowded = Engine(vengine.settings.with_(motion_dir=tmp_path / "two"), vengine.models)
    with pytest.raises(ModelNotFound, match="pass --motion-module NAME .* holds a, b"):
        _video(crowded)
