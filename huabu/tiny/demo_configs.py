"""Settings of huabu-tiny's demonstrations: its ControlNet preset, and the ControlNet, video and LoRA evaluations.

No torch import: `huabu tiny` builds its options from these dataclasses cheaply. An empty `model` means the built-in
huabu-tiny; empty ControlNet / motion / LoRA paths mean the ones shipped with the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from huabu.training.controlnet_config import ControlNetTrainConfig

CONTROL_TYPES = ("canny", "color")  # the ControlNets huabu-tiny ships and eval-control measures
TEXT_DATA = "data/text-scenes"  # `huabu tiny data --text`: the glyph ControlNet's dataset


@dataclass
class TinyControlNetConfig(ControlNetTrainConfig):
    """`huabu train controlnet` preset for huabu-tiny: the UNet stage's latent cache (its first N scenes, encoded by
    the same VAE) spares hours of VAE encoding. The shipped canny ControlNet is this preset; the colour one adds
    --noise-offset 0.5 --timesteps cubic --lr 5e-4 --steps 2000, without which it does not learn the background
    colour (docs/notes.md). With --type glyph the data default is the text scenes (TEXT_DATA) and the latent cache is
    not used (huabu.tiny.controlnet.for_type)."""

    latents: str = "runs/unet/latents.npy"
    steps: int = 1200
    batch_size: int = 16
    lr: float = 2e-4


@dataclass
class ControlEvalConfig:
    model: str = ""
    controlnet: str = ""  # a ControlNet folder for the one type in `types`; empty = the model's shipped ones
    types: str = "canny,color"
    # what each prompt says: "caption" (the full scene caption, which already fixes layout and colours) or
    # "objects" (only the object names, so position, size and colours must come from the control map)
    prompt: str = "objects"
    singles: int = 40  # held-out single-object scenes
    pairs: int = 10  # held-out two-object scenes
    steps: int = 20
    cfg: float = 5.0
    weight: float = 1.0  # ControlNet conditioning scale
    seed: int = 0
    grid: str = ""  # a PNG to write: real scenes, then per type its maps and outputs, then outputs without control


@dataclass
class TextEvalConfig:
    model: str = ""
    controlnet: str = ""  # the glyph ControlNet folder; empty = the model's shipped one
    count: int = 200  # held-out strings, half Chinese, half Latin
    steps: int = 20
    cfg: float = 5.0
    weight: float = 1.0  # glyph ControlNet conditioning scale
    seed: int = 0
    scene_seed: int = 2024  # which held-out strings and scenes (huabu.tiny.text_scenes.eval_text_scenes)
    grid: str = ""  # a PNG to write: real scenes, glyph maps, outputs with the glyph unit, outputs without
    lora: str = ""  # a LoRA applied at weight 1 to every image, with and without the glyph unit
    hires: float = 0.0  # > 0: each image made at half size, then the hires fix 2x at this denoising strength
    hires_steps: int = 10
    upscaler: str = "huabu-tiny-2x"  # the hires fix's upscaler


@dataclass
class VideoEvalConfig:
    model: str = ""
    motion: str = ""  # a MotionAdapter folder or file; empty = the model's own motion_adapter/
    clips: int = 60  # held-out moving scenes, every motion equally often
    frames: int = 8  # as the motion module was trained
    steps: int = 20
    cfg: float = 5.0
    seed: int = 0


@dataclass
class LoraEvalConfig:
    model: str = ""
    style: str = ""  # the paper-cut style LoRA file
    subject: str = ""  # the hbdragon subject LoRA file
    weights: tuple[float, ...] = (0.0, 0.5, 1.0)
    count: int = 30  # held-out prompts per LoRA
    steps: int = 20
    cfg: float = 5.0
    seed: int = 0


@dataclass
class EmbeddingEvalConfig:
    embedding: str = ""  # the trained hbdragon.safetensors (its file name is the word the prompts use)
    model: str = ""
    count: int = 30  # held-out prompts
    steps: int = 20
    cfg: float = 5.0
    seed: int = 0


@dataclass
class IpAdapterEvalConfig:
    model: str = ""
    # an IP-Adapter .safetensors file, or a folder holding one (a run's final/); empty = the shipped one
    # (`huabu tiny ship-ip-adapter`); its image_encoder/ is found beside it, as the engine finds it
    adapter: str = ""
    count: int = 100  # held-out one-object scenes per row (seen and unseen glyphs alike)
    steps: int = 20
    cfg: float = 5.0
    weight: float = 1.0  # IP-Adapter weight
    seed: int = 0
    scene_seed: int = 3333  # which held-out scenes and references
