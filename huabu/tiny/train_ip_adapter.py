"""huabu-tiny's IP-Adapter stage: image prompts for the frozen shipped huabu-tiny, as the IP-Adapter paper trains them.

Decoupled cross-attention through diffusers' own modules: a freshly initialised state dict in the original layout
(`image_proj.*`, `ip_adapter.N.to_{k,v}_ip.weight`) goes in through `unet._load_ip_adapter_weights`, which installs
IPAdapterAttnProcessor2_0 and an image projection; only those train. to_k_ip / to_v_ip start as copies of each
layer's to_k / to_v, as the paper does. The image encoder is the shipped huabu-tiny-scorer's vision tower, frozen as
in the paper or, with `encoder_lr`, trained with the adapter (and saved with it), optionally towards an identity
embedding as IP-Adapter FaceID's face-recognition encoder gives (`identity_weight`); its inputs are prepared by the
CLIPImageProcessor that diffusers' `load_ip_adapter` gives the pipeline.

The plain adapter's projection is an ImageProjection (4 tokens) of the encoder's projected image embedding;
`plus` (IP-Adapter Plus) trains an IPAdapterPlusImageProjection, a Resampler of 16 query tokens, over the
encoder's penultimate hidden states (CLS and patch tokens), which diffusers feeds any projection but the plain one.

Each step takes one-object world scenes (their latents cached once) and, for each, a reference rendered anew from
(seed, step): the same object elsewhere, on another background, in another colour where it takes one
(huabu.tiny.ip_adapter_scenes). Half the captions leave the object's name out, so the adapter must bring it; 5% of
image embeddings are zeros and 5% of captions empty, for classifier-free guidance on both. The caption gives the
background and position, so the loss can weight the object's cells (`object_weight`) and draw noisy timesteps more
often (`timesteps`), where the shape that only the reference gives is decided. With `distill`, the adapter's
prediction is also drawn towards the frozen UNet's own from the full caption: what the name alone would draw.
With `unet_lora_rank`, a LoRA on the UNet's attention trains beside the adapter and ships with it (FaceID's
`_lora.safetensors`), which the engine applies whenever the adapter is used, so that the UNet learns to draw
what the image tokens say rather than the adapter alone steering a UNet that never saw them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from huabu.core.errors import InvalidRequest
from huabu.tiny import ip_adapter_scenes as IS
from huabu.tiny import scenes as S
from huabu.tiny.configs import IpAdapterTrainConfig
from huabu.tiny.data import load_dataset
from huabu.tiny.eval import SCORER_DIR
from huabu.tiny.train_unet import base_folder, encode_latents
from huabu.training import loop
from huabu.training.captioned_arrays import CaptionedArrays
from huabu.training.diffusion import encode_text, noise_scheduler, object_masks
from huabu.training.loop import Plan, Recipe, same_run
from huabu.training.noise import check_timestep_sampling, draw_timesteps
from huabu.training.schedules import Schedule

WEIGHTS_FILE = "ip-adapter.safetensors"
LORA_FILE = "ip-adapter_lora.safetensors"
IMAGE_ENCODER = "image_encoder"
NUM_TOKENS = 4  # what diffusers' loader builds for a plain IP-Adapter's `image_proj.proj`
# The Plus Resampler as diffusers' converter rebuilds it from the file: depth 4 whatever the file holds, heads read
# as to_q's rows / 64, the query count and widths read from the tensors.
PLUS_QUERIES = 16  # as ip-adapter-plus_sd15
PLUS_WIDTH = 128  # huabu-tiny's cross_attention_dim: 2 heads of 64 channels
PLUS_DEPTH = 4
HEAD_DIM = 64
# diffusers' Resampler block names -> the original layout's (layers.N.0: attention, layers.N.1: feed-forward)
RESAMPLER_NAMES = (("ln0.", "0.norm1."), ("ln1.", "0.norm2."), ("attn.to_q.", "0.to_q."),
                   ("attn.to_out.0.", "0.to_out."), ("ff.0.", "1.0."), ("ff.1.net.0.proj.", "1.1."),
                   ("ff.1.net.2.", "1.3."))


def cross_attention_layers(unet: UNet2DConditionModel) -> list[tuple[int, str, torch.nn.Module]]:
    """(original-layout number, processor name, attention module) of each cross-attention layer, numbered as
    diffusers' loader reads `ip_adapter.N.*`: every attention layer counts two, cross-attention ones are odd."""
    modules = dict(unet.named_modules())
    layers, key_id = [], 1
    for name in unet.attn_processors:
        if name.startswith("encoder_hid_proj."):  # a loaded Plus Resampler's own attention
            continue
        if not name.endswith("attn1.processor"):
            layers.append((key_id, name, modules[name.removesuffix(".processor")]))
            key_id += 2
    return layers


def image_projection(unet: UNet2DConditionModel, encoder: CLIPVisionConfig, plus: bool) -> torch.nn.Module:
    """A new diffusers image projection for `unet` over `encoder`'s image embedding, or its hidden states (Plus)."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    width = unet.config.cross_attention_dim
    if plus:
        return IPAdapterPlusImageProjection(embed_dims=encoder.hidden_size, output_dims=width, hidden_dims=PLUS_WIDTH,
                                            depth=PLUS_DEPTH, dim_head=HEAD_DIM, heads=PLUS_WIDTH // HEAD_DIM,
                                            num_queries=PLUS_QUERIES)
    return ImageProjection(image_embed_dim=encoder.projection_dim, cross_attention_dim=width,
                           num_image_text_embeds=NUM_TOKENS)


def resampler_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers IPAdapterPlusImageProjection's state dict in the original Resampler's names (to_k and to_v
    joined as to_kv), which diffusers' `_convert_ip_adapter_image_proj_to_diffusers` reads back."""
    original = {}
    for key, value in state.items():
        if not key.startswith("layers."):
            original[key] = value
            continue
        _, number, rest = key.split(".", 2)
        if rest.startswith("attn.to_k."):
            original[f"layers.{number}.0.to_kv.weight"] = torch.cat([value, state[key.replace(".to_k.", ".to_v.")]])
        elif not rest.startswith("attn.to_v."):
            old, new = next(names for names in RESAMPLER_NAMES if rest.startswith(names[0]))
            original[f"layers.{number}.{new}{rest.removeprefix(old)}"] = value
    return original


def original_projection(proj: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An image projection's tensors as the original layout's `image_proj.*` names them (without the prefix)."""
    from diffusers.models.embeddings import ImageProjection

    if isinstance(proj, ImageProjection):
        return {key.replace("image_embeds", "proj"): value for key, value in proj.state_dict().items()}
    return resampler_original(proj.state_dict())


def initial_state(unet: UNet2DConditionModel, encoder: CLIPVisionConfig, seed: int, plus: bool = False
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """A new IP-Adapter for `unet` in the original layout: a random image projection (as diffusers initialises
    one) and to_k_ip / to_v_ip copied from each layer's to_k / to_v."""
    torch.manual_seed(seed)
    image_proj = original_projection(image_projection(unet, encoder, plus))
    ip_adapter = {}
    for key_id, _, attn in cross_attention_layers(unet):
        ip_adapter[f"{key_id}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
        ip_adapter[f"{key_id}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def trainable(unet: UNet2DConditionModel) -> torch.nn.ModuleDict:
    """The adapter's modules on a UNet it was loaded into: the image projection and each layer's processor."""
    processors = unet.attn_processors
    return torch.nn.ModuleDict({
        "image_proj": unet.encoder_hid_proj,
        "layers": torch.nn.ModuleList(processors[name] for _, name, _ in cross_attention_layers(unet))})


def original_state(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter on `unet` as one flat original-layout state dict (`image_proj.*`, `ip_adapter.N.*`)."""
    proj = original_projection(unet.encoder_hid_proj.image_projection_layers[0])
    state = {"image_proj." + key: value for key, value in proj.items()}
    processors = unet.attn_processors
    for key_id, name, _ in cross_attention_layers(unet):
        processor = processors[name]
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = processor.to_k_ip[0].weight
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = processor.to_v_ip[0].weight
    return {key: value.detach().float().contiguous() for key, value in state.items()}


def reference_pixels(processor: CLIPImageProcessor, images: list[np.ndarray]) -> torch.Tensor:
    return processor(images=list(images), return_tensors="pt").pixel_values


def image_features(encoder: CLIPVisionModelWithProjection, pixels: torch.Tensor, drop: torch.Tensor,
                   plus: bool) -> torch.Tensor:
    """What diffusers' `encode_image` gives the adapter's projection, the `drop`ped references as its negative: the
    image embedding (zeros when dropped) or, for Plus, the penultimate hidden states (of a zero image)."""
    if plus:
        pixels = pixels.masked_fill(drop[:, None, None, None], 0.0)
        return encoder(pixels, output_hidden_states=True).hidden_states[-2]
    return encoder(pixels).image_embeds.masked_fill(drop[:, None], 0.0)


def single_scenes(data: CaptionedArrays, objects: int) -> np.ndarray:
    """Indices of the dataset's one-object scenes (object and background, maybe position, in the caption) of the
    first `objects` objects."""
    picked = [i for i, a in enumerate(data.attrs)
              if a.get("category") in ("single_object", "position") and a["objects"][0] < objects]
    if not picked:
        raise InvalidRequest(f"no one-object scenes of the first {objects} objects in the dataset: make it with "
                             f"`huabu tiny data --world geneval`")
    return np.asarray(picked)


def batch_conditions(cfg: IpAdapterTrainConfig, step: int, attrs: list[dict], captions: list[str]
                     ) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """Step `step`'s captions (nameless or full, some empty), references and image-drop mask for the scenes of
    `attrs`, all functions of (seed, step)."""
    rng = np.random.default_rng([cfg.seed, step, 31])
    texts, refs = [], []
    for a, caption in zip(attrs, captions):
        position = a["positions"][0] if a["said"]["position"] else None
        text = IS.nameless_caption(a["background"], position) if rng.random() < cfg.nameless else caption
        texts.append("" if rng.random() < cfg.drop_text else text)
        refs.append(IS.reference_image(rng, a["objects"][0], a["positions"][0], a["background"]))
    return texts, refs, rng.random(len(attrs)) < cfg.drop_image


def unet_lora(unet: UNet2DConditionModel, rank: int, seed: int) -> torch.nn.ModuleList:
    """A LoRA of `rank` added to `unet`'s attention projections (the trainer's targets; the adapter's own to_k_ip /
    to_v_ip are not among them): its layers, for the optimizer and the checkpoints."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    from huabu.training.lora import UNET_TARGETS

    torch.manual_seed(seed + 1)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    return torch.nn.ModuleList(m for m in unet.modules() if isinstance(m, LoraLayer))


def frozen_parts(cfg: IpAdapterTrainConfig) -> tuple[Path, UNet2DConditionModel, CLIPTextModel, CLIPTokenizer,
                                                    CLIPVisionModelWithProjection]:
    base = base_folder(cfg.model, "--model")
    unet = UNet2DConditionModel.from_pretrained(base / "unet", dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
    encoder = CLIPVisionModelWithProjection.from_pretrained(cfg.image_encoder or SCORER_DIR, dtype=torch.float32)
    for module in (unet, text_encoder, encoder):
        module.eval().requires_grad_(False)
    return base, unet, text_encoder, tok, encoder


def setup(cfg: IpAdapterTrainConfig) -> tuple[Recipe, UNet2DConditionModel, CLIPVisionModelWithProjection]:
    """The base UNet with a new adapter attached, the image encoder, their optimizer, and the loss of a step."""
    from diffusers import AutoencoderKL

    check_timestep_sampling(cfg.timesteps)
    if not 0 < cfg.objects <= IS.UNSEEN[0]:
        raise InvalidRequest(f"--objects must be 1-{IS.UNSEEN[0]} (the world's last {len(IS.UNSEEN)} objects are "
                             f"held out to measure unseen glyphs), got {cfg.objects}")
    if cfg.identity_weight < 0 or (cfg.identity_weight and not cfg.encoder_lr):
        raise InvalidRequest(f"--identity-weight must be 0, or positive with --encoder-lr (it trains the image "
                             f"encoder), got {cfg.identity_weight}")
    if cfg.distill < 0:
        raise InvalidRequest(f"--distill must be 0 or positive, got {cfg.distill}")
    if cfg.unet_lora_rank < 0:
        raise InvalidRequest(f"--unet-lora-rank must be 0 (no LoRA) or positive, got {cfg.unet_lora_rank}")
    if cfg.object_weight < 0:
        raise InvalidRequest(f"--object-weight must be 0 or positive, got {cfg.object_weight}")
    accelerator = Accelerator()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(Path(cfg.data))
    chosen = single_scenes(data, cfg.objects)
    if len(chosen) < cfg.batch_size:
        raise InvalidRequest(f"the dataset has {len(chosen)} one-object scenes of the first {cfg.objects} objects, "
                             f"fewer than --batch-size {cfg.batch_size}: make a larger one with `huabu tiny data`")
    base, unet, text_encoder, tok, encoder = frozen_parts(cfg)
    # the UNet as shipped, without the adapter's processors: what the object's name draws
    teacher = UNet2DConditionModel.from_pretrained(base / "unet", dtype=torch.float32).eval().requires_grad_(False) \
        if cfg.distill else None
    vae = AutoencoderKL.from_pretrained(base / "vae", dtype=torch.float32).eval()
    images = np.asarray(data.images[chosen])
    latents = encode_latents(vae, images, out / "latents.npy")
    weights = 1.0 + cfg.object_weight * object_masks(images, latents.shape[-1]) if cfg.object_weight else None
    unet._load_ip_adapter_weights([initial_state(unet, encoder.config, cfg.seed, cfg.plus)],
                                  low_cpu_mem_usage=False)
    adapter = trainable(unet).requires_grad_(True)
    lora = unet_lora(unet, cfg.unet_lora_rank, cfg.seed) if cfg.unet_lora_rank else None
    tune_encoder = cfg.encoder_lr > 0
    readout = torch.nn.Linear(encoder.config.projection_dim, cfg.objects) if cfg.identity_weight else None
    groups = [{"params": list(adapter.parameters()) + (list(readout.parameters()) if readout else []), "lr": cfg.lr}]
    if tune_encoder:
        groups.append({"params": list(encoder.requires_grad_(True).parameters()), "lr": cfg.encoder_lr})
    if lora is not None:
        groups.append({"params": [p for p in lora.parameters() if p.requires_grad], "lr": cfg.unet_lora_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    adapter, encoder, opt = accelerator.prepare(adapter, encoder, opt)
    if readout is not None:
        readout = accelerator.prepare(readout)
    processor = CLIPImageProcessor(size=encoder.config.image_size, crop_size=encoder.config.image_size)
    sched = noise_scheduler()
    device = accelerator.device
    for module in (unet, text_encoder, encoder, teacher):
        if module is not None:
            module.to(device)

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([cfg.seed, step])
        pick = np.sort(rng.choice(len(chosen), size=cfg.batch_size, replace=False))
        texts, refs, drop = batch_conditions(cfg, step, [data.attrs[i] for i in chosen[pick]],
                                             [data.captions[i] for i in chosen[pick]])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x0 = torch.from_numpy(latents[pick].astype(np.float32))
        noise = torch.randn(x0.shape, generator=gen)
        t = draw_timesteps(cfg.timesteps, sched.config.num_train_timesteps, len(x0), gen)
        with torch.no_grad():
            cond = encode_text(tok, text_encoder, texts)
        pixels = reference_pixels(processor, refs).to(device)
        dropped = torch.from_numpy(drop).to(device)
        with torch.set_grad_enabled(tune_encoder):
            features = image_features(encoder, pixels, dropped, cfg.plus)
        xt = sched.add_noise(x0, noise, t).to(device)
        pred = unet(xt, t.to(device), encoder_hidden_states=cond,
                    added_cond_kwargs={"image_embeds": [features[:, None]]}).sample
        w = weights[torch.as_tensor(pick)].to(device) if weights is not None else torch.ones_like(pred)
        loss = ((pred - noise.to(device)) ** 2 * w).mean() / w.mean()
        objects = torch.as_tensor([data.attrs[i]["objects"][0] for i in chosen[pick]], device=device)
        if teacher is not None:
            captioned = torch.as_tensor([bool(text) for text in texts], device=device)
            taught = captioned & ~dropped & (objects < len(S.OBJECTS))
            if taught.any():
                with torch.no_grad():
                    full = encode_text(tok, text_encoder, [data.captions[i] for i in chosen[pick]])
                    target = teacher(xt, t.to(device), encoder_hidden_states=full).sample
                gap = ((pred - target) ** 2 * w)[taught]
                loss = loss + cfg.distill * gap.mean() / w[taught].mean()
        if readout is None:
            return loss
        embeds = encoder(pixels).image_embeds
        return loss + cfg.identity_weight * F.cross_entropy(readout(embeds), objects)

    trained = {"adapter": accelerator.unwrap_model(adapter)}
    if tune_encoder:
        trained["encoder"] = accelerator.unwrap_model(encoder)
    if readout is not None:
        trained["readout"] = accelerator.unwrap_model(readout)
    if lora is not None:
        trained["unet_lora"] = lora
    recipe = Recipe(accelerator, opt, trained, step_loss,
                    [p for module in trained.values() for p in module.parameters() if p.requires_grad])
    return recipe, unet, accelerator.unwrap_model(encoder)


def save_final(unet: UNet2DConditionModel, folder: Path, encoder: CLIPVisionModelWithProjection,
               lora_rank: int = 0) -> Path:
    """`folder`/ip-adapter.safetensors in the original layout and `folder`/image_encoder/ (the encoder's config.json
    and model.safetensors), as huabu's IP-Adapter folder reads them; with a UNet LoRA, also
    `folder`/ip-adapter_lora.safetensors (kohya's keys), named as IP-Adapter FaceID names its LoRA."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(original_state(unet), str(folder / WEIGHTS_FILE))
    if lora_rank:
        from peft.utils import get_peft_model_state_dict

        from huabu.engine import lora_formats as formats

        layers = formats.from_peft("unet", get_peft_model_state_dict(unet), lora_rank)
        formats.write_lora(folder / LORA_FILE, layers)
    encoder.save_pretrained(folder / IMAGE_ENCODER, safe_serialization=True)
    return folder


def train(cfg: IpAdapterTrainConfig, cancel: Callable[[], bool] | None = None) -> Path:
    """Train (or resume) the IP-Adapter; returns the final folder (weights and image encoder).
    `cancel()` turning true stops the run after a step, with a checkpoint to resume from."""
    recipe, unet, encoder = setup(cfg)
    plan = Plan(Path(cfg.out), cfg.steps, Schedule("constant", cfg.warmup), same_run(cfg),
                cfg.batch_size * recipe.accelerator.num_processes, cfg.checkpoint_every, log_every=10,
                config=asdict(cfg), desc="ip-adapter")
    done = loop.train(recipe, plan, cancel=cancel)
    if done < cfg.steps:
        return Path(cfg.out)
    return save_final(unet, Path(cfg.out) / "final", encoder, cfg.unet_lora_rank)
