"""Video measures on real renders of moving scenes, and the moving-scene generator itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from huabu.engine.metrics import first_frame_fidelity
from huabu.tiny import video_scenes as V
from huabu.tiny.video_measure import STATIC, frame_consistency, motion_direction


@pytest.mark.parametrize("motion", V.MOTIONS)
def test_motion_direction_reads_every_motion(motion):
    rng = np.random.default_rng(11)
    for obj, background in ((15, "black"), (29, "white"), (53, "yellow")):  # rocket, pig face, red heart
        scene = V.moving_scene(rng, obj, background, motion)
        assert motion_direction(V.render_moving(scene)) == motion, scene.caption
        assert motion_direction(V.render_moving(scene), background=background) == motion


def test_motion_direction_static_and_empty():
    frame = V.render_moving(V.training_moving_scene(0, 0))[0]
    assert motion_direction([frame] * 8) == STATIC
    assert motion_direction([np.full((64, 64, 3), 20, np.uint8)] * 8) == STATIC


def test_frame_consistency_orders_smooth_above_noise():
    smooth = V.render_moving(V.training_moving_scene(0, 1))
    noise = np.random.default_rng(0).integers(0, 256, size=smooth.shape, dtype=np.uint8)
    assert frame_consistency([smooth[0], smooth[0]]) == pytest.approx(1.0)
    assert frame_consistency(smooth) > 0.8
    assert frame_consistency(noise) < 0.1


def test_first_frame_fidelity():
    image = np.full((8, 8, 3), 100, np.uint8)
    assert first_frame_fidelity(image, image) == {"psnr": math.inf, "mean_abs_diff": 0.0}
    shifted = first_frame_fidelity(Image.fromarray(image), image + 10)
    assert shifted["mean_abs_diff"] == pytest.approx(10.0)
    assert shifted["psnr"] == pytest.approx(10 * math.log10(255**2 / 100))
    # A larger input image is compared at the frame's size.
    assert first_frame_fidelity(Image.new("RGB", (32, 32), (100, 100, 100)), image)["mean_abs_diff"] == 0.0


def test_moving_scenes_are_deterministic_and_hold_out_combinations():
    a, b = V.training_clip(3, 17), V.training_clip(3, 17)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert a[0].shape == (V.FRAMES, 64, 64, 3) and a[0].dtype == np.uint8
    stream = [V.training_moving_scene(0, i, frames=4) for i in range(300)]
    assert not any(V.is_held_out_motion(s.obj, s.background, s.motion) for s in stream)
    assert {s.motion for s in stream} == set(V.MOTIONS)
    held = V.eval_moving_scenes(12)
    assert all(V.is_held_out_motion(s.obj, s.background, s.motion) for s in held)
    assert [s.motion for s in held[:6]] == list(V.MOTIONS)
    rocket = V.moving_scene(np.random.default_rng(0), 15, "black", "up")
    assert rocket.caption == "a rocket moving up on a black background"
    assert V.motion_caption(0, "grow", "orange") == "a red apple growing on an orange background"


def test_moving_objects_stay_inside_the_frame():
    for i in range(60):
        scene = V.training_moving_scene(1, i)
        for (placed,) in scene.frames:
            assert placed.x >= 0 and placed.y >= 0 and placed.x + placed.size <= 64 and placed.y + placed.size <= 64


def test_score_motion_counts_per_motion():
    from huabu.tiny.video_measure import score_motion

    scenes = V.eval_moving_scenes(6, frames=8)
    videos = [V.render_moving(s) for s in scenes]
    perfect = score_motion(videos, [s.motion for s in scenes], [s.background for s in scenes])
    assert perfect["direction_accuracy"] == 1.0 and perfect["per_motion"] == {m: 1.0 for m in V.MOTIONS}
    assert perfect["frame_consistency"] > 0.8
    swapped = score_motion(videos, ["right", "left", "down", "up", "shrink", "grow"])
    assert swapped["direction_accuracy"] == 0.0
