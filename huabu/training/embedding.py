"""Textual inversion (Gal et al., "An Image is Worth One Word"), as A1111's train embedding does it: new token
vectors, started from an init word's, learn the diffusion loss on captioned images while every model weight stays
frozen. A caption names the embedding by its token; the vectors join the text encoder through a forward hook on its
token embedding, so nothing of the model is resized or changed. Batches, timesteps and noise are functions of
(seed, step), so a resumed run continues exactly (huabu.training.loop). The result is an A1111-readable
`NAME.safetensors` (`emb_params` [vectors, width], fp16, with name/step/checkpoint metadata) that prompts use from
the embeddings folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from huabu.core.atomic import atomic_path
from huabu.core.errors import InvalidRequest
from huabu.engine.embeddings import name_pattern
from huabu.training import loop
from huabu.training.embedding_config import EmbeddingTrainConfig
from huabu.training.loop import Plan, Recipe, Sampled, same_run
from huabu.training.noise import check_timestep_sampling, draw_timesteps
from huabu.training.schedules import Schedule

COSINE_FLOOR = 0.1  # --lr-schedule cosine ends at this share of the peak rate
PLACEHOLDER = "huabutitrain"  # the token strings captions are written with while training (never a prompt word)


class TokenVectors(torch.nn.Module):
    """The trained vectors, and the hooks that put them in place of their placeholder tokens: the token table
    looks up a stand-in id (the table has no rows for them), then their rows are replaced."""

    def __init__(self, initial: torch.Tensor, first_id: int, max_norm: float = 0.0) -> None:
        super().__init__()
        self.vectors = torch.nn.Parameter(initial.clone())
        self.first_id = first_id
        self.max_norm = max_norm
        self._ids: torch.Tensor | None = None

    @property
    def used(self) -> torch.Tensor:
        """The vectors used and saved: the trained ones, scaled down to `max_norm` where longer. A vector far longer
        than the model's word rows outweighs the rest of the prompt (the background and position words)."""
        if not self.max_norm:
            return self.vectors
        norms = self.vectors.norm(dim=-1, keepdim=True)
        return self.vectors * (self.max_norm / norms.clamp(min=self.max_norm))

    def attach(self, table: torch.nn.Module) -> None:
        table.register_forward_pre_hook(self._stand_in)
        table.register_forward_hook(self._replace)

    def _stand_in(self, module: torch.nn.Module, inputs: tuple) -> tuple:
        self._ids = inputs[0]
        return (inputs[0].clamp(max=self.first_id - 1), *inputs[1:])

    def _replace(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        ids, self._ids = self._ids, None
        chosen = ids >= self.first_id
        if not bool(chosen.any()):
            return output
        output = output.clone()
        output[chosen] = self.used[ids[chosen] - self.first_id].to(output.dtype)
        return output


def model_folder(model: str) -> Path:
    from huabu.core.settings import BUILTIN_MODEL
    from huabu.engine.models import BUILTIN_DIR

    folder = BUILTIN_DIR if model == BUILTIN_MODEL else Path(model).expanduser()
    if not (folder / "model_index.json").is_file():
        raise InvalidRequest(f"--model {model}: embeddings train on huabu-tiny or a diffusers folder")
    return folder


def placeholders(count: int) -> list[str]:
    return [f"{PLACEHOLDER}{i}" for i in range(count)]


def check_config(cfg: EmbeddingTrainConfig) -> None:
    if not re.fullmatch(r"[\w-]+", cfg.token):  # a word of its own in prompts, and a file name
        raise InvalidRequest(f"--token {cfg.token!r}: give the embedding a name of letters, digits, - or _")
    if not 1 <= cfg.vectors <= 75:
        raise InvalidRequest(f"--vectors must be between 1 and 75, got {cfg.vectors}")
    if cfg.max_norm < 0:
        raise InvalidRequest(f"--max-norm must be 0 (no limit) or positive, got {cfg.max_norm}")
    Schedule(cfg.lr_schedule, cfg.warmup)  # a one-line error for an unknown name, before any model loads
    if cfg.object_weight < 0:
        raise InvalidRequest(f"--object-weight must be 0 or positive, got {cfg.object_weight}")
    if cfg.background_prior < 0:
        raise InvalidRequest(f"--background-prior must be 0 or positive, got {cfg.background_prior}")
    if not cfg.data:
        raise InvalidRequest("--data: give the folder of training images")
    check_timestep_sampling(cfg.timesteps)


def _images(cfg: EmbeddingTrainConfig, size: int) -> tuple[np.ndarray, list[str]]:
    """The training images at `size` px (uint8) and their captions with the token written as placeholders."""
    from PIL import Image

    from huabu.training.lora_data import load_dataset

    dataset = load_dataset(cfg.data, trigger=cfg.token, template="{trigger}")
    tokens = " ".join(placeholders(cfg.vectors))
    images, captions = [], []
    for example in dataset.examples:
        caption = name_pattern(cfg.token).sub(tokens, example.caption.replace("[name]", cfg.token))
        if tokens not in caption:
            raise InvalidRequest(f"the caption of {example.path.name} does not name the token {cfg.token!r}")
        image = Image.open(example.path).convert("RGB").resize((size, size), Image.LANCZOS)
        images.append(np.asarray(image))
        captions.append(caption)
    return np.stack(images), captions


def setup(cfg: EmbeddingTrainConfig) -> tuple[Recipe, dict]:
    """The frozen model, the vectors (init word's, repeated), the optimizer over them, and the loss of a step."""
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from huabu.training.diffusion import object_masks, to_tensor

    check_config(cfg)
    folder = model_folder(cfg.model)
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    for frozen in (text_encoder, vae, unet):
        frozen.eval().requires_grad_(False)
    table = text_encoder.get_input_embeddings()
    init_ids = tok(cfg.init_word, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
    initial = table.weight[[init_ids[i % len(init_ids)] for i in range(cfg.vectors)]].detach()
    first_id = len(tok)
    tok.add_tokens(placeholders(cfg.vectors))  # ids from first_id on; the hook gives them their vectors
    vectors = TokenVectors(initial, first_id, cfg.max_norm)
    optimizer = torch.optim.AdamW(vectors.parameters(), lr=cfg.lr, weight_decay=0.0)
    vectors, optimizer = accelerator.prepare(vectors, optimizer)
    device = accelerator.device
    for frozen in (text_encoder, vae, unet):
        frozen.to(device)
    trained = accelerator.unwrap_model(vectors)
    trained.attach(table)

    size = cfg.resolution or unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    images, captions = _images(cfg, size)
    with torch.no_grad():  # the images never change: their latents once
        latents = torch.cat([vae.encode(to_tensor(images[i:i + 16]).to(device)).latent_dist.mode()
                             for i in range(0, len(images), 16)]) * vae.config.scaling_factor
    # The background is named by the caption; weighting the object's cells keeps the vectors on its shape.
    masks = object_masks(images, latents.shape[-1]).to(device)
    weights = 1.0 + cfg.object_weight * masks
    schedule = DDPMScheduler.from_pretrained(folder / "scheduler")

    def token_ids(texts: list[str]) -> torch.Tensor:
        return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(device)

    # The prior captions say the init word where the token stands: on the background cells the vectors should change
    # nothing the model already draws, which the object weight alone lets them do (they took up background colours).
    # They hold no new token, so they are encoded once, as the latents are.
    prior_conds = None
    if cfg.background_prior:
        prior_captions = [caption.replace(" ".join(placeholders(cfg.vectors)), cfg.init_word) for caption in captions]
        with torch.no_grad():
            prior_conds = torch.cat([text_encoder(token_ids(prior_captions[i:i + 16]))[0]
                                     for i in range(0, len(prior_captions), 16)])

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([cfg.seed, step])
        idx = rng.choice(len(captions), size=cfg.batch_size, replace=len(captions) < cfg.batch_size)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x0 = latents[torch.as_tensor(idx)]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = draw_timesteps(cfg.timesteps, schedule.config.num_train_timesteps, len(idx), gen).to(device)
        noisy = schedule.add_noise(x0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(token_ids([captions[i] for i in idx]))[0]).sample
        target = schedule.get_velocity(x0, noise, t) if schedule.config.prediction_type == "v_prediction" else noise
        w = weights[torch.as_tensor(idx)]
        loss = ((pred.float() - target.float()) ** 2 * w).mean() / w.mean()
        if cfg.background_prior:
            with torch.no_grad():
                prior = unet(noisy, t, encoder_hidden_states=prior_conds[torch.as_tensor(idx)]).sample
            background = 1.0 - masks[torch.as_tensor(idx)]
            drift = ((pred.float() - prior.float()) ** 2 * background).mean() / background.mean().clamp(min=1e-6)
            loss = loss + cfg.background_prior * drift
        return loss

    parts = {"tokenizer": tok, "text_encoder": text_encoder, "vae": vae, "unet": unet, "scheduler": schedule,
             "vectors": trained, "captions": captions, "folder": folder}

    def sample(done: int) -> Sampled:
        return Sampled(write_sample(parts, cfg, done))

    recipe = Recipe(accelerator, optimizer, {"vectors": trained}, step_loss, list(vectors.parameters()),
                    sample=sample if cfg.sample_every else None)
    return recipe, parts


def write_embedding(vectors: torch.Tensor, cfg: EmbeddingTrainConfig, path: Path, step: int) -> Path:
    """The vectors as A1111 reads a safetensors embedding: `emb_params` [vectors, width], fp16, with metadata."""
    from safetensors.torch import save_file

    metadata = {"name": cfg.token, "step": str(step), "sd_checkpoint_name": Path(cfg.model).name,
                "huabu_init_word": cfg.init_word}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"emb_params": vectors.detach().to(torch.float16).cpu().contiguous()}, str(tmp), metadata=metadata)
    return path


def write_sample(parts: dict, cfg: EmbeddingTrainConfig, done: int) -> tuple[Path, ...]:
    """The embedding at this step, and one image of the sample prompt drawn with it (A1111's training previews)."""
    from diffusers import StableDiffusionPipeline

    out = Path(cfg.out)
    embedding = write_embedding(parts["vectors"].used, cfg, out / "embeddings" / f"{cfg.token}-{done}.safetensors",
                                done)
    prompt = cfg.sample_prompt.replace(cfg.token, " ".join(placeholders(cfg.vectors))) or parts["captions"][0]
    pipe = StableDiffusionPipeline(parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["unet"],
                                   parts["scheduler"], None, None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        image = pipe(prompt, num_inference_steps=20, generator=torch.Generator().manual_seed(cfg.seed)).images[0]
    path = out / "images" / f"{cfg.token}-{done}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return embedding, path


def train(cfg: EmbeddingTrainConfig, progress: Callable | None = None, cancel: Callable[[], bool] | None = None
          ) -> Path:
    """Train (or resume training) an embedding; returns `out/NAME.safetensors`."""
    recipe, parts = setup(cfg)
    schedule = Schedule(cfg.lr_schedule, cfg.warmup, cfg.steps, COSINE_FLOOR)
    plan = Plan(Path(cfg.out), cfg.steps, schedule, same_run(cfg), cfg.batch_size * recipe.accelerator.num_processes,
                cfg.checkpoint_every, sample_every=cfg.sample_every, log_every=10, config=asdict(cfg),
                desc=f"embedding {cfg.token}")
    loop.train(recipe, plan, progress=progress, cancel=cancel)
    return write_embedding(parts["vectors"].used, cfg, Path(cfg.out) / f"{cfg.token}.safetensors", cfg.steps)
