"""Training a ControlNet on a frozen base model (SD 1.x-shaped: huabu-tiny, SD 1.5, SD 2.x).

The recipe of the ControlNet paper at any scale: the ControlNet starts as a copy of the base UNet's encoder
(`ControlNetModel.from_unet`) with zero convolutions into the UNet, the UNet, VAE and text encoder stay frozen, the
loss is the base model's own diffusion loss (epsilon or v, optional min-SNR weighting), and half of the captions are
dropped so that the control map alone has to carry the picture. Each image's control map is made on the fly by
the huabu.engine.control preprocessor the config names (canny, color, ...); a glyph map is drawn from the image's
words and boxes (its record's `text_boxes`, else OCR). Data order, caption dropout, timesteps and
noise are functions of (seed, step), and checkpoints (huabu.training.checkpoint) are pickle-free, so a run resumed
after a kill continues exactly as the uninterrupted one.

The dataset is any object with `images` (N x H x W x 3 uint8, indexable by an index array) and `captions`
(N strings), such as huabu.training.captioned_arrays' (huabu-tiny's scene dataset is one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import ControlNetModel, DDPMScheduler
from diffusers.training_utils import compute_snr
from PIL import Image
from tqdm import tqdm

from huabu.core.atomic import atomic_path
from huabu.core.errors import HuabuError, InvalidRequest, first_line
from huabu.core.text_boxes import GLYPH, with_placeholders
from huabu.training import loop
from huabu.training.captioned_arrays import read_captioned_arrays
from huabu.training.controlnet_config import ControlNetTrainConfig
from huabu.training.loop import Plan, Recipe, Sampled, same_run
from huabu.training.noise import check_timestep_sampling, draw_timesteps
from huabu.training.schedules import Schedule

# conditioning_embedding_out_channels by VAE factor: each stride-2 stage halves the control image once, so an f=4
# VAE needs one stage fewer than the 8x SD default (16, 32, 96, 256).
EMBEDDING_CHANNELS = {2: (16, 32), 4: (16, 32, 64), 8: (16, 32, 96, 256)}


@dataclass
class Frozen:
    """The frozen base model parts the loop runs through, and the dataset's latents."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: DDPMScheduler  # the base model's noise schedule, for training
    sample_scheduler_config: dict  # the base model's own scheduler, for sample grids
    latents: np.ndarray  # N x C x h x w, scaled as the UNet sees them


def load_frozen(cfg: ControlNetTrainConfig, images: np.ndarray, settings=None) -> Frozen:
    """Load the base model (fp32, CPU; accelerate moves it) and encode or read the dataset's latents."""
    from huabu.core.settings import Settings
    from huabu.engine.models import ModelManager

    settings = (settings or Settings.from_env()).with_(device="cpu", dtype="fp32")
    model = ModelManager(settings).load(cfg.base)
    pipe = model.pipeline
    if model.is_sdxl or model.is_inpaint_unet:
        raise InvalidRequest(f"{model.name}: ControlNet training supports SD 1.x/2.x-shaped models with a 4-channel "
                             f"UNet (not SDXL, not inpainting UNets)")
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    latents = _latents(cfg, pipe.vae, images)
    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    return Frozen(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler, dict(model.scheduler_config),
                  latents)


@torch.no_grad()
def _latents(cfg: ControlNetTrainConfig, vae, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The scaled latent means of every image: from cfg.latents, else from out/latents.npy, else encoded there once
    (written atomically). At huabu-tiny's size the VAE costs more per image than the UNet, so it runs once."""
    if cfg.latents:
        cached = np.load(cfg.latents, mmap_mode="r")
        if cached.shape[0] != len(images):
            raise InvalidRequest(f"{cfg.latents} holds {cached.shape[0]} latents but the dataset has {len(images)} "
                                 f"images")
        return cached
    path = Path(cfg.out_dir) / "latents.npy"
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape[0] == len(images):
            return cached
    chunks = []
    for start in tqdm(range(0, len(images), batch), desc="encoding latents", mininterval=2.0, disable=None):
        pixels = torch.from_numpy(np.array(images[start:start + batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
        chunks.append((vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor).numpy())
    # C order: the encoder hands back channels-last strides, and the UNet's kernels round differently on those,
    # which would make a resumed run (reading the saved file) drift from an uninterrupted one.
    latents = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    with atomic_path(path, suffix=".npy") as tmp:  # np.save would add .npy to any other name
        np.save(tmp, latents)
    return latents


def build_controlnet(cfg: ControlNetTrainConfig, unet, vae_factor: int) -> ControlNetModel:
    """A fresh ControlNet copied from the UNet's encoder, its control-image embedding shrinking by the VAE factor; or,
    with cfg.init, the ControlNet in that folder (fp32), checked to fit the UNet."""
    if cfg.init:
        return initial_controlnet(cfg.init, unet, vae_factor)
    channels = tuple(cfg.embedding_channels) or EMBEDDING_CHANNELS.get(vae_factor)
    if channels is None:
        raise InvalidRequest(f"no default control embedding for a VAE factor of {vae_factor}; set embedding_channels "
                             f"(its length n shrinks by 2 ** (n - 1))")
    if 2 ** (len(channels) - 1) != vae_factor:
        raise InvalidRequest(f"embedding_channels {channels} shrink control images {2 ** (len(channels) - 1)}x but the "
                             f"VAE factor is {vae_factor}; give {len(EMBEDDING_CHANNELS.get(vae_factor, ()))} or "
                             f"log2({vae_factor}) + 1 channel counts")
    torch.manual_seed(cfg.seed)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)


def initial_controlnet(folder: str, unet, vae_factor: int) -> ControlNetModel:
    """The diffusers ControlNet folder a fine-tuning run starts from (safetensors only), refused in one line when it
    was made for another UNet."""
    from huabu.engine.controlnets import fit_problem

    try:
        net = ControlNetModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise InvalidRequest(f"cannot start from ControlNet {folder}: {first_line(err)}") from None
    problem = fit_problem(Path(folder).name, net.config, unet.config, vae_factor)
    if problem:
        raise InvalidRequest(problem)
    return net


def glyph_words(image: np.ndarray, record: dict | None) -> list[tuple[str, tuple[int, ...]]]:
    """The words of an image and their boxes: its record's `text_boxes` ([word, x0, y0, x1, y1] rows, as huabu-tiny's
    text scenes and one's own scenes.jsonl give them), else what OCR finds in the image."""
    rows = (record or {}).get("text_boxes")
    if rows is None:
        from huabu.engine.ocr import find_text

        return find_text(image)
    return [(str(row[0]), tuple(int(v) for v in row[1:5])) for row in rows]


def control_maps(kind: str, images: np.ndarray, records: list[dict] | None = None) -> torch.Tensor:
    """Control maps (B x 3 x H x W in [0, 1], as the ControlNet pipelines feed them) of uint8 RGB images; glyph maps
    are drawn from each image's words (glyph_words, with `records` the images' scenes.jsonl fields)."""
    from huabu.engine.control.glyph import glyph_map
    from huabu.engine.control.registry import preprocess

    if kind == GLYPH:
        records = records or [None] * len(images)
        maps = [np.asarray(glyph_map(glyph_words(np.asarray(image), record), image.shape[1], image.shape[0]))
                for image, record in zip(images, records)]
    else:
        maps = [np.asarray(preprocess(kind, Image.fromarray(np.asarray(image)))) for image in images]
    return torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).float() / 255.0


def fill_text_boxes(data: Any) -> None:
    """Give every record without `text_boxes` the words and boxes OCR finds in its image, once before a glyph run
    (rather than at every batch the image is drawn into)."""
    attrs = getattr(data, "attrs", None) or [{} for _ in data.captions]
    missing = [i for i, record in enumerate(attrs) if "text_boxes" not in record]
    for i in tqdm(missing, desc="reading text boxes (OCR)", mininterval=2.0, disable=None if missing else True):
        attrs[i] = {**attrs[i], "text_boxes": [[text, *box] for text, box in glyph_words(np.asarray(data.images[i]),
                                                                                         None)]}
    data.attrs = attrs


def records_of(data: Any, indices: np.ndarray) -> list[dict] | None:
    """The scenes.jsonl fields of the images at `indices`, when the dataset has them."""
    attrs = getattr(data, "attrs", None)
    return None if attrs is None else [attrs[i] for i in indices]


@dataclass
class Batch:
    indices: np.ndarray
    captions: list[str]
    control: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor


def batch_at(cfg: ControlNetTrainConfig, data, frozen: Frozen, step: int) -> Batch:
    """The batch of `step`: images, dropped captions, timesteps and noise all follow from (seed, step)."""
    rng = np.random.default_rng([cfg.seed, step])
    indices = np.sort(rng.choice(len(data.captions), size=min(cfg.batch_size, len(data.captions)), replace=False))
    captions = ["" if rng.random() < cfg.caption_dropout else data.captions[i] for i in indices]
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    latents = torch.from_numpy(np.ascontiguousarray(frozen.latents[indices], dtype=np.float32))
    noise = torch.randn(latents.shape, generator=generator)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn(*latents.shape[:2], 1, 1, generator=generator)
    timesteps = draw_timesteps(cfg.timesteps, frozen.scheduler.config.num_train_timesteps, len(indices), generator)
    control = control_maps(cfg.type, data.images[indices], records_of(data, indices))
    return Batch(indices, captions, control, latents, noise, timesteps)


@torch.no_grad()
def encode_captions(frozen: Frozen, captions: list[str], device) -> torch.Tensor:
    ids = frozen.tokenizer(captions, padding="max_length", max_length=frozen.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
    return frozen.text_encoder(ids.to(device))[0]


def batch_loss(controlnet, frozen: Frozen, batch: Batch, snr_gamma: float, device) -> torch.Tensor:
    """The base model's diffusion loss with the ControlNet's residuals added to its UNet."""
    sched = frozen.scheduler
    noisy = sched.add_noise(batch.latents, batch.noise, batch.timesteps).to(device)
    t = batch.timesteps.to(device)
    text = encode_captions(frozen, batch.captions, device)
    down, mid = controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=batch.control.to(device),
                           return_dict=False)
    prediction = frozen.unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(batch.latents, batch.noise, batch.timesteps)
    else:
        target = batch.noise
    per_image = F.mse_loss(prediction.float(), target.to(device).float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma > 0:
        snr = compute_snr(sched, batch.timesteps)
        weight = torch.minimum(snr, torch.full_like(snr, snr_gamma))
        weight = weight / (snr + 1) if sched.config.prediction_type == "v_prediction" else weight / snr
        per_image = per_image * weight.to(device)
    return per_image.mean()


def setup(cfg: ControlNetTrainConfig, data: Any, settings: Any = None) -> tuple[Recipe, ControlNetModel]:
    """The ControlNet on its frozen base model, its optimizer, and the loss of a step."""
    accelerator = Accelerator()
    frozen = load_frozen(cfg, data.images, settings)
    vae_factor = 2 ** (len(frozen.vae.config.block_out_channels) - 1)
    controlnet = build_controlnet(cfg, frozen.unet, vae_factor)
    controlnet.train()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=cfg.lr, weight_decay=1e-2)
    prepared, opt = accelerator.prepare(controlnet, opt)
    device = accelerator.device
    for part in (frozen.unet, frozen.vae, frozen.text_encoder):
        part.to(device)

    def step_loss(step: int) -> torch.Tensor:
        return batch_loss(prepared, frozen, batch_at(cfg, data, frozen, step), cfg.snr_gamma, device)

    def sample(done: int) -> Sampled:
        return Sampled((write_samples(cfg, controlnet, frozen, data, Path(cfg.out_dir) / f"samples-{done:07d}.png"),))

    return Recipe(accelerator, opt, {"controlnet": controlnet}, step_loss, list(controlnet.parameters()),
                  sample=sample), controlnet


def train_controlnet(cfg: ControlNetTrainConfig, data: Any = None, settings: Any = None,
                     cancel: Callable[[], bool] | None = None) -> Path:
    """Train (or resume) a ControlNet as `cfg` says; returns the final diffusers folder `out/final`.

    `data` (default: the captioned arrays at cfg.data, huabu.training.captioned_arrays) has `images` and `captions`.
    Writes, in cfg.out_dir: config.json, log.jsonl (loss every 10 steps), checkpoints/, sample grids
    samples-<step>.png (control maps above outputs) and final/. `cancel()` turning true stops the run after a step,
    with a checkpoint to resume from."""
    from huabu.engine.control.registry import get_preprocessor

    get_preprocessor(cfg.type)  # unknown types fail before anything loads
    if not 0 <= cfg.caption_dropout <= 1:
        raise InvalidRequest(f"caption_dropout must be between 0 and 1, got {cfg.caption_dropout}")
    check_timestep_sampling(cfg.timesteps)
    if data is None:
        data = read_captioned_arrays(Path(cfg.data))
    if len(data.captions) == 0:
        raise HuabuError(f"the dataset at {cfg.data} is empty")
    if cfg.type == GLYPH:
        fill_text_boxes(data)
        # encoded as the engine encodes a prompt beside a glyph unit (huabu.engine.controlnets.encoded_words)
        data.captions = [with_placeholders(caption) for caption in data.captions]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe, controlnet = setup(cfg, data, settings)
    plan = Plan(out, cfg.steps, Schedule("cosine", cfg.warmup, cfg.steps, floor=0.1), same_run(cfg),
                min(cfg.batch_size, len(data.captions)) * recipe.accelerator.num_processes, cfg.checkpoint_every,
                sample_every=cfg.sample_every, log_every=10, config=asdict(cfg), desc=f"controlnet {cfg.type}")
    loop.train(recipe, plan, cancel=cancel)
    controlnet.save_pretrained(out / "final")
    return out / "final"


@torch.no_grad()
def write_samples(cfg: ControlNetTrainConfig, controlnet, frozen: Frozen, data, path: Path) -> Path:
    """A grid of the first `cfg.samples` dataset images' control maps (top row) and what the ControlNet makes of
    them with their captions (bottom row), at fixed seeds, through diffusers' ControlNet pipeline."""
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

    was_training = controlnet.training
    controlnet.eval()
    pipe = StableDiffusionControlNetPipeline(
        vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer, unet=frozen.unet,
        controlnet=controlnet, scheduler=DDIMScheduler.from_config(frozen.sample_scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    count = min(cfg.samples, len(data.captions))
    indices = np.arange(count)
    maps = control_maps(cfg.type, data.images[indices], records_of(data, indices))
    height, width = maps.shape[-2:]
    generators = [torch.Generator().manual_seed(i) for i in range(count)]
    outputs = pipe([data.captions[i] for i in indices], image=maps, height=height, width=width,
                   num_inference_steps=cfg.sample_steps, guidance_scale=cfg.sample_cfg, generator=generators,
                   output_type="np").images
    controlnet.train(was_training)
    top = (maps.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    bottom = (outputs * 255).round().astype(np.uint8)
    grid = np.concatenate([np.concatenate(list(top), axis=1), np.concatenate(list(bottom), axis=1)], axis=0)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path
