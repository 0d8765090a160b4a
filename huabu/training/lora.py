"""`huabu train lora`: a LoRA for a Stable Diffusion model from a folder of images, in one readable loop.

The recipe of diffusers' train_text_to_image_lora.py and kohya's sd-scripts: peft LoRA on the UNet's attention
projections (optionally the text encoder's too), DDPM noise on VAE latents, epsilon or v-prediction as the base
model's scheduler says, optional min-SNR weighting, AdamW. accelerate runs it, so `accelerate launch -m huabu.cli.main
train lora ...` spreads it over several GPUs. Latents are encoded once up front (no augmentation changes them).
Every batch, noise and timestep is a function of (seed, step) and checkpoints are pickle-free safetensors, so a run
resumed after a kill continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from huabu.core.errors import InvalidRequest
from huabu.core.lora_request import TrainLoraRequest
from huabu.core.settings import Settings
from huabu.engine import lora_formats as formats
from huabu.engine.images import load_image
from huabu.training import loop
from huabu.training.checkpoint import list_checkpoints
from huabu.training.loop import Plan, Recipe, Sampled, TrainProgress
from huabu.training.lora_data import LoraDataset, assign_buckets, fit_to_bucket, load_dataset, to_pixels
from huabu.training.schedules import Schedule

log = logging.getLogger(__name__)

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
_WEIGHT_DTYPES = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}
_SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Settings that must match for a checkpoint to be resumed exactly (kept in every checkpoint).
_RESUME_KEYS = ("rank", "alpha", "seed", "batch", "resolution", "train_text_encoder", "dataset_hash", "processes")


@dataclass
class LoraRun:
    """Everything the loop needs, built by `setup`."""

    request: TrainLoraRequest
    settings: Settings
    accelerator: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    optimizer: torch.optim.Optimizer
    params: torch.nn.ParameterDict  # the trainable LoRA tensors, what checkpoints hold
    dataset: LoraDataset
    latents: list[torch.Tensor]  # per example, scaled, on the CPU
    input_ids: list[torch.Tensor]  # per example
    out_path: Path
    folder: Path  # run folder: checkpoints/, samples/, log.jsonl
    info: dict[str, Any]  # base model facts and what a resumed run must match
    _engine: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.out_path.stem


def output_path(request: TrainLoraRequest, settings: Settings) -> Path:
    """Where the LoRA goes: `out` as a name in the LoRA folder, or as a path when it looks like one."""
    out = request.out.strip()
    if out.lower().endswith(".safetensors") or "/" in out or "\\" in out:
        return Path(out).expanduser()
    if out in (".", ".."):
        raise InvalidRequest(f"--out {out!r} is not a LoRA name")
    return settings.loras_dir / f"{out}.safetensors"


def setup(request: TrainLoraRequest, settings: Settings) -> LoraRun:
    """Read the data, load the base model, add LoRA layers, encode latents, build the optimizer."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig, inject_adapter_in_model

    from huabu.engine.models import ModelManager

    if request.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise InvalidRequest("mixed precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    out_path = output_path(request, settings)
    if out_path.exists() and not (request.resume or request.overwrite):
        raise InvalidRequest(f"{out_path} already exists: pick another --out, or pass --overwrite to replace it")
    folder = Path(request.workdir).expanduser() if request.workdir else settings.home / "lora-training" / out_path.stem
    if list_checkpoints(folder / "checkpoints") and not request.resume:
        raise InvalidRequest(f"{folder} already holds checkpoints of a run named {out_path.stem!r}: pass --resume to "
                             f"continue it, or delete that folder (or pick another --out) to start over")
    dataset = load_dataset(request.data, request.trigger, request.template)  # data errors before the slow part
    accelerator = Accelerator(mixed_precision=request.mixed_precision, cpu=settings.device == "cpu")
    model_settings = settings.with_(device=accelerator.device.type, dtype=_WEIGHT_DTYPES[request.mixed_precision],
                                    model_cache_size=1)
    model = ModelManager(model_settings).load(request.base)
    if model.is_sdxl or model.is_inpaint_unet:
        raise InvalidRequest(f"{model.name} is an {'SDXL' if model.is_sdxl else 'inpainting'} model; huabu trains "
                             f"LoRAs for SD 1.x/2.x-shaped text-to-image models only")
    step = model.vae_scale_factor * 8
    resolution = request.resolution or model.default_size
    if resolution % step:
        lower, upper = resolution // step * step, (resolution // step + 1) * step
        raise InvalidRequest(f"resolution {resolution} is not a multiple of {step} (8 x this model's VAE factor "
                             f"{model.vae_scale_factor}); use {lower or upper} or {upper}")
    dataset = assign_buckets(dataset, resolution, step)

    pipe = model.pipeline
    unet, text_encoder, tokenizer, vae = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    for module in (unet, text_encoder, vae):
        module.requires_grad_(False)
    torch.manual_seed(request.seed)  # LoRA init
    config = dict(r=request.rank, lora_alpha=request.alpha, init_lora_weights="gaussian")
    unet.add_adapter(LoraConfig(target_modules=UNET_TARGETS, **config))
    if request.train_text_encoder:
        # peft's own injection: transformers' add_adapter wants a newer peft than diffusers needs.
        inject_adapter_in_model(LoraConfig(target_modules=TEXT_ENCODER_TARGETS, **config), text_encoder)
    trained = [unet, text_encoder] if request.train_text_encoder else [unet]
    cast_training_params(trained, dtype=torch.float32)  # LoRA weights in fp32 under mixed precision
    if request.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if request.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()

    latents = encode_latents(vae, dataset, accelerator.device)
    input_ids = [tokenize(tokenizer, [e.caption])[0] for e in dataset.examples]
    groups = [("unet", unet, request.lr)]
    if request.train_text_encoder:
        groups.append(("text_encoder", text_encoder, request.text_encoder_lr or request.lr))
    params = torch.nn.ParameterDict({f"{prefix}/{name}".replace(".", ":"): p for prefix, module, _ in groups
                                     for name, p in module.named_parameters() if p.requires_grad})
    optimizer = torch.optim.AdamW([{"params": [p for p in m.parameters() if p.requires_grad], "lr": lr}
                                   for _, m, lr in groups])
    version = base_model_version(text_encoder, noise_scheduler)
    text_encoder.to(accelerator.device)
    if request.train_text_encoder:
        unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:
        unet, optimizer = accelerator.prepare(unet, optimizer)
    info = {"rank": request.rank, "alpha": request.alpha, "seed": request.seed, "batch": request.batch,
            "resolution": resolution, "train_text_encoder": request.train_text_encoder,
            "dataset_hash": dataset.content_hash(), "processes": accelerator.num_processes,
            "base_name": model.name, "base_sha256": model.sha256, "base_spec": request.base,
            "base_version": version, "prediction_type": noise_scheduler.config.prediction_type}
    return LoraRun(request, model_settings, accelerator, unet, text_encoder, tokenizer, noise_scheduler, optimizer,
                   params, dataset, latents, input_ids, out_path, folder, info)


def base_model_version(text_encoder, scheduler) -> str:
    """sd-scripts' ss_base_model_version words: SD 2.x has a 1024-wide text encoder; 768-v predicts v."""
    if text_encoder.config.hidden_size == 1024:
        return "sd_v2_768_v" if scheduler.config.prediction_type == "v_prediction" else "sd_v2"
    return "sd_v1"


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_latents(vae, dataset: LoraDataset, device, chunk: int = 8) -> list[torch.Tensor]:
    """Scaled latent means of every image at its bucket size, encoded in float32 (SD VAEs overflow in fp16)."""
    if vae.dtype != torch.float32 or vae.device != torch.device(device):
        vae.to(device=device, dtype=torch.float32)
    shift, scale = getattr(vae.config, "shift_factor", None) or 0.0, vae.config.scaling_factor
    latents: list[torch.Tensor | None] = [None] * len(dataset)
    for indices in dataset.used_buckets().values():
        for start in range(0, len(indices), chunk):
            part = indices[start:start + chunk]
            pixels = np.stack([to_pixels(fit_to_bucket(load_image(str(dataset.examples[i].path)),
                                                       dataset.examples[i].bucket)) for i in part])
            z = vae.encode(torch.from_numpy(pixels).to(device)).latent_dist.mode()
            for i, item in zip(part, ((z - shift) * scale).float().cpu()):
                latents[i] = item
    return latents


def diffusion_loss(unet, text_encoder, scheduler, latents: torch.Tensor, input_ids: torch.Tensor,
                   noise: torch.Tensor, timesteps: torch.Tensor, snr_gamma: float | None = None,
                   train_text_encoder: bool = False) -> torch.Tensor:
    """The denoising loss of one batch: MSE to the noise (epsilon) or the velocity (v-prediction)."""
    from diffusers.training_utils import compute_snr

    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.set_grad_enabled(train_text_encoder and torch.is_grad_enabled()):
        conditioning = text_encoder(input_ids, return_dict=False)[0]
    prediction = unet(noisy, timesteps, conditioning, return_dict=False)[0]
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma) / (snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr)
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (loss * weights).mean()


def step_loss(run: LoraRun, step: int) -> torch.Tensor:
    """The loss of step `step` on this process's share of its batch."""
    acc, request = run.accelerator, run.request
    indices = run.dataset.batch(step * acc.num_processes + acc.process_index, request.batch, request.seed)
    latents = torch.stack([run.latents[i] for i in indices]).to(acc.device)
    input_ids = torch.stack([run.input_ids[i] for i in indices]).to(acc.device)
    seed = int(np.random.SeedSequence([request.seed, step, acc.process_index]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(seed)  # CPU noise: the same on every device
    noise = torch.randn(latents.shape, generator=generator).to(acc.device)
    timesteps = torch.randint(0, run.noise_scheduler.config.num_train_timesteps, (len(indices),),
                              generator=generator).to(acc.device)
    return diffusion_loss(run.unet, run.text_encoder, run.noise_scheduler, latents, input_ids, noise, timesteps,
                          request.min_snr_gamma, request.train_text_encoder)


def recipe(run: LoraRun, sample: Callable[[int], Sampled] | None = None) -> Recipe:
    """The loop's view of a LoRA run: the LoRA tensors are what learns and what checkpoints hold."""
    return Recipe(run.accelerator, run.optimizer, {"lora": run.params}, lambda step: step_loss(run, step),
                  list(run.params.values()), sample=sample)


def plan(run: LoraRun) -> Plan:
    """How the loop runs a LoRA: kohya's constant rate after warm-up; samples at the end when prompts are given."""
    request = run.request
    sample_every = request.sample_every or (request.steps if request.sample_prompt else 0)
    return Plan(run.folder, request.steps, Schedule("constant", request.warmup_steps),
                {key: run.info[key] for key in _RESUME_KEYS}, request.batch * run.accelerator.num_processes,
                request.checkpoint_every, sample_every=sample_every, max_grad_norm=request.max_grad_norm,
                resume=request.resume, desc=f"lora {run.name}")


def lora_layers(run: LoraRun) -> formats.Layers:
    from peft.utils import get_peft_model_state_dict

    unet = run.accelerator.unwrap_model(run.unet)
    layers = formats.from_peft("unet", get_peft_model_state_dict(unet), run.request.alpha)
    if run.request.train_text_encoder:
        text_encoder = run.accelerator.unwrap_model(run.text_encoder)
        layers.update(formats.from_peft("text_encoder", get_peft_model_state_dict(text_encoder), run.request.alpha))
    return layers


def lora_metadata(run: LoraRun, steps_done: int, started: float) -> dict[str, str]:
    """kohya's ss_* training metadata (as A1111 and kohya tools read it) plus huabu's own fields."""
    request, info, dataset = run.request, run.info, run.dataset
    sides = [side for bucket in dataset.buckets for side in bucket]
    fields: dict[str, Any] = {
        "ss_network_module": formats.NETWORK_MODULE,
        "ss_network_dim": request.rank,
        "ss_network_alpha": float(request.alpha),
        "ss_network_train_unet_only": not request.train_text_encoder,
        "ss_base_model_version": info["base_version"],
        "ss_v2": info["base_version"].startswith("sd_v2"),
        "ss_v_parameterization": info["prediction_type"] == "v_prediction",
        "ss_sd_model_name": info["base_name"],
        "ss_new_sd_model_hash": info["base_sha256"] or "",
        "ss_output_name": run.name,
        "ss_resolution": (info["resolution"], info["resolution"]),
        "ss_steps": steps_done,
        "ss_max_train_steps": request.steps,
        "ss_learning_rate": request.lr,
        "ss_unet_lr": request.lr,
        "ss_text_encoder_lr": request.text_encoder_lr or request.lr,
        "ss_lr_scheduler": "constant_with_warmup" if request.warmup_steps else "constant",
        "ss_lr_warmup_steps": request.warmup_steps,
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_max_grad_norm": request.max_grad_norm,
        "ss_min_snr_gamma": request.min_snr_gamma,
        "ss_mixed_precision": request.mixed_precision,
        "ss_seed": request.seed,
        "ss_num_train_images": sum(e.repeats for e in dataset.examples),
        "ss_batch_size_per_device": request.batch,
        "ss_total_batch_size": request.batch * info["processes"],
        "ss_enable_bucket": True,
        "ss_min_bucket_reso": min(sides),
        "ss_max_bucket_reso": max(sides),
        "ss_bucket_info": json.dumps(dataset.bucket_info()),
        "ss_tag_frequency": json.dumps(dataset.tag_frequency()),
        "ss_dataset_dirs": json.dumps(dataset.dataset_dirs()),
        "ss_training_started_at": started,
        "ss_training_finished_at": time.time(),
        "huabu_base_model": info["base_spec"] or info["base_name"],
        "huabu_dataset_hash": info["dataset_hash"],
        "huabu_trigger_word": request.trigger or "",
    }
    return {key: str(value) for key, value in fields.items()}  # kohya writes every value as str(value)


def export(run: LoraRun, path: Path, steps_done: int, started: float) -> Path:
    return formats.write_lora(path, lora_layers(run), run.request.format, lora_metadata(run, steps_done, started),
                              _SAVE_DTYPES[run.request.save_dtype])


def sample_prompts(run: LoraRun) -> list[str]:
    if run.request.sample_prompt:
        return list(run.request.sample_prompt)
    template = run.request.template
    return [template.replace("{trigger}", run.request.trigger or "") if template else run.dataset.examples[0].caption]


def write_samples(run: LoraRun, done: int, started: float) -> tuple[Path, ...]:
    """Sample images through the engine with the LoRA so far (also kept as the run's lora-latest.safetensors)."""
    from huabu.core.pnginfo import save_png_atomic
    from huabu.core.requests import GenerateRequest
    from huabu.engine.generate import Engine

    lora = export(run, run.folder / "lora-latest.safetensors", done, started)
    if run._engine is None:
        run._engine = Engine(run.settings.with_(dtype="auto"))
    size = run.info["resolution"]
    paths = []
    for i, prompt in enumerate(sample_prompts(run)):
        request = GenerateRequest.create(prompt=prompt, model=run.request.base, seed=run.request.seed, width=size,
                                         height=size, steps=run.request.sample_steps, loras=[{"name": str(lora)}])
        result = run._engine.generate(request)
        path = run.folder / "samples" / f"step-{done:07d}-{i}.png"
        paths.append(save_png_atomic(result.images[0], path, result.infotexts[0]))
    return tuple(paths)


def train_lora(request: TrainLoraRequest, settings: Settings, progress: Callable[[TrainProgress], None] | None = None,
               cancel: threading.Event | None = None) -> Path:
    """Train the LoRA `request` describes and write it; returns the file. Setting `cancel` stops after the current
    step, writes a checkpoint (so `resume=True` continues) and the LoRA so far."""
    run = setup(request, settings)
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "request.json").write_text(json.dumps(request.to_data(), indent=1))
    if request.resume and not list_checkpoints(run.folder / "checkpoints"):
        log.warning("no checkpoint in %s; starting from step 0", run.folder / "checkpoints")
    started = time.time()
    run.unet.train()
    if request.train_text_encoder:
        run.text_encoder.train()

    def sample(done: int) -> Sampled:
        return Sampled(write_samples(run, done, started))

    done = loop.train(recipe(run, sample), plan(run), progress, cancel.is_set if cancel is not None else None)
    if run.accelerator.is_main_process:
        export(run, run.out_path, done, started)
    run.accelerator.wait_for_everyone()
    return run.out_path
