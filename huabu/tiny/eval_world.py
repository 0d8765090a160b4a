"""`huabu tiny eval --world geneval`: GenEval-style categories on held-out scenes of huabu.tiny.world, prompted
in English or Chinese, with the real renders' scores as the ceilings.

Both languages prompt the same scenes at the same seeds, so `--lang en` and `--lang zh` differ only in the words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huabu.tiny import eval as E
from huabu.tiny import scenes as S
from huabu.tiny import world as W
from huabu.tiny import world_measure as WM

CATEGORY_LABELS = {"single_object": "single object", "two_objects": "two objects", "counting": "counting",
                   "colours": "colours", "position": "position", "colour_attribution": "colour attribution",
                   "background": "background colour"}


@dataclass(frozen=True)
class WorldEvalSettings:
    model: Path = E.TINY_DIR
    lang: str = "en"  # which caption prompts the model: "en" or "zh"
    count: int = 20  # held-out scenes per category
    steps: int = 20
    cfg_scale: float = 5.0
    batch: int = 25
    sampler: str = "DPM++ 2M"
    lora: Path | None = None
    dtype: str = "fp32"
    grid: Path | None = None  # a PNG: two real held-out scenes per category above the generated ones


def prompt(scene: S.Scene, lang: str) -> str:
    return scene.attrs["caption_zh"] if lang == "zh" else scene.caption


def evaluate_world(settings: WorldEvalSettings, pipe=None) -> dict[str, object]:
    """Per category (and the background colour over all), generated and real-render scores, as one dict; `pipe`, a
    pipeline already loaded (other weights in `settings.model`'s shapes), instead of loading `settings.model`."""
    scenes = [s for c in W.CATEGORIES for s in W.eval_scenes(c, settings.count)]
    real = [W.render(s) for s in scenes]
    pipe = pipe or E.load_pipeline(Path(settings.model), settings.sampler, settings.lora, settings.dtype)
    gen_settings = E.EvalSettings(steps=settings.steps, cfg_scale=settings.cfg_scale, batch=settings.batch)
    generated = E.generate(pipe, [prompt(s, settings.lang) for s in scenes], gen_settings)
    if settings.grid is not None:
        from huabu.tiny.train_vae import save_grid

        picks = [i for i in range(len(scenes)) if i % settings.count < 2]
        save_grid([[real[i] for i in picks], [generated[i] for i in picks]], Path(settings.grid), scale=2)
    return {"scores": WM.score(generated, scenes), "ceiling_real": WM.score(real, scenes),
            "settings": {"lang": settings.lang, "count": settings.count, "steps": settings.steps,
                         "cfg_scale": settings.cfg_scale, "sampler": settings.sampler, "model": str(settings.model)}}


def format_world_report(r: dict[str, object]) -> str:
    s = r["settings"]
    lines = [f"held-out GenEval-style prompts ({s['count']} per category, {s['lang']}), generated | real scenes:"]
    for key, label in CATEGORY_LABELS.items():
        lines.append(f"  {label:<20} {r['scores'][key]:>7.1%} | {r['ceiling_real'][key]:>7.1%}")
    return "\n".join(lines)
