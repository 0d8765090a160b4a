"""huabu-tiny-dit's denoiser stage: an SD3-shaped MMDiT (SD3Transformer2DModel) trained by flow matching on the UNet
stage's scene latents, under huabu-tiny's frozen VAE and CLIP text encoder.

SD3's recipe at toy scale, as diffusers' SD3 training scripts run it: x_t = (1 - sigma) x0 + sigma noise with sigma
drawn logit-normal from the flow schedule, the transformer predicting the velocity noise - x0, SD3's loss weighting;
the UNet stage's 10% caption dropout for classifier-free guidance, EMA weights for sampling, the same latent cache.

Text: huabu-tiny's one CLIP serves as both of SD3's CLIP encoders (the same weights twice), with the text projection
trained beside it (the scorer's) giving the pooled vector. There is no T5: StableDiffusion3Pipeline then puts 256 zero
tokens after CLIP's 77 in the context. Those 256 are the same token at every layer (same input, per-token layers,
identical queries) and at this size would cost two thirds of a step, so training keeps one of them and hands attention
its key and value 256 times (`padding_once`): the same function of the weights as the full context, at a third of the
cost (tests/test_tiny_dit.py checks the outputs match).

Bilingual (`--captions mix --text-lr R`): the text encoder trains with the transformer on English and Chinese captions
of the same images, as Taiyi and AltDiffusion train theirs on Chinese captions (`denoiser_stage`, which the UNet
stage shares).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from huabu.core.errors import InvalidRequest
from huabu.tiny import scenes as S
from huabu.tiny.configs import DitTrainConfig, UnetTrainConfig
from huabu.tiny.data import load_dataset
from huabu.tiny.denoiser_stage import check_captions, stage_captions, trainables
from huabu.tiny.train_unet import (
    base_folder,
    build_unet,
    encode_latents,
    latent_batch,
    write_grid,
)
from huabu.training import loop
from huabu.training.loop import Plan, Recipe, Sampled, same_run
from huabu.training.schedules import Schedule

SCORER_PROJECTION = Path(__file__).parent / "huabu-tiny-scorer" / "text_projection.safetensors"
WEIGHTINGS = ("logit_normal", "mode", "cosmap", "sigma_sqrt", "none")
# The zero tokens StableDiffusion3Pipeline puts in the context for a missing T5 (its max_sequence_length).
T5_TOKENS = inspect.signature(StableDiffusion3Pipeline.__call__).parameters["max_sequence_length"].default


def build_transformer(cfg: DitTrainConfig, latent_channels: int, clip: CLIPTextConfig) -> SD3Transformer2DModel:
    """The MMDiT for 16 x 16 latents; its context is the two CLIPs' hidden states side by side, its pooled vector the
    two projections'."""
    width = cfg.heads * cfg.head_dim
    return SD3Transformer2DModel(
        sample_size=S.IMAGE_SIZE // 4, patch_size=2, in_channels=latent_channels, out_channels=latent_channels,
        num_layers=cfg.layers, attention_head_dim=cfg.head_dim, num_attention_heads=cfg.heads,
        caption_projection_dim=width, joint_attention_dim=2 * clip.hidden_size,
        pooled_projection_dim=2 * clip.projection_dim,
        pos_embed_max_size=32)  # position table for up to 32 x 32 patches (256 px); SD3's 96 would add 2.4M numbers


def load_frozen(base: Path, text_projection: str = "") -> tuple[AutoencoderKL, CLIPTextModelWithProjection,
                                                                  CLIPTokenizer]:
    """The base model's VAE (shift 0, which SD3 pipelines need stated), its CLIP text encoder with the text
    projection trained beside it, and its tokenizer; fp32, frozen."""
    vae = AutoencoderKL.from_pretrained(base / "vae", dtype=torch.float32)
    vae.register_to_config(shift_factor=0.0)
    clip = CLIPTextModel.from_pretrained(base / "text_encoder", dtype=torch.float32)
    projection = load_file(text_projection or str(SCORER_PROJECTION))["weight"]
    text_encoder = CLIPTextModelWithProjection(clip.config)
    text_encoder.text_model.load_state_dict(clip.state_dict())
    text_encoder.text_projection.load_state_dict({"weight": projection})
    tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
    return vae.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False), tok


def sd3_pipeline(transformer: SD3Transformer2DModel, vae: AutoencoderKL, text_encoder: CLIPTextModelWithProjection,
                 tok: CLIPTokenizer, scheduler: FlowMatchEulerDiscreteScheduler) -> StableDiffusion3Pipeline:
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                    tokenizer=tok, text_encoder_2=text_encoder, tokenizer_2=tok, text_encoder_3=None,
                                    tokenizer_3=None)


@contextmanager
def padding_once(transformer: SD3Transformer2DModel, copies: int = T5_TOKENS) -> Iterator[None]:
    """While open, the context's last token stands for `copies` identical ones: every joint attention reads its key
    and value `copies` times. Encode prompts with max_sequence_length=1 for the context this expects."""
    def repeat_last(module, inputs, output):
        return torch.cat([output[:, :-1], output[:, -1:].expand(-1, copies, -1)], dim=1)

    projections = [p for block in transformer.transformer_blocks for p in (block.attn.add_k_proj,
                                                                            block.attn.add_v_proj)]
    handles = [p.register_forward_hook(repeat_last) for p in projections]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def start_from(cfg: DitTrainConfig, transformer: SD3Transformer2DModel
               ) -> tuple[CLIPTextModelWithProjection, CLIPTokenizer]:
    """Load `--init`'s transformer into `transformer` (the stage's shape options must match it); returns the text
    encoder and tokenizer it was trained under, frozen (`--text-lr` trains them on)."""
    folder = base_folder(cfg.init, "--init")
    if not (folder / "transformer").is_dir():
        raise InvalidRequest(f"--init {cfg.init} is not a huabu-tiny-dit folder (no transformer/)")
    start = SD3Transformer2DModel.from_pretrained(folder / "transformer", dtype=torch.float32)
    shape = ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size", "joint_attention_dim",
             "pooled_projection_dim", "in_channels")
    if any(start.config[key] != transformer.config[key] for key in shape):
        raise InvalidRequest(f"--init {cfg.init}'s transformer has another shape than --layers {cfg.layers} --heads "
                             f"{cfg.heads} --head-dim {cfg.head_dim} build")
    transformer.load_state_dict(start.state_dict())
    text_encoder = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    return text_encoder.eval().requires_grad_(False), CLIPTokenizer.from_pretrained(folder / "tokenizer")


def setup(cfg: DitTrainConfig) -> tuple[Recipe, StableDiffusion3Pipeline, FlowMatchEulerDiscreteScheduler]:
    """The transformer and its EMA copy over cached VAE latents, the optimizer, and the loss of a step."""
    if cfg.weighting not in WEIGHTINGS:
        raise InvalidRequest(f"--weighting must be one of {', '.join(WEIGHTINGS)}, got {cfg.weighting!r}")
    check_captions(cfg.captions, cfg.text_lr)
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(Path(cfg.data))
    vae, text_encoder, tok = load_frozen(base_folder(cfg.base), cfg.text_projection)
    n_images = min(cfg.images, len(data))
    latents = encode_latents(vae, data.images[:n_images], out / "latents.npy")
    raw = build_transformer(cfg, vae.config.latent_channels, text_encoder.config)
    if cfg.init:
        text_encoder, tok = start_from(cfg, raw)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.shift)
    sigmas = scheduler.sigmas.clone()  # the training table; sampling's set_timesteps replaces the scheduler's own
    device = accelerator.device
    parts = trainables(accelerator, "transformer", raw, text_encoder, tok, cfg.lr, cfg.text_lr,
                       data.captions_in("zh") if cfg.captions != "en" else [])
    # prompts are encoded as these pipelines encode them: the trained encoder for the loss, its EMA for samples
    encoding = sd3_pipeline(raw, vae, text_encoder, tok, scheduler)
    pipe = sd3_pipeline(parts.ema, vae, parts.ema_text, tok, scheduler)

    def step_loss(step: int) -> torch.Tensor:
        texts = stage_captions(data, cfg.captions, cfg.seed, step)
        captions, x0, noise, gen = latent_batch(cfg.seed, step, latents, texts, n_images, cfg.batch_size)
        u = compute_density_for_timestep_sampling(cfg.weighting, len(x0), cfg.logit_mean, cfg.logit_std,
                                                  cfg.mode_scale, generator=gen)
        sigma = sigmas[(u * len(sigmas)).long().clamp(max=len(sigmas) - 1)].view(-1, 1, 1, 1)
        xt = ((1 - sigma) * x0 + sigma * noise).to(device)
        with torch.set_grad_enabled(cfg.text_lr > 0):
            context, _, pooled, _ = encoding.encode_prompt(captions, None, None, device=device,
                                                           do_classifier_free_guidance=False, max_sequence_length=1)
        with padding_once(raw):
            pred = parts.denoiser(hidden_states=xt, encoder_hidden_states=context, pooled_projections=pooled,
                               timestep=sigma.flatten().to(device) * 1000).sample
        weight = compute_loss_weighting_for_sd3(cfg.weighting, sigma).to(device)
        return (weight * (pred - (noise - x0).to(device)) ** 2).mean()

    def sample(done: int) -> Sampled:
        path = out / f"samples-{done:07d}.png"
        write_grid(pipe, path)
        return Sampled((path,))

    return parts.recipe(accelerator, step_loss, cfg.ema_decay, sample), pipe, scheduler


def train(cfg: DitTrainConfig, cancel: Callable[[], bool] | None = None) -> Path:
    """Train (or resume) the DiT stage; returns the folder of the EMA transformer and its flow scheduler.
    `cancel()` turning true stops the run after a step, with a checkpoint to resume from."""
    recipe, pipe, scheduler = setup(cfg)
    ema = pipe.transformer
    unet = build_unet(UnetTrainConfig(), ema.config.joint_attention_dim // 2)
    print(f"transformer: {parameter_count(ema):,} parameters (the UNet stage's: {parameter_count(unet):,})")
    plan = Plan(Path(cfg.out), cfg.steps, Schedule("constant", cfg.warmup), same_run(cfg),
                cfg.batch_size * recipe.accelerator.num_processes, cfg.checkpoint_every,
                sample_every=cfg.sample_every, log_every=10, config=asdict(cfg), desc="dit")
    loop.train(recipe, plan, cancel=cancel)
    final = Path(cfg.out) / "final"
    ema.save_pretrained(final)
    scheduler.save_pretrained(final)  # scheduler_config.json beside config.json: assembly ships the trained shift
    if cfg.text_lr > 0:  # assembly ships these in both CLIP slots instead of the base model's
        pipe.text_encoder.save_pretrained(final / "text_encoder")
        pipe.tokenizer.save_pretrained(final / "tokenizer")
    return final
