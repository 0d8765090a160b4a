"""Hyper-parameters of motion-module training (no torch import: the CLI builds its options from this)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "tiny" / "huabu-tiny"


@dataclass
class MotionTrainConfig:
    base: str = str(BUILTIN_DIR)  # SD-shaped diffusers folder: its UNet stays frozen, its VAE encodes the clips
    out: str = "runs/motion"
    seed: int = 0  # the moving-scene stream and the training order both derive from it
    clips: int = 4000  # moving-scene clips encoded once up front
    frames: int = 8  # 8-frame clips: a step costs a UNet step of batch 32, which this CPU affords (16 doubles it)
    steps: int = 3000
    batch_size: int = 4  # clips per step
    lr: float = 5e-4
    warmup: int = 100
    snr_gamma: float = 5.0  # min-SNR loss weighting; 0 turns it off
    heads: int = 4  # attention heads of each temporal transformer
    max_frames: int = 16  # the adapter's longest clip (its position table)
    checkpoint_every: int = 250
    sample_every: int = 1000
    sample_steps: int = 20
    init: str = ""  # a MotionAdapter folder to start from (e.g. a shipped module); empty = fresh, identity layers
    # rank of a LoRA on the image model's cross-attention (attn2 to_k/to_v) trained with the motion module; 0 = none.
    # The temporal layers have no text input: this LoRA is how motion words ("moving up") reach the features they
    # read, when the frozen image model never saw those words. Saved beside the module as text_lora.safetensors.
    text_lora_rank: int = 0
    # "uniform" or "cubic" (most draws noisy: where a clip's path is decided, so where the motion words matter)
    timesteps: str = "uniform"
    # std of per-frame low-frequency noise added in training (huabu.training.noise.lowfreq_noise). Sampling started
    # from a real clip noised to the first DDIM step (t=901) follows that clip's path, not the words: in training the
    # path can be read from the noisy clip. Hidden under smooth noise, it has to come from the words. 0 = none.
    lowfreq_noise: float = 0.0
    # the loss is weighted at least as an x0-prediction loss of this weight (epsilon loss x max(1, x0_floor / SNR)):
    # the path is decided in the noisiest steps, whose x0 errors plain epsilon loss scales by SNR (0.005 at t=999),
    # so they barely move the weights. 0 = off.
    x0_floor: float = 0.0
    # attention heads of the motion-word layers (huabu.engine.motion_words: a warp, chosen by the caption, of what the
    # motion modules add to each frame), saved beside the module as motion_words.safetensors; 0 = none, unless the
    # --init module has them (they are carried on)
    motion_words_heads: int = 0
    # comma-separated single-token words whose input embeddings train with the motion words, each optionally starting
    # from a word the text encoder knows ("up=top,down=bottom"): words it never learned, whose rows are still random
    # and which its output barely tells apart. Saved in the motion-words file and used only for video prompts
    # (huabu.engine.motion_words.WordRows); carried on from an --init module that has them
    motion_tokens: str = ""
    motion_tokens_lr: float = 3e-4  # their learning rate (huabu-tiny's rows have norms of 0.2 to 0.4)
