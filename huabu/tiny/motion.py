"""`huabu tiny train motion`: huabu.training.motion on huabu-tiny's moving scenes, with one held-out prompt per
motion in the sample GIFs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from huabu.tiny.video_scenes import MOTIONS, eval_moving_scenes, training_clip
from huabu.training.motion import train_motion
from huabu.training.motion_config import MotionTrainConfig


def sample_prompts() -> list[str]:
    """One held-out prompt per motion."""
    return [scene.caption for scene in eval_moving_scenes(len(MOTIONS))]


def train(cfg: MotionTrainConfig, cancel: Callable[[], bool] | None = None) -> Path:
    """Train (or resume) a motion module on the moving-scene stream of `cfg.seed`, held-out combinations excluded."""
    return train_motion(cfg, lambda i: training_clip(cfg.seed, i, cfg.frames), sample_prompts(), cancel)
