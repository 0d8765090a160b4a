"""Assembling huabu-tiny from trained stages and evaluating it, on toy-sized random stages."""

import json
import struct
from pathlib import Path

import pytest
from training_support import toy_stages


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stages")
    return {**toy_stages(root), "root": root}


def _safetensors_dtypes(path: Path) -> set[str]:
    """Read tensor dtypes from the safetensors header directly (8-byte length + JSON), not through safetensors."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_assembled_folder_is_a_standard_fp16_pipeline(stages):
    import torch
    from diffusers import StableDiffusionPipeline

    from huabu.tiny.assemble import assemble

    out = assemble(stages["clip"], stages["vae"], stages["unet"], stages["root"] / "huabu-tiny")
    for part in ("unet", "vae", "text_encoder"):
        files = list((out / part).glob("*.safetensors"))
        assert files and all(_safetensors_dtypes(f) == {"F16"} for f in files)
    assert (Path(f"{out}-scorer") / "text_projection.safetensors").is_file()
    # the BPE pair (what transformers 4 and SD tools read) is shipped, not only transformers 5's tokenizer.json
    assert {"vocab.json", "merges.txt"} <= {f.name for f in (out / "tokenizer").iterdir()}
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, dtype=torch.float32)
    assert pipe.vae_scale_factor == 4
    image = pipe("a red apple", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3)
    assert pipe.tokenizer("a red apple").input_ids == [49406, 320, 736, 3055, 49407]  # SD 1.x's CLIP ids


def test_eval_prints_every_figure(stages):
    from huabu.tiny.assemble import assemble
    from huabu.tiny.eval import EvalSettings, evaluate, format_report

    out = assemble(stages["clip"], stages["vae"], stages["unet"], stages["root"] / "eval-model")
    grid = stages["root"] / "grid.png"
    result = evaluate(EvalSettings(model=out, scorer=Path(f"{out}-scorer"), steps=2, singles=4, pairs=2, batch=4,
                                   grid=grid))
    from PIL import Image

    assert Image.open(grid).size == (6 * 64 * 2, 2 * 64 * 2)  # 4 singles + 2 pairs, real above generated
    for key in ("background_accuracy", "position_accuracy", "identity_top1", "all_three_accuracy", "pair_accuracy",
                "clip_score", "fd_clip", "vae_psnr"):
        assert isinstance(result[key], float), key
    assert result["ceiling_real"]["background_accuracy"] == 1.0  # real scenes are read back exactly
    assert result["fd_clip"] >= 0
    report = format_report(result)
    assert "pair accuracy" in report and "VAE PSNR" in report
    json.dumps(result)


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_shift():
    import numpy as np

    from huabu.tiny.eval import frechet_distance

    x = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(x, x + 1.0) == pytest.approx(8.0, rel=1e-3)


def test_world_eval_reports_every_category_in_both_languages(stages):
    from huabu.tiny import world as W
    from huabu.tiny.assemble import assemble
    from huabu.tiny.eval_world import CATEGORY_LABELS, WorldEvalSettings, evaluate_world, format_world_report

    out = assemble(stages["clip"], stages["vae"], stages["unet"], stages["root"] / "world-model")
    results = {lang: evaluate_world(WorldEvalSettings(model=out, lang=lang, count=1, steps=2)) for lang in ("en", "zh")}
    for lang, result in results.items():
        assert set(result["scores"]) == set(W.CATEGORIES) | {"background"}
        assert result["ceiling_real"]["position"] == 1.0 and result["settings"]["lang"] == lang
        report = format_world_report(result)
        assert all(label in report for label in CATEGORY_LABELS.values()) and f", {lang})" in report
        json.dumps(result)
