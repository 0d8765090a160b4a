"""TrainLoraRequest: every hyper-parameter of a LoRA training run, as plain JSON data (CLI, studio and HTTP API)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from huabu.core.requests import RequestModel

DEFAULT_TEMPLATE = "a photo of {trigger}"


class TrainLoraRequest(RequestModel):
    """One `huabu train lora` run. Field names are the CLI flags (`caption_template` = `--caption-template`)."""

    data: str = Field(description="folder of training images with optional caption sidecars (img.png + img.txt)")
    out: str = Field(min_length=1, description="LoRA name (written to the LoRA folder) or a path ending .safetensors")
    base: str | None = Field(default=None, description="base model (as --model; default: the default model)")
    rank: int = Field(default=8, ge=1, le=1024, description="LoRA rank (network dim)")
    alpha: float = Field(default=8.0, gt=0, le=1024, description="LoRA alpha; the update is scaled by alpha/rank")
    steps: int = Field(default=1000, ge=1, le=10_000_000, description="optimizer steps")
    lr: float = Field(default=1e-4, gt=0, le=1.0, description="learning rate (AdamW)")
    text_encoder_lr: float | None = Field(default=None, gt=0, le=1.0,
                                          description="text encoder learning rate (default: --lr)")
    warmup_steps: int = Field(default=0, ge=0, description="linear learning-rate warm-up, then constant")
    batch: int = Field(default=1, ge=1, le=1024, description="images per step (per GPU)")
    resolution: int | None = Field(default=None, ge=8, le=8192,
                                   description="training side length (default: the model's default size); buckets "
                                               "keep its area")
    trigger: str | None = Field(default=None, description="trigger word, put into --caption-template")
    caption_template: str | None = Field(default=None,
                                         description="caption of images without a .txt sidecar; {trigger} is "
                                                     f"replaced (default with --trigger: {DEFAULT_TEMPLATE!r})")
    train_text_encoder: bool = Field(default=False, description="also train LoRA on the text encoder's attention")
    min_snr_gamma: float | None = Field(default=None, gt=0, description="min-SNR loss weighting (5 is usual)")
    max_grad_norm: float = Field(default=1.0, gt=0, description="gradient clipping")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(default="no", description="accelerate mixed precision "
                                                                                     "(frozen weights in that dtype)")
    gradient_checkpointing: bool = Field(default=False, description="trade compute for GPU memory")
    checkpoint_every: int = Field(default=500, ge=1, description="write a resumable checkpoint every N steps")
    sample_every: int = Field(default=0, ge=0, description="sample images every N steps (0: only at the end if "
                                                            "--sample-prompt is given)")
    sample_prompt: list[str] = Field(default_factory=list, description="prompt for samples (repeatable; default: "
                                                                         "the caption template)")
    sample_steps: int = Field(default=20, ge=1, le=150, description="sampling steps of the samples")
    resume: bool = Field(default=False, description="continue from the newest checkpoint of this run")
    overwrite: bool = Field(default=False, description="replace an existing LoRA file of that name")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="seed of LoRA init, data order and noise")
    format: Literal["kohya", "diffusers"] = Field(default="kohya", description="keys of the written file")
    save_dtype: Literal["fp16", "bf16", "fp32"] = Field(default="fp16", description="dtype of the written file")
    workdir: str | None = Field(default=None, description="run folder for checkpoints, samples and the log "
                                                          "(default: ~/.huabu/lora-training/NAME)")

    @model_validator(mode="after")
    def _captions(self) -> TrainLoraRequest:
        if self.caption_template is not None and "{trigger}" in self.caption_template and not self.trigger:
            raise ValueError(f"caption template {self.caption_template!r} uses {{trigger}}: pass --trigger WORD")
        if self.trigger is not None and not self.trigger.strip():
            raise ValueError("trigger must not be empty")
        return self

    @property
    def template(self) -> str | None:
        """The caption template in effect (the default one when only a trigger word is given)."""
        if self.caption_template is None and self.trigger:
            return DEFAULT_TEMPLATE
        return self.caption_template
