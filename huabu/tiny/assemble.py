"""Put the trained stages together as huabu-tiny: a standard StableDiffusionPipeline folder in fp16 safetensors,
plus the CLIP vision tower that `huabu tiny eval` scores with (shipped beside it, not inside the pipeline); and
huabu-tiny-dit: a StableDiffusion3Pipeline folder of the DiT stage's transformer over huabu-tiny's VAE and CLIP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from huabu.core.atomic import atomic_dir
from huabu.tiny.train_dit import load_frozen, sd3_pipeline
from huabu.training.diffusion import noise_scheduler

DEFAULT_OUT = Path(__file__).parent / "huabu-tiny"
DIT_OUT = Path(__file__).parent / "huabu-tiny-dit"
# The committed BPE tokenizer files (see huabu.tiny.tokenizer). transformers 5 saves a tokenizer as tokenizer.json
# alone; the vocab.json + merges.txt pair is what transformers 4 and SD tooling read, so the shipped folder keeps it.
BPE_TOKENIZER = DEFAULT_OUT / "tokenizer"


def assemble(clip_dir: Path, vae_dir: Path, unet_dir: Path, out: Path = DEFAULT_OUT) -> Path:
    """Write the pipeline to `out` and the scorer to `<out>-scorer`; both fp16."""
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(vae_dir),
        text_encoder=CLIPTextModel.from_pretrained(clip_dir),
        tokenizer=CLIPTokenizer.from_pretrained(clip_dir),
        unet=UNet2DConditionModel.from_pretrained(unet_dir),
        scheduler=DPMSolverMultistepScheduler.from_config(noise_scheduler().config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    save_fp16(pipe, out, ("tokenizer",))
    scorer = Path(f"{out}-scorer")
    CLIPVisionModelWithProjection.from_pretrained(clip_dir).to(torch.float16).save_pretrained(scorer)
    projection = CLIPModel.from_pretrained(clip_dir).text_projection.weight.detach().to(torch.float16).contiguous()
    save_file({"weight": projection}, str(scorer / "text_projection.safetensors"))
    return out


def assemble_on_base(unet_dir: Path, base: Path, out: Path) -> Path:
    """Write a UNet stage run under `--base` as a StableDiffusionPipeline folder (fp16): the trained UNet over the
    base model's VAE and scheduler, and the base's CLIP or, when the stage trained its text encoder (`--text-lr`),
    that one and its tokenizer. No scorer: `huabu tiny eval` scores with the shipped one."""
    trained_text = (unet_dir / "text_encoder").is_dir()
    text = unet_dir if trained_text else base
    pipe = StableDiffusionPipeline.from_pretrained(
        base, unet=UNet2DConditionModel.from_pretrained(unet_dir),
        text_encoder=CLIPTextModel.from_pretrained(text / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(text / "tokenizer"), local_files_only=True)
    with atomic_dir(out) as tmp:
        save_fp16(pipe, tmp, () if trained_text else ("tokenizer",))
    return out


def save_fp16(pipe, out: Path, tokenizers: tuple[str, ...]) -> None:
    """Save a pipeline in fp16 safetensors with the BPE files as its `tokenizers` folders; a tokenizer saved as
    transformers writes it (one with added characters) keeps its tokenizer.json, written compact."""
    bpe_files = {f.name: f.read_bytes() for f in BPE_TOKENIZER.iterdir()}  # read first: `out` may be DEFAULT_OUT
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    for folder in tokenizers:
        shutil.rmtree(out / folder)
        (out / folder).mkdir()
        for name, data in bpe_files.items():
            (out / folder / name).write_bytes(data)
    for written in out.glob("tokenizer*/tokenizer.json"):
        compact_json(written)


def assemble_dit(transformer_dir: Path, base: Path, text_projection: str = "", out: Path = DIT_OUT) -> Path:
    """Write huabu-tiny-dit to `out`: a StableDiffusion3Pipeline folder (fp16) of the trained transformer and its
    flow scheduler, the base model's VAE and as both CLIP encoders the base model's CLIP or, when the stage trained
    its text encoder (`--text-lr`), that one and its tokenizer; no T5."""
    vae, text_encoder, tok = load_frozen(base, text_projection)
    trained_text = (transformer_dir / "text_encoder").is_dir()
    if trained_text:
        text_encoder = CLIPTextModelWithProjection.from_pretrained(transformer_dir / "text_encoder")
        tok = CLIPTokenizer.from_pretrained(transformer_dir / "tokenizer")
    pipe = sd3_pipeline(SD3Transformer2DModel.from_pretrained(transformer_dir), vae, text_encoder, tok,
                        FlowMatchEulerDiscreteScheduler.from_pretrained(transformer_dir))
    # a tokenizer with added characters is saved as transformers writes it; the base one as the shipped BPE files
    with atomic_dir(out) as tmp:
        save_fp16(pipe, tmp, () if trained_text else ("tokenizer", "tokenizer_2"))
    return out


def compact_json(path: Path) -> None:
    """Rewrite a JSON file without indentation. transformers indents tokenizer.json: 3.7 MB for CLIP's vocabulary
    and merges against 1.7 MB compact, and huabu-tiny-dit ships two of them within its 60 MB."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8")), ensure_ascii=False,
                              separators=(",", ":")), encoding="utf-8")
    tmp.replace(path)
