"""Training an AnimateDiff motion module for an SD-shaped model (huabu-tiny) on moving scenes.

A fresh diffusers MotionAdapter, shaped to the base UNet, is merged into it with `UNetMotionModel.from_unet2d`;
the 2D weights stay frozen and only the motion modules learn. The recipe is SD 1.x's: epsilon prediction on the
scaled-linear DDPM schedule with one timestep per clip (all its frames), 10% empty captions for classifier-free
guidance, optional min-SNR weighting. Clip latents are encoded once through the VAE. Batches, caption dropout,
timesteps and noise are functions of (seed, step) and checkpoints are pickle-free (huabu.training.checkpoint), so a
killed run resumes exactly. The result is a MotionAdapter folder that `huabu video --motion-module` loads, with the
optional text LoRA and motion-word layers (huabu.engine.motion_words) trained beside the module in their own files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.training_utils import compute_snr
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from huabu.core.errors import HuabuError
from huabu.engine.motion_modules import MOTION_WORDS_FILE, TEXT_LORA_FILE
from huabu.engine.motion_words import (
    WordRows,
    attach_motion_words,
    build_motion_words,
    load_motion_words,
    load_word_rows,
    motion_module_lists,
    save_motion_words,
)
from huabu.training import loop
from huabu.training.diffusion import CAPTION_DROPOUT, encode_text, noise_scheduler, to_tensor
from huabu.training.loop import Plan, Recipe, Sampled, same_run
from huabu.training.motion_config import MotionTrainConfig
from huabu.training.noise import check_timestep_sampling, draw_timesteps, lowfreq_noise
from huabu.training.schedules import Schedule

# (frames uint8 [F, H, W, 3], caption) for clip index i
ClipSource = Callable[[int], tuple[np.ndarray, str]]

# The image model's cross-attention key/value projections (spatial transformers live under `attentions`, temporal ones
# under `motion_modules`): where a text LoRA lets words the image model never learned change its features.
TEXT_LORA_TARGETS = r".*\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.(to_k|to_v)"


def build_motion_adapter(unet: UNet2DConditionModel, heads: int, max_frames: int) -> MotionAdapter:
    """A fresh MotionAdapter shaped to `unet`, whose temporal layers start as the identity.

    UNetMotionModel builds its temporal layers with the UNet's own norm groups, so the adapter records those. As in
    AnimateDiff, each temporal transformer's output projection starts at zero: the residual path then leaves the
    image model's output untouched until the motion modules have learned something.
    """
    config = unet.config
    adapter = MotionAdapter(block_out_channels=tuple(config.block_out_channels),
                            motion_layers_per_block=config.layers_per_block, motion_num_attention_heads=heads,
                            motion_norm_num_groups=config.norm_num_groups, motion_max_seq_length=max_frames,
                            use_motion_mid_block=True)
    for module in adapter.modules():
        if type(module).__name__ == "AnimateDiffTransformer3D":
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
    return adapter


def motion_modules(unet: UNetMotionModel) -> torch.nn.ModuleDict:
    """The motion modules of a UNetMotionModel as one module (the same objects, not copies): what is trained,
    optimised and checkpointed."""
    return torch.nn.ModuleDict(motion_module_lists(unet))


def motion_unet(unet: UNet2DConditionModel, adapter: MotionAdapter, text_lora_rank: int = 0) -> UNetMotionModel:
    """The base UNet with the adapter's temporal layers, and a cross-attention LoRA of `text_lora_rank` (0: none);
    only the temporal layers and the LoRA require gradients."""
    merged = UNetMotionModel.from_unet2d(unet, adapter)
    merged.freeze_unet2d_params()
    if text_lora_rank > 0:
        from peft import LoraConfig

        merged.add_adapter(LoraConfig(r=text_lora_rank, lora_alpha=text_lora_rank, init_lora_weights="gaussian",
                                      target_modules=TEXT_LORA_TARGETS))
        motion_modules(merged).requires_grad_(True)  # peft leaves only its own layers trainable
    return merged


def text_lora_layers(unet: UNetMotionModel) -> torch.nn.ModuleDict:
    """The LoRA-wrapped cross-attention projections of `unet` (empty without a text LoRA), for checkpoints."""
    from peft.tuners.lora import LoraLayer

    return torch.nn.ModuleDict({name.replace(".", "-"): module for name, module in unet.named_modules()
                                if isinstance(module, LoraLayer)})


def save_text_lora(unet: UNetMotionModel, rank: int, base: str, path: Path) -> Path:
    """The text LoRA as a diffusers-layout LoRA file (what `load_lora_weights` and huabu's LoRA tools read)."""
    from peft.utils import get_peft_model_state_dict

    from huabu.engine import lora_formats as formats

    layers = formats.from_peft("unet", get_peft_model_state_dict(unet), rank)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": rank, "ss_network_alpha": rank,
                "ss_base_model_version": "sd_v1", "huabu_base_model": Path(base).name,
                "huabu_purpose": "motion words for the motion module beside this file"}
    return formats.write_lora(path, layers, formats.DIFFUSERS, metadata, dtype=torch.float16)


@torch.no_grad()
def encode_clips(vae: AutoencoderKL, data: ClipSource, count: int, frames: int, out: Path,
                 batch_clips: int = 8) -> tuple[np.ndarray, list[str]]:
    """Scaled VAE latent means [count, frames, C, h, w] (float16 .npy, memory-mapped) and captions, cached in `out`
    and written atomically."""
    latents_path, captions_path = out / "clip_latents.npy", out / "clip_captions.json"
    if latents_path.is_file() and captions_path.is_file():
        cached = np.load(latents_path, mmap_mode="r")
        captions = json.loads(captions_path.read_text(encoding="utf-8"))
        if cached.shape[:2] == (count, frames) and len(captions) == count:
            return cached, captions
    tmp = latents_path.with_suffix(".partial.npy")
    scale = vae.config.scaling_factor
    latents, captions = None, []
    for start in tqdm(range(0, count, batch_clips), desc="encoding clips", mininterval=2.0):
        clips = [data(i) for i in range(start, min(start + batch_clips, count))]
        for clip, caption in clips:
            if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[0] != frames or clip.shape[3] != 3:
                raise HuabuError(f"training clips must be uint8 [{frames}, H, W, 3]; got {clip.dtype} {clip.shape}")
            captions.append(caption)
        pixels = to_tensor(np.concatenate([clip for clip, _ in clips])).to(vae.device, vae.dtype)
        z = (vae.encode(pixels).latent_dist.mode() * scale).float().cpu().numpy().astype(np.float16)
        z = z.reshape(len(clips), frames, *z.shape[1:])
        if latents is None:
            latents = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, *z.shape[1:]))
        latents[start : start + len(clips)] = z
    latents.flush()
    del latents
    tmp.replace(latents_path)
    captions_tmp = captions_path.with_suffix(".partial.json")
    captions_tmp.write_text(json.dumps(captions), encoding="utf-8")
    captions_tmp.replace(captions_path)
    return np.load(latents_path, mmap_mode="r"), captions


def motion_loss(unet: UNetMotionModel, scheduler, x0: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor,
                timesteps: torch.Tensor, snr_gamma: float, x0_floor: float = 0.0) -> torch.Tensor:
    """Epsilon-prediction loss of clips x0 [B, C, F, h, w] under text `cond` [B, L, D], one timestep per clip,
    weighted by min-SNR (`snr_gamma`) and, with `x0_floor`, never less than an x0-prediction loss of that weight
    (an epsilon error is sqrt(SNR) times the x0 error, so plain epsilon loss all but ignores the noisiest steps)."""
    frames = x0.shape[2]
    noisy = scheduler.add_noise(x0, noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states=cond.repeat_interleave(frames, dim=0)).sample
    per_clip = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3, 4))
    snr = compute_snr(scheduler, timesteps.cpu()).to(per_clip.device)
    weight = torch.ones_like(snr)
    if snr_gamma > 0:
        weight = torch.minimum(snr, torch.full_like(snr, snr_gamma)) / snr
    if x0_floor > 0:
        weight = torch.maximum(weight, x0_floor / snr)
    return (per_clip * weight).mean()


def clip_batch(cfg: MotionTrainConfig, latents: np.ndarray, captions: list[str], step: int, timesteps: int
               ) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch of `step`: captions (some dropped), clip latents x0 [B, C, F, h, w], noise and timesteps.
    Everything random is a function of (seed, step): a resumed run continues as the uninterrupted one would."""
    rng = np.random.default_rng([cfg.seed, step])
    idx = np.sort(rng.choice(len(captions), size=min(cfg.batch_size, len(captions)), replace=False))
    texts = ["" if rng.random() < CAPTION_DROPOUT else captions[i] for i in idx]
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    x0 = torch.from_numpy(latents[idx].astype(np.float32)).permute(0, 2, 1, 3, 4)
    noise = torch.randn(x0.shape, generator=gen)
    if cfg.lowfreq_noise:
        noise = noise + lowfreq_noise(tuple(x0.shape), cfg.lowfreq_noise, gen)
    return texts, x0, noise, draw_timesteps(cfg.timesteps, timesteps, len(idx), gen)


def load_base(folder: Path) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer]:
    """The frozen fp32 UNet, VAE, text encoder and tokenizer of an SD-shaped diffusers folder."""
    if not (folder / "unet" / "config.json").is_file():
        raise HuabuError(f"{folder} is not an SD-shaped diffusers folder (no unet/config.json); pass --base")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").float().eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").float().eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").float().eval().requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    return unet, vae, text_encoder, tok


def setup(cfg: MotionTrainConfig, data: ClipSource, sample_prompts: Sequence[str]) -> tuple[Recipe, Callable[[], Path]]:
    """The base UNet with a motion module (and any text LoRA, motion words and word rows) over cached clip latents,
    the optimizer, and the loss of a step; also the function that writes the result once the loop is done."""
    check_timestep_sampling(cfg.timesteps)
    if cfg.frames > cfg.max_frames:
        raise HuabuError(f"frames ({cfg.frames}) must not exceed max_frames ({cfg.max_frames})")
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    base_unet, vae, text_encoder, tok = load_base(Path(cfg.base))
    device = accelerator.device
    vae.to(device)
    latents, captions = encode_clips(vae, data, cfg.clips, cfg.frames, out)
    if cfg.init:
        adapter = MotionAdapter.from_pretrained(cfg.init).float()
    else:
        adapter = build_motion_adapter(base_unet, cfg.heads, cfg.max_frames)
    raw_unet = motion_unet(base_unet, adapter, cfg.text_lora_rank)
    del base_unet
    parts = {"motion": motion_modules(raw_unet)}
    if cfg.text_lora_rank > 0:
        parts["text_lora"] = text_lora_layers(raw_unet)
    trained = [p for p in raw_unet.parameters() if p.requires_grad]
    words = motion_words_for(cfg, raw_unet)
    if words is not None:
        words.to(device)
        attach_motion_words(raw_unet, words)
        parts["words"] = words
        trained += list(words.parameters())
    groups = [{"params": list(trained)}]
    text_encoder.to(device)
    rows = word_rows_for(cfg, tok, text_encoder)
    if rows is not None:
        if words is None:
            raise HuabuError("--motion-tokens trains with the motion words: set --motion-words-heads too")
        rows.attach(text_encoder)  # the captions are encoded with the rows from here on, so they get gradients
        parts["rows"] = rows
        groups.append({"params": [rows.rows], "weight_decay": 0.0, "lr": cfg.motion_tokens_lr})
        trained += [rows.rows]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.01)
    unet, opt = accelerator.prepare(raw_unet, opt)
    sched = noise_scheduler()

    def step_loss(step: int) -> torch.Tensor:
        texts, x0, noise, t = clip_batch(cfg, latents, captions, step, sched.config.num_train_timesteps)
        with torch.set_grad_enabled(rows is not None):  # the frozen encoder needs no graph, unless rows learn
            cond = encode_text(tok, text_encoder, texts)
        return motion_loss(unet, sched, x0.to(device), cond, noise.to(device), t.to(device), cfg.snr_gamma,
                           cfg.x0_floor)

    def sample(done: int) -> Sampled:
        path = out / f"samples-{done:07d}.gif"
        write_sample_gif(raw_unet, vae, tok, text_encoder, sample_prompts, path, cfg.frames, cfg.sample_steps)
        return Sampled((path,))

    def finish() -> Path:
        raw_unet.save_motion_modules(str(out / "final"))
        if cfg.text_lora_rank > 0:
            save_text_lora(raw_unet, cfg.text_lora_rank, cfg.base, out / "final" / TEXT_LORA_FILE)
        if words is not None:
            save_motion_words(words, out / "final" / MOTION_WORDS_FILE, rows)
        return out / "final"

    recipe = Recipe(accelerator, opt, parts, step_loss, trained, sample=sample if sample_prompts else None)
    return recipe, finish


def train_motion(cfg: MotionTrainConfig, data: ClipSource, sample_prompts: Sequence[str] = (),
                 cancel: Callable[[], bool] | None = None) -> Path:
    """Train a motion module for `cfg.base` on the clips `data` gives; returns the MotionAdapter folder
    (`out/final`). Sample GIFs show `sample_prompts` side by side (none without prompts). `cancel()` turning true
    stops the run after a step, with a checkpoint to resume from."""
    recipe, finish = setup(cfg, data, sample_prompts)
    plan = Plan(Path(cfg.out), cfg.steps, Schedule("constant", cfg.warmup), same_run(cfg),
                cfg.batch_size * recipe.accelerator.num_processes, cfg.checkpoint_every,
                sample_every=cfg.sample_every, unit="clips", config=asdict(cfg), desc="motion")
    loop.train(recipe, plan, cancel=cancel)
    return finish()


def motion_words_for(cfg: MotionTrainConfig, unet: UNetMotionModel) -> torch.nn.ModuleDict | None:
    """The motion-word layers to train: those beside the --init module when it has them (the module was trained
    with them), else fresh ones when --motion-words-heads asks for them, else none."""
    beside_init = _words_beside_init(cfg)
    if beside_init is not None:
        return load_motion_words(beside_init, unet).float()
    return build_motion_words(unet, cfg.motion_words_heads) if cfg.motion_words_heads > 0 else None


def word_rows_for(cfg: MotionTrainConfig, tok: CLIPTokenizer, text_encoder: CLIPTextModel) -> WordRows | None:
    """The word rows to train: those in the --init module's motion-words file when it has them, else fresh ones for
    --motion-tokens, else none."""
    beside_init = _words_beside_init(cfg)
    rows = load_word_rows(beside_init, tok, text_encoder) if beside_init is not None else None
    if rows is not None:
        return rows
    words = WordRows.parse(cfg.motion_tokens)
    return WordRows.for_words(words, tok, text_encoder).to(text_encoder.device) if words else None


def _words_beside_init(cfg: MotionTrainConfig) -> Path | None:
    """The motion-words file of the --init module, if it has one."""
    path = Path(cfg.init) / MOTION_WORDS_FILE if cfg.init else None
    return path if path is not None and path.is_file() else None


@torch.no_grad()
def write_sample_gif(unet: UNetMotionModel, vae: AutoencoderKL, tok: CLIPTokenizer, text_encoder: CLIPTextModel,
                     prompts: Sequence[str], path: Path, frames: int, steps: int, cfg_scale: float = 5.0) -> None:
    """`prompts` (fixed seeds) side by side in one GIF, sampled with diffusers' AnimateDiffPipeline."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    from huabu.engine.video_export import write_video

    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, motion_adapter=None,
                               scheduler=DDIMScheduler.from_config(noise_scheduler().config))
    pipe.set_progress_bar_config(disable=True)
    videos = []
    for seed, prompt in enumerate(prompts):
        out = pipe(prompt, num_frames=frames, num_inference_steps=steps, guidance_scale=cfg_scale,
                   generator=torch.Generator().manual_seed(seed), output_type="np")
        videos.append((np.asarray(out.frames[0]) * 255).round().astype(np.uint8))
    write_video(np.concatenate(videos, axis=2), path, fps=8)

