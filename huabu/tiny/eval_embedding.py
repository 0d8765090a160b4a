"""`huabu tiny eval-embedding`: does a textual inversion embedding make huabu-tiny draw a glyph it never saw?

The embedding (trained on huabu.tiny.lora_data's 16 hbdragon images, `huabu train embedding --token hbdragon`) is
put in an embeddings folder of its own and the held-out subject prompts ("a small hbdragon in the bottom left
corner on a gray background", combinations never trained on) are drawn twice at fixed seeds through
Engine.generate: with the embedding, and without it (the base model reading "hbdragon" as a word). Each image is
read as huabu.tiny.eval_lora reads the subject LoRA's: the dragon's share of top-1 among the 64 glyph templates
plus the dragon, and background and position accuracy, which must stay within 10 points of the base.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from huabu.core.errors import InvalidRequest
from huabu.core.settings import BUILTIN_MODEL, Settings
from huabu.tiny import lora_data as L
from huabu.tiny.demo_configs import EmbeddingEvalConfig
from huabu.tiny.eval_lora import ADHERENCE_POINTS, score_subject

TARGET_TOP1 = 0.5


def evaluate_embedding(cfg: EmbeddingEvalConfig, settings: Settings | None = None) -> dict[str, object]:
    """Every figure of `huabu tiny eval-embedding` as one dict (its --json line)."""
    from huabu.engine.generate import Engine
    from huabu.tiny.eval_control import generate

    path = Path(cfg.embedding).expanduser()
    if not path.is_file():
        raise InvalidRequest(f"--embedding {cfg.embedding}: no such file (train one with `huabu train embedding`)")
    if path.stem != L.TRIGGER:
        raise InvalidRequest(f"the prompts name the embedding {L.TRIGGER!r}; its file must be {L.TRIGGER}"
                             f"{path.suffix} (got {path.name})")
    settings = settings or Settings.from_env()
    model = cfg.model or BUILTIN_MODEL
    scenes = L.subject_eval_scenes(cfg.count)
    prompts = [scene.caption for scene in scenes]
    with tempfile.TemporaryDirectory() as folder:
        with_dir, without_dir = Path(folder) / "with", Path(folder) / "without"
        with_dir.mkdir()
        without_dir.mkdir()
        shutil.copy(path, with_dir / path.name)
        rows = {}
        for label, embeddings in (("base", without_dir), ("embedding", with_dir)):
            engine = Engine(settings.with_(embeddings_dir=embeddings))
            rows[label] = score_subject(generate(engine, model, prompts, cfg), scenes)
    base, used = rows["base"], rows["embedding"]
    within = all(used[key] >= base[key] - ADHERENCE_POINTS - 1e-9 for key in ("background_accuracy",
                                                                               "position_accuracy"))
    return {"embedding": str(path), "prompts": len(prompts), "base": base, "with_embedding": used,
            "real_dragon": score_subject([L.render_subject(s) for s in scenes], scenes),
            "meets_target": used["dragon_top1"] >= TARGET_TOP1 and within,
            "adherence_within_10_points": within,
            "settings": {"model": model, "steps": cfg.steps, "cfg_scale": cfg.cfg, "sampler": "DPM++ 2M",
                         "seed": cfg.seed}}


def format_embedding_report(r: dict[str, object]) -> str:
    s = r["settings"]
    lines = [f"{r['prompts']} held-out hbdragon prompts on {s['model']}, {s['steps']} steps, CFG {s['cfg_scale']:g}, "
             f"seeds from {s['seed']}; embedding {r['embedding']}:",
             f"  {'':>14} | dragon top-1 | dragon error | background | position"]
    for label, key in (("base", "base"), ("with embedding", "with_embedding"), ("real renders", "real_dragon")):
        row = r[key]
        lines.append(f"  {label:>14} | {row['dragon_top1']:>12.1%} | {row['dragon_error']:>12.4f} | "
                     f"{row['background_accuracy']:>10.1%} | {row['position_accuracy']:>8.1%}")
    lines.append(f"  target (top-1 >= {TARGET_TOP1:.0%}, background and position within 10 points of the base): "
                 f"{'met' if r['meets_target'] else 'not met'}")
    return "\n".join(lines)
