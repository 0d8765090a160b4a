"""Latent consistency distillation into a LoRA (LCM-LoRA): a model that samples in 2-8 steps with the LCM sampler.

The method of Luo et al., "Latent Consistency Models" and "LCM-LoRA", as diffusers' train_lcm_distill_lora_sd_wds.py
implements it, at huabu's scale. A frozen teacher takes one DDIM step along its classifier-free-guided probability
flow (guidance drawn per image, so the student learns guided trajectories and samples without CFG); the student,
the same UNet plus a LoRA, must map both ends of that step to the same clean latents (the consistency condition),
its prediction pinned to the input at t = 0 by the boundary scalings c_skip, c_out. The target side is the
student itself without gradients (LCM-LoRA uses no EMA target). Batches, timesteps, guidance and noise are
functions of (seed, step), so a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from huabu.engine import lora_formats as formats
from huabu.training import loop
from huabu.training.captioned_arrays import read_captioned_arrays
from huabu.training.diffusion import encode_text, to_tensor
from huabu.training.lcm_config import LcmTrainConfig
from huabu.training.loop import Plan, Recipe, Sampled, same_run
from huabu.training.schedules import Schedule

# Every linear layer of the UNet's transformer blocks and its time embedding projections: LCM-LoRA adapts more
# than attention, since a few-step sampler must change what each block does at large noise.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "time_emb_proj"]
SIGMA_DATA = 0.5  # the consistency parametrisation's data scale
TIMESTEP_SCALING = 10.0  # how fast c_skip falls from 1 as t leaves 0 (diffusers' script default)


def boundary_scalings(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip, c_out of the consistency parametrisation f(x, t) = c_skip x + c_out x0(x, t): 1, 0 at t = 0."""
    scaled = timesteps.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def predicted_x0(noise_pred: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                 prediction_type: str) -> torch.Tensor:
    if prediction_type == "v_prediction":
        return alpha * x - sigma * noise_pred
    return (x - sigma * noise_pred) / alpha


def predicted_noise(noise_pred: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    if prediction_type == "v_prediction":
        return alpha * noise_pred + sigma * x
    return noise_pred


def teacher_folder(cfg: LcmTrainConfig) -> Path:
    """The teacher's diffusers folder: huabu-tiny's own, or the folder given."""
    from huabu.core.settings import BUILTIN_MODEL
    from huabu.engine.models import BUILTIN_DIR

    return BUILTIN_DIR if cfg.teacher == BUILTIN_MODEL else Path(cfg.teacher)


def setup(cfg: LcmTrainConfig) -> tuple[Recipe, torch.nn.Module]:
    """The student (UNet + LoRA), the frozen teacher, the optimizer over the LoRA, and the loss of a step."""
    import copy

    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    teacher_dir = teacher_folder(cfg)
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    data = read_captioned_arrays(Path(cfg.data))
    tok = CLIPTokenizer.from_pretrained(teacher_dir / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(teacher_dir / "text_encoder", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(teacher_dir / "vae", torch_dtype=torch.float32)
    teacher = UNet2DConditionModel.from_pretrained(teacher_dir / "unet", torch_dtype=torch.float32)
    for frozen in (text_encoder, vae, teacher):
        frozen.eval().requires_grad_(False)
    student = copy.deepcopy(teacher)
    student.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                   target_modules=TARGETS))
    lora = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=cfg.lr, weight_decay=0.0)
    student, optimizer = accelerator.prepare(student, optimizer)
    device = accelerator.device
    for frozen in (text_encoder, vae, teacher):
        frozen.to(device)

    schedule = DDPMScheduler.from_pretrained(teacher_dir / "scheduler")
    prediction = schedule.config.prediction_type
    alphas = schedule.alphas_cumprod.sqrt().to(device)
    sigmas = (1 - schedule.alphas_cumprod).sqrt().to(device)
    interval = schedule.config.num_train_timesteps // cfg.ddim_steps
    grid = torch.arange(1, cfg.ddim_steps + 1) * interval - 1  # the teacher's DDIM timesteps
    empty = encode_text(tok, text_encoder, [""])
    scale = vae.config.scaling_factor

    def at(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return table[t].view(-1, 1, 1, 1)

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([cfg.seed, step])
        idx = np.sort(rng.choice(len(data), size=cfg.batch_size, replace=False))
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        start = grid[torch.randint(0, cfg.ddim_steps, (len(idx),), generator=gen)]
        end = (start - interval).clamp(min=0)
        w = cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(len(idx), generator=gen)
        w = w.view(-1, 1, 1, 1).to(device)
        with torch.no_grad():
            x0 = vae.encode(to_tensor(data.images[idx]).to(device)).latent_dist.mode() * scale
            cond = encode_text(tok, text_encoder, [data.captions[i] for i in idx])
        noise = torch.randn(x0.shape, generator=gen).to(device)
        start, end = start.to(device), end.to(device)
        x_start = at(alphas, start) * x0 + at(sigmas, start) * noise

        c_skip, c_out = boundary_scalings(start)
        raw = student(x_start, start, encoder_hidden_states=cond).sample
        online = c_skip * x_start + c_out * predicted_x0(raw, x_start, at(alphas, start), at(sigmas, start),
                                                         prediction)
        with torch.no_grad():
            # One guided DDIM step of the teacher from `start` to `end`.
            both = teacher(torch.cat([x_start, x_start]), torch.cat([start, start]),
                           encoder_hidden_states=torch.cat([cond, empty.expand_as(cond)])).sample
            cond_out, uncond_out = both.chunk(2)
            a, s = at(alphas, start), at(sigmas, start)
            x0_c, x0_u = (predicted_x0(o, x_start, a, s, prediction) for o in (cond_out, uncond_out))
            eps_c, eps_u = (predicted_noise(o, x_start, a, s, prediction) for o in (cond_out, uncond_out))
            x0_guided = x0_c + w * (x0_c - x0_u)
            eps_guided = eps_c + w * (eps_c - eps_u)
            x_end = at(alphas, end) * x0_guided + at(sigmas, end) * eps_guided
            # The target: the student's own prediction at the step's other end.
            c_skip_end, c_out_end = boundary_scalings(end)
            raw_end = student(x_end, end, encoder_hidden_states=cond).sample
            target = c_skip_end * x_end + c_out_end * predicted_x0(raw_end, x_end, at(alphas, end),
                                                                   at(sigmas, end), prediction)
        # Pseudo-Huber: L2 near zero, L1 for the occasional far-off target.
        diff = (online.float() - target.float()) ** 2
        return (torch.sqrt(diff + cfg.huber_c**2) - cfg.huber_c).mean()

    def sample(done: int) -> Sampled:
        path = Path(cfg.out) / f"lora-{done:07d}.safetensors"
        return Sampled((export(accelerator.unwrap_model(student), cfg, path),))

    params = torch.nn.ParameterDict({f"p{i}": p for i, p in enumerate(lora)})
    recipe = Recipe(accelerator, optimizer, {"lora": params}, step_loss, lora, sample=sample)
    return recipe, student


def export(student: torch.nn.Module, cfg: LcmTrainConfig, path: Path) -> Path:
    """The student's LoRA as a diffusers-format .safetensors (fp16) that `--lora` and load_lora_weights read."""
    from peft.utils import get_peft_model_state_dict

    layers = formats.from_peft("unet", get_peft_model_state_dict(student), cfg.alpha)
    metadata = {"huabu_lcm": "1", "huabu_lcm_steps": str(cfg.steps), "ss_network_dim": str(cfg.rank),
                "ss_network_alpha": str(cfg.alpha), "huabu_usage": "sampler LCM, 4 steps, CFG 1"}
    return formats.write_lora(path, layers, formats.DIFFUSERS, metadata, torch.float16)


def train(cfg: LcmTrainConfig, cancel: Callable[[], bool] | None = None) -> Path:
    """Distil (or resume distilling) the teacher into an LCM-LoRA; returns the final LoRA file."""
    recipe, student = setup(cfg)
    plan = Plan(Path(cfg.out), cfg.steps, Schedule("constant", cfg.warmup), same_run(cfg),
                cfg.batch_size * recipe.accelerator.num_processes, cfg.checkpoint_every,
                sample_every=cfg.sample_every, log_every=10, config=asdict(cfg), desc="lcm")
    loop.train(recipe, plan, cancel=cancel)
    return export(recipe.accelerator.unwrap_model(student), cfg, Path(cfg.out) / "final.safetensors")
