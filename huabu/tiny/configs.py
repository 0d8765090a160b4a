"""Hyper-parameters of each huabu-tiny training stage, one dataclass per stage.

Kept apart from the training code (no torch import) so that the CLI can build its options from them cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClipTrainConfig:
    data: str = "data/scenes"
    out: str = "runs/clip"
    seed: int = 0
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.05
    head_weight: float = 1.0
    text_hidden: int = 128
    text_layers: int = 4
    vision_hidden: int = 128
    vision_layers: int = 4
    projection_dim: int = 128
    checkpoint_every: int = 250
    eval_every: int = 500


@dataclass
class VaeTrainConfig:
    data: str = "data/scenes"
    out: str = "runs/vae"
    seed: int = 0
    steps: int = 4000  # length of the learning-rate schedule
    stop_after: int = 3000  # where training stops (the shipped VAE: the 4000-step schedule stopped here)
    crop_steps: int = 3000  # the first steps train on crops around objects (see crop_batch)
    crop: int = 32
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    object_weight: float = 5.0
    gradient_weight: float = 1.0
    kl_weight: float = 1e-6
    channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    checkpoint_every: int = 250
    sample_every: int = 500


@dataclass
class UnetTrainConfig:
    data: str = "data/scenes"
    clip: str = "runs/clip/final"
    vae: str = "runs/vae/final"
    # a huabu-tiny-shaped model (name or folder) whose frozen VAE, text encoder and tokenizer replace --clip and
    # --vae: a UNet trained under the parts huabu-tiny-dit trains under, for the UNet-vs-DiT comparison
    base: str = ""
    out: str = "runs/unet"
    seed: int = 0
    images: int = 100_000  # the first N dataset scenes, VAE-encoded once up front (encoding all 200k costs hours)
    steps: int = 4500  # the shipped UNet; the LR is constant after warm-up, so a longer run just goes on
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 200
    snr_gamma: float = 5.0
    # as the DiT stage's: "en", "zh" or "mix" captions, and the text encoder trained beside the UNet when > 0
    captions: str = "en"
    text_lr: float = 0.0
    ema_decay: float = 0.999
    channels: tuple[int, ...] = (64, 128, 192)
    heads: int = 4
    checkpoint_every: int = 250
    sample_every: int = 1000


@dataclass
class DitTrainConfig:
    """huabu-tiny-dit's denoiser: an SD3-shaped MMDiT trained by flow matching on the UNet stage's scenes."""

    data: str = "data/scenes"
    base: str = "huabu-tiny"  # the frozen VAE, CLIP text encoder and tokenizer: a huabu-tiny-shaped model
    text_projection: str = ""  # CLIP's text projection (safetensors "weight"); "": the shipped huabu-tiny-scorer's
    out: str = "runs/dit"
    seed: int = 0
    images: int = 100_000  # the first N dataset scenes, VAE-encoded once up front, as in the UNet stage
    # the UNet stage's training FLOPs (4500 steps x 93.0 GFLOP) at 78.3 GFLOP a step (benchmarks/tiny_dit_vs_unet.py);
    # constant LR after warm-up, so a longer run just goes on
    steps: int = 5350
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 200
    weighting: str = "logit_normal"  # diffusers' SD3 weighting_scheme: logit_normal, mode, cosmap, sigma_sqrt, none
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0  # the flow schedule's sigma shift, in training and in the shipped scheduler
    # "en", "zh" or "mix" (each image's language drawn anew every step); zh and mix need `huabu tiny data --world
    # geneval`'s Chinese captions and a trained text encoder
    captions: str = "en"
    text_lr: float = 0.0  # > 0: the text encoder trains with the transformer at this rate; 0: frozen
    # an assembled huabu-tiny-dit folder (name or path) to start from: its transformer, and its text encoder and
    # tokenizer in place of the base's (trained on with --text-lr, else frozen); "": a fresh transformer
    init: str = ""
    ema_decay: float = 0.999
    layers: int = 4  # SD3's rule at depth 4: width 64 x depth = 256, one 64-channel head per layer of depth
    heads: int = 4
    head_dim: int = 64
    checkpoint_every: int = 250
    sample_every: int = 1000


@dataclass
class IpAdapterTrainConfig:
    """huabu-tiny's IP-Adapter: decoupled cross-attention (to_k_ip / to_v_ip per cross-attention layer) and the image
    projection, trained on the frozen shipped huabu-tiny UNet under the huabu-tiny-scorer vision tower (frozen unless
    `encoder_lr`)."""

    data: str = "data/world-scenes"  # `huabu tiny data --world geneval`; its one-object scenes are used
    model: str = "huabu-tiny"  # the frozen base: a huabu-tiny-shaped diffusers folder or model name
    image_encoder: str = ""  # a CLIPVisionModelWithProjection folder; "": the shipped huabu-tiny-scorer
    out: str = "runs/ip-adapter"
    seed: int = 0
    objects: int = 64  # train on the first N objects of huabu.tiny.world: those the base UNet knows
    # 1.0 s a step at batch 32 on one thread of a busy 2-core CPU (31 images/s): 3000 steps is about 50 minutes
    # (Plus: 1.1 s a step, 55 minutes)
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3  # the paper's 1e-4 is for 1M steps; a 200-step probe at 1e-3 trained stably
    warmup: int = 100
    # IP-Adapter Plus: a Resampler (16 query tokens, 4 blocks of width 128) over the vision tower's penultimate
    # hidden states instead of the 4-token projection of its image embedding
    plus: bool = False
    nameless: float = 0.5  # share of captions with the object's name left out (position and background only)
    timesteps: str = "uniform"  # or "cubic": biased to the noisy steps, where an object's shape is decided
    object_weight: float = 0.0  # extra loss weight on the object's latent cells (0: plain loss)
    drop_image: float = 0.05  # share of zero image embeddings, for classifier-free guidance
    drop_text: float = 0.05  # share of empty captions
    # > 0: the vision tower trains too, at this rate, and the run ships its own copy (the frozen tower's identity
    # features read out linearly at 85%, a ceiling below the identity target)
    encoder_lr: float = 0.0
    # > 0 (with encoder_lr): also this weight times the cross-entropy of a linear read-out of the reference's object
    # from its image embedding, so the tower learns what IP-Adapter FaceID takes from a face-recognition model: an
    # embedding of who, whatever the colour, place and size (the read-out is not shipped)
    identity_weight: float = 0.0
    # > 0: also this weight times the distance between the adapter's prediction and the frozen UNet's own from the
    # full caption without any adapter, for the objects the UNet knows: the adapter learns to do what the object's
    # name does, without the noise target's variance (the noise-prediction loss alone stays flat at 0.03)
    distill: float = 0.0
    # > 0: a LoRA of this rank on the UNet's attention trains with the adapter and ships beside it, as IP-Adapter
    # FaceID's does, so the UNet learns to draw what the image tokens say; 0: the UNet stays as shipped
    unet_lora_rank: int = 0
    unet_lora_lr: float = 3e-4
    checkpoint_every: int = 250
