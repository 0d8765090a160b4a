"""`huabu tiny eval-lora`: how far huabu-tiny's two demonstration LoRAs move its output, and what they cost.

For held-out prompts at fixed seeds (huabu.tiny.lora_data's eval scenes), each LoRA is applied through
`Engine.generate` at weights 0, 0.5 and 1 (the prompt is the same at every weight; weight 0 is the base model):

- style (paper-cut): total-variation distance between the colour histogram of the output's object pixels (those far
  from the border colour, as huabu.tiny.measure reads a scene) and the target histogram pooled from real paper-cut
  renders of the same scenes. It should fall as the weight rises.
- subject (hbdragon): how often the nearest glyph template (huabu-tiny's 64 objects plus the dragon, matched as
  huabu.tiny.measure.identify does) is the dragon, and the mean template error against the dragon. The share should
  rise as the weight rises.
- both: background-colour and position accuracy, which should stay within 10 points of weight 0.
"""

from __future__ import annotations

import numpy as np

from huabu.core.errors import InvalidRequest
from huabu.core.settings import BUILTIN_MODEL, Settings
from huabu.tiny import lora_data as L
from huabu.tiny import measure as M
from huabu.tiny import scenes as S
from huabu.tiny.demo_configs import LoraEvalConfig

LEVELS = 4  # histogram levels per RGB channel
ADHERENCE_POINTS = 0.10  # background/position accuracy may drop this much from weight 0


def object_histogram(image: np.ndarray) -> np.ndarray | None:
    """Normalised LEVELS^3-bin RGB histogram of the object pixels, or None when nothing stands out."""
    _, background = M.background_colour(image)
    pixels = image[M.object_mask(image, background)]
    if len(pixels) == 0:
        return None
    q = (pixels.astype(np.int32) * LEVELS) // 256
    counts = np.bincount((q[:, 0] * LEVELS + q[:, 1]) * LEVELS + q[:, 2], minlength=LEVELS**3).astype(np.float64)
    return counts / counts.sum()


def target_histogram(images: list[np.ndarray]) -> np.ndarray:
    """The object-pixel histogram pooled over images (each image weighted by its object pixel count)."""
    total = np.zeros(LEVELS**3)
    for image in images:
        _, background = M.background_colour(image)
        pixels = image[M.object_mask(image, background)]
        q = (pixels.astype(np.int32) * LEVELS) // 256
        total += np.bincount((q[:, 0] * LEVELS + q[:, 1]) * LEVELS + q[:, 2], minlength=LEVELS**3)
    return total / max(total.sum(), 1.0)


def histogram_distance(image: np.ndarray, target: np.ndarray) -> float:
    """Total-variation distance (0 = same colours, 1 = disjoint) of an image's object colours to `target`; 1 when
    the image shows no object."""
    histogram = object_histogram(image)
    return 1.0 if histogram is None else float(0.5 * np.abs(histogram - target).sum())


def _template_errors(image: np.ndarray, background: np.ndarray, xy: tuple[float, float], size: int,
                     glyphs: list[np.ndarray], shift: int = 3) -> np.ndarray:
    """Per glyph, the smallest mean squared difference between its template (on this background) and the windows
    around `xy` shifted by up to `shift` px: huabu.tiny.measure.identify's matching, over any glyph list."""
    bg = background.astype(np.float32) / 255.0
    pad = size // 2 + shift
    padded = np.pad(image.astype(np.float32) / 255.0, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    cx, cy = round(xy[0]) + pad, round(xy[1]) + pad
    windows = np.stack([padded[cy + dy - size // 2 : cy + dy - size // 2 + size,
                               cx + dx - size // 2 : cx + dx - size // 2 + size]
                        for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)])
    errors = []
    for g in glyphs:
        template = g[..., :3] * g[..., 3:] + bg * (1 - g[..., 3:])
        errors.append(float(((windows - template) ** 2).mean(axis=(1, 2, 3)).min()))
    return np.asarray(errors)


def read_dragon(image: np.ndarray, size: int) -> tuple[bool, float]:
    """(is the dragon the nearest of all templates, template error against the dragon) at the object's centroid,
    or at the centre when nothing stands out."""
    _, background = M.background_colour(image)
    xy = M.centroid(M.object_mask(image, background)) or (image.shape[1] / 2, image.shape[0] / 2)
    glyphs = [S.glyph(k, size) for k in range(len(S.OBJECTS))] + [L.dragon_glyph(size)]
    errors = _template_errors(image, background, xy, size, glyphs)
    return int(np.argmin(errors)) == len(glyphs) - 1, float(errors[-1])


def _adherence(images: list[np.ndarray], backgrounds: list[str], positions: list[str], sizes: list[int]
               ) -> dict[str, float]:
    bg_hits = pos_hits = 0
    for image, background, position, size in zip(images, backgrounds, positions, sizes):
        name, rgb = M.background_colour(image)
        xy = M.centroid(M.object_mask(image, rgb))
        bg_hits += name == background
        pos_hits += xy is not None and M.nearest_position(xy, size) == position
    n = max(1, len(images))
    return {"background_accuracy": bg_hits / n, "position_accuracy": pos_hits / n}


def score_style(images: list[np.ndarray], scenes: list[S.Scene], target: np.ndarray) -> dict[str, float]:
    placed = [scene.objects[0] for scene in scenes]
    return {"histogram_distance": float(np.mean([histogram_distance(image, target) for image in images])),
            **_adherence(images, [s.background for s in scenes], [p.position for p in placed],
                         [p.size for p in placed])}


def score_subject(images: list[np.ndarray], scenes: list[L.SubjectScene]) -> dict[str, float]:
    readings = [read_dragon(image, scene.size) for image, scene in zip(images, scenes)]
    return {"dragon_top1": float(np.mean([hit for hit, _ in readings])),
            "dragon_error": float(np.mean([error for _, error in readings])),
            **_adherence(images, [s.background for s in scenes], [s.position for s in scenes],
                         [s.size for s in scenes])}


def _trend(rows: list[dict], key: str, direction: int) -> bool:
    """Whether `key` moves in `direction` (+1 up, -1 down) from each weight to the next, and overall."""
    values = [row[key] for row in rows]
    steps = all(direction * (b - a) >= 0 for a, b in zip(values, values[1:]))
    return steps and direction * (values[-1] - values[0]) > 0


def _within(rows: list[dict], base: dict) -> bool:
    keys = ("background_accuracy", "position_accuracy")
    return all(row[k] >= base[k] - ADHERENCE_POINTS - 1e-9 for row in rows for k in keys)


def evaluate_lora(cfg: LoraEvalConfig, settings: Settings | None = None, engine=None) -> dict[str, object]:
    """Every figure of `huabu tiny eval-lora` as one dict (its --json line)."""
    from huabu.engine.generate import Engine
    from huabu.tiny.eval_control import generate

    if not cfg.style and not cfg.subject:
        raise InvalidRequest("give the LoRA to measure: --style FILE and/or --subject FILE")
    weights = sorted({float(w) for w in cfg.weights} | {0.0})  # weight 0 is the base every figure is held against
    engine = engine or Engine(settings or Settings.from_env())
    model = cfg.model or BUILTIN_MODEL
    result: dict[str, object] = {"weights": weights}

    def rows_for(lora: str, prompts: list[str], score) -> list[dict]:
        rows = []
        for weight in weights:
            images = generate(engine, model, prompts, cfg,
                              lambda i, weight=weight: {"loras": [{"name": lora, "weight": weight}]})
            rows.append({"weight": weight, **score(images)})
        return rows

    if cfg.style:
        scenes = L.style_eval_scenes(cfg.count)
        real = [L.render_papercut(scene) for scene in scenes]
        target = target_histogram(real)
        rows = rows_for(cfg.style, [s.caption + L.STYLE_SUFFIX for s in scenes],
                        lambda images: score_style(images, scenes, target))
        plain = [S.render(s.background, s.objects) for s in scenes]
        result["style"] = {"lora": cfg.style, "rows": rows, "prompts": len(scenes),
                           "closer_with_weight": _trend(rows, "histogram_distance", -1),
                           "adherence_within_10_points": _within(rows, rows[0]),
                           "real_papercut": score_style(real, scenes, target),
                           "real_plain": score_style(plain, scenes, target)}
    if cfg.subject:
        scenes = L.subject_eval_scenes(cfg.count)
        rows = rows_for(cfg.subject, [s.caption for s in scenes], lambda images: score_subject(images, scenes))
        result["subject"] = {"lora": cfg.subject, "rows": rows, "prompts": len(scenes),
                             "closer_with_weight": _trend(rows, "dragon_top1", +1),
                             "adherence_within_10_points": _within(rows, rows[0]),
                             "real_dragon": score_subject([L.render_subject(s) for s in scenes], scenes)}
    result["settings"] = {"model": model, "steps": cfg.steps, "cfg_scale": cfg.cfg, "sampler": "DPM++ 2M",
                          "seed": cfg.seed}
    return result


def format_lora_report(r: dict[str, object]) -> str:
    s = r["settings"]
    lines = [f"held-out prompts on {s['model']}, {s['steps']} steps, CFG {s['cfg_scale']:g}, seeds from {s['seed']}:"]

    def table(part: dict, real_key: str, columns: list[tuple[str, str, str]]) -> None:
        """Rows per weight, then the real renders; `columns` are (key, label, format) beside the adherence."""
        head = " | ".join(f"{label:>15}" for _, label, _ in columns)
        lines.append(f"  {'weight':>6} | {head} | background | position")
        for label, row in [(f"{row['weight']:g}", row) for row in part["rows"]] + [("real", part[real_key])]:
            cells = " | ".join(f"{format(row[key], fmt):>15}" for key, _, fmt in columns)
            lines.append(f"  {label:>6} | {cells} | {row['background_accuracy']:>10.1%} | "
                         f"{row['position_accuracy']:>8.1%}")

    def verdict(part: dict, trend: str) -> None:
        lines.append(f"  {trend} as the weight rises: {'yes' if part['closer_with_weight'] else 'no'}; background and "
                     f"position within 10 points of weight 0: {'yes' if part['adherence_within_10_points'] else 'no'}")

    if "style" in r:
        part = r["style"]
        lines.append(f"style LoRA {part['lora']} ({part['prompts']} prompts + '{L.STYLE_SUFFIX[2:]}'): distance of "
                     f"the object colours to paper-cut renders' (plain renders: "
                     f"{part['real_plain']['histogram_distance']:.3f})")
        table(part, "real_papercut", [("histogram_distance", "colour distance", ".3f")])
        verdict(part, "closer")
    if "subject" in r:
        part = r["subject"]
        lines.append(f"subject LoRA {part['lora']} ({part['prompts']} prompts with '{L.TRIGGER}'): read as the dragon "
                     f"(nearest of 65 templates), and the dragon template's error")
        table(part, "real_dragon", [("dragon_top1", "dragon top-1", ".1%"), ("dragon_error", "dragon error", ".4f")])
        verdict(part, "more dragon")
    return "\n".join(lines)
