"""`huabu tiny eval-video`: does huabu-tiny's motion module move objects the way held-out prompts ask?

Held-out moving scenes (huabu.tiny.video_scenes.eval_moving_scenes: object-background-motion triples never trained on,
every motion equally often) are generated at fixed seeds through `Engine.generate_video`, and scored by
huabu.tiny.video_measure: motion-direction accuracy (the object's centroid and size trajectory against the caption),
per motion, and frame-to-frame consistency (mean SSIM of consecutive frames). The real rendered clips, scored the
same way, are the ceiling. Target: direction accuracy >= 70%.
"""

from __future__ import annotations

import numpy as np

from huabu.core.settings import BUILTIN_MODEL, Settings
from huabu.tiny import video_scenes as V
from huabu.tiny.demo_configs import VideoEvalConfig

DIRECTION_TARGET = 0.7


def generate_clips(engine, cfg: VideoEvalConfig, prompts: list[str]) -> tuple[list[list[np.ndarray]], str]:
    """One video per prompt, prompt i at seed cfg.seed + i, with the model's own motion module unless cfg.motion;
    also the motion module's name as the engine resolved it."""
    from huabu.core.requests import VideoRequest

    videos, motion = [], ""
    for i, prompt in enumerate(prompts):
        request = VideoRequest.create(prompt=prompt, model=cfg.model or BUILTIN_MODEL, frames=cfg.frames,
                                      steps=cfg.steps, cfg_scale=cfg.cfg, seed=cfg.seed + i,
                                      motion_module=cfg.motion or None)
        result = engine.generate_video(request)
        videos.append([np.asarray(frame.convert("RGB")) for frame in result.frames])
        motion = result.params.get("Motion module", motion)
    return videos, motion


def evaluate_video(cfg: VideoEvalConfig, settings: Settings | None = None, engine=None) -> dict[str, object]:
    """Every figure of `huabu tiny eval-video` as one dict (its --json line)."""
    from huabu.engine.generate import Engine
    from huabu.tiny.video_measure import score_motion

    engine = engine or Engine(settings or Settings.from_env())
    scenes = V.eval_moving_scenes(cfg.clips, frames=cfg.frames)
    motions = [scene.motion for scene in scenes]
    backgrounds = [scene.background for scene in scenes]
    videos, motion = generate_clips(engine, cfg, [scene.caption for scene in scenes])
    generated = score_motion(videos, motions, backgrounds)
    real = score_motion([list(V.render_moving(scene)) for scene in scenes], motions, backgrounds)
    return {
        "direction_accuracy": generated["direction_accuracy"],
        "per_motion": generated["per_motion"],
        "frame_consistency": generated["frame_consistency"],
        "target_met": generated["direction_accuracy"] >= DIRECTION_TARGET,
        "real_direction_accuracy": real["direction_accuracy"],
        "real_per_motion": real["per_motion"],
        "real_frame_consistency": real["frame_consistency"],
        "settings": {"model": cfg.model or BUILTIN_MODEL, "motion": motion,
                     "clips": len(scenes), "frames": cfg.frames, "steps": cfg.steps, "cfg_scale": cfg.cfg,
                     "sampler": "DPM++ 2M", "seeds": [cfg.seed, cfg.seed + len(scenes) - 1]},
    }


def format_video_report(r: dict[str, object]) -> str:
    s = r["settings"]
    lines = [f"held-out moving-scene prompts ({s['clips']} clips of {s['frames']} frames, {s['steps']} steps, CFG "
             f"{s['cfg_scale']:g}, seeds {s['seeds'][0]}-{s['seeds'][1]}, motion module {s['motion']}), "
             f"generated | real clips:",
             f"  direction accuracy  {r['direction_accuracy']:>6.1%} | {r['real_direction_accuracy']:>6.1%}  "
             f"(target >= {DIRECTION_TARGET:.0%}: {'met' if r['target_met'] else 'not met'})"]
    for motion in V.MOTIONS:
        if motion in r["per_motion"]:
            generated, real = r["per_motion"][motion], r["real_per_motion"][motion]
            lines.append(f"    {motion:<8}          {generated:>6.1%} | {real:>6.1%}")
    lines.append(f"  frame consistency   {r['frame_consistency']:>6.3f} | {r['real_frame_consistency']:>6.3f}  "
                 f"(mean SSIM of consecutive frames)")
    return "\n".join(lines)
