"""`huabu tiny eval-text`: does huabu-tiny write the words it is asked to, where it is asked to?

Held-out text scenes (huabu.tiny.text_scenes: strings never rendered for training, half Chinese, half Latin) are
generated from their captions at 128 x 128 through `Engine.generate`, with a glyph ControlNet unit drawing the quoted
word in the scene's box, and again without it. Each image's box is read by OCR (huabu.engine.ocr.read_box, the
recogniser on the cropped box, as AnyText's benchmark reads its boxes) and scored as AnyText scores: sentence
accuracy (the reading equals the word) and NED (1 - edit distance / the longer length). The real renders, read the
same way, are the ceiling: what this OCR gets from perfect images of that size. The scene's background and the
object's side are read back too, so the glyph unit is seen not to cost the model its other abilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from huabu.core.settings import BUILTIN_MODEL, Settings
from huabu.core.text_boxes import GLYPH
from huabu.tiny import text_scenes as T
from huabu.tiny.demo_configs import TextEvalConfig

# The targets: per script (sentence accuracy, NED), and the share of the OCR ceiling to reach.
TARGETS = {"zh": (0.70, 0.85), "latin": (0.80, 0.90)}
CEILING_SHARE = 0.85
LAYOUT_TARGET = 0.90  # background and object side read back correctly
_TEXT_MARGIN = 4  # pixels around a word's box left out when looking for the object


def ocr_scores(images: list[np.ndarray], scenes: list[T.TextScene]) -> dict[str, dict[str, float]]:
    """Sentence accuracy and mean NED per script (zh, latin) of the words read in each scene's box."""
    from huabu.engine.ocr import ned, read_box

    scores: dict[str, dict[str, float]] = {}
    for script in T.SCRIPTS:
        pairs = [(read_box(image, scene.box), scene.text) for image, scene in zip(images, scenes)
                 if scene.script == script]
        if pairs:
            scores[script] = {"accuracy": float(np.mean([read == truth for read, truth in pairs])),
                              "ned": float(np.mean([ned(read, truth) for read, truth in pairs])), "count": len(pairs)}
    return scores


def layout_scores(images: list[np.ndarray], scenes: list[T.TextScene]) -> dict[str, float]:
    """How often the background colour and the object's place (away from the word's box) read back as asked."""
    from huabu.tiny.measure import background_colour, centroid, object_mask

    size = T.TEXT_IMAGE_SIZE
    centres = {p: np.add(T.S.anchor_xy(p, T.OBJECT_SIZE, size), T.OBJECT_SIZE / 2) for p in T.LAYOUTS}
    backgrounds, positions = [], []
    for image, scene in zip(images, scenes):
        name, rgb = background_colour(image)
        mask = object_mask(image, rgb)
        x0, y0, x1, y1 = scene.box
        mask[max(0, y0 - _TEXT_MARGIN):y1 + _TEXT_MARGIN, max(0, x0 - _TEXT_MARGIN):x1 + _TEXT_MARGIN] = False
        xy = centroid(mask)
        place = None if xy is None else min(centres, key=lambda p: float(np.hypot(*(np.asarray(xy) - centres[p]))))
        backgrounds.append(name == scene.background)
        positions.append(place == scene.position)
    return {"background": float(np.mean(backgrounds)), "position": float(np.mean(positions))}


def _generate(engine, cfg: TextEvalConfig, model: str, scenes: list[T.TextScene], glyph: bool) -> list[np.ndarray]:
    from huabu.core.requests import GenerateRequest

    images = []
    scale = 2 if cfg.hires else 1  # the hires fix starts at half the scenes' size: the boxes shrink with it
    for i, scene in enumerate(scenes):
        fields = {"loras": [{"name": cfg.lora}]} if cfg.lora else {}
        if glyph:
            fields.update(controlnets=[{"module": GLYPH, "model": cfg.controlnet, "weight": cfg.weight}],
                          text_boxes=[[v // scale for v in scene.box]])
        if cfg.hires:
            fields.update(enable_hr=True, hr_scale=2, hr_upscaler=cfg.upscaler, denoising_strength=cfg.hires,
                          hr_second_pass_steps=cfg.hires_steps)
        size = T.TEXT_IMAGE_SIZE // scale
        request = GenerateRequest.create(prompt=scene.caption, model=model, steps=cfg.steps, cfg_scale=cfg.cfg,
                                         seed=cfg.seed + i, width=size, height=size, **fields)
        images.append(np.asarray(engine.generate(request).images[0].convert("RGB")))
    return images


def _targets_met(controlled: dict, ceiling: dict) -> dict[str, bool]:
    met = {}
    for script, (accuracy, ned) in TARGETS.items():
        if script in controlled:
            got, top = controlled[script], ceiling[script]
            met[script] = (got["accuracy"] >= accuracy and got["ned"] >= ned
                           and got["accuracy"] >= CEILING_SHARE * top["accuracy"]
                           and got["ned"] >= CEILING_SHARE * top["ned"])
    return met


def evaluate_text(cfg: TextEvalConfig, settings: Settings | None = None, engine=None) -> dict[str, object]:
    """Every figure of `huabu tiny eval-text` as one dict (its --json line)."""
    from huabu.engine.generate import Engine

    engine = engine or Engine(settings or Settings.from_env())
    model_spec = cfg.model or BUILTIN_MODEL
    model = engine.models.load(model_spec)
    controlnet = engine.controlnets.resolve(cfg.controlnet, GLYPH, model.denoiser, model.ref.path)
    scenes = T.eval_text_scenes(cfg.count, cfg.scene_seed)
    real = [T.render_text_scene(scene) for scene in scenes]
    controlled = _generate(engine, cfg, model_spec, scenes, glyph=True)
    uncontrolled = _generate(engine, cfg, model_spec, scenes, glyph=False)
    result: dict[str, object] = {
        "controlnet": controlnet.name,
        "glyph": ocr_scores(controlled, scenes), "no_glyph": ocr_scores(uncontrolled, scenes),
        "ceiling": ocr_scores(real, scenes),
        "layout": {"glyph": layout_scores(controlled, scenes), "no_glyph": layout_scores(uncontrolled, scenes),
                   "real": layout_scores(real, scenes)},
    }
    result["targets_met"] = _targets_met(result["glyph"], result["ceiling"])
    result["layout_target_met"] = min(result["layout"]["glyph"].values()) >= LAYOUT_TARGET
    if cfg.grid:
        from huabu.tiny.train_vae import save_grid

        half = (len(scenes) + 1) // 2  # four Chinese and four Latin scenes
        shown = [*range(min(4, half)), *range(half, min(half + 4, len(scenes)))]
        maps = [np.asarray(T.scene_glyph_map(scenes[i])) for i in shown]
        rows = [[images[i] for i in shown] for images in (real, controlled, uncontrolled)]
        save_grid([rows[0], maps, *rows[1:]], Path(cfg.grid), cols=8, scale=2)
    result["settings"] = {"model": model.name, "count": cfg.count, "size": T.TEXT_IMAGE_SIZE, "steps": cfg.steps,
                          "cfg_scale": cfg.cfg, "weight": cfg.weight, "sampler": "DPM++ 2M",
                          "seeds": [cfg.seed, cfg.seed + len(scenes) - 1], "scene_seed": cfg.scene_seed,
                          "lora": cfg.lora or None,
                          "hires": {"denoise": cfg.hires, "steps": cfg.hires_steps, "upscaler": cfg.upscaler}
                          if cfg.hires else None}
    return result


def format_text_report(r: dict[str, object]) -> str:
    s = r["settings"]
    model = f"{s['model']} + LoRA {s['lora']}" if s.get("lora") else s["model"]
    if s.get("hires"):
        hires = s["hires"]
        model += (f" (made at {s['size'] // 2} px, then the hires fix 2x with {hires['upscaler']}, denoising "
                  f"{hires['denoise']:g}, {hires['steps']} steps)")
    lines = [f"{s['count']} held-out text scenes at {s['size']}x{s['size']} on {model} with {r['controlnet']}, "
             f"{s['steps']} steps, CFG {s['cfg_scale']:g}, glyph weight {s['weight']:g}; OCR sentence accuracy / NED:"]
    for script, label in (("zh", "Chinese"), ("latin", "Latin")):
        if script not in r["ceiling"]:
            continue
        cells = [f"{name} {r[key][script]['accuracy']:.3f} / {r[key][script]['ned']:.3f}"
                 for key, name in (("glyph", "with glyph"), ("no_glyph", "without"), ("ceiling", "real renders"))]
        accuracy, ned = TARGETS[script]
        met = "met" if r["targets_met"].get(script) else "not met"
        lines.append(f"  {label} ({r['ceiling'][script]['count']}): {', '.join(cells)} (target >= {accuracy:g} / "
                     f"{ned:g} and {CEILING_SHARE:.0%} of the real renders: {met})")
    layout = r["layout"]
    lines.append("  background / object side read back: " + ", ".join(
        f"{name} {layout[key]['background']:.2f} / {layout[key]['position']:.2f}"
        for key, name in (("glyph", "with glyph"), ("no_glyph", "without"), ("real", "real renders"))))
    return "\n".join(lines)
