"""Memory and speed switches, applied once to a freshly loaded pipeline (Settings.offload, vae_tiling,
attention_slicing, dtype "fp8", compile). The mode, ControlNet and video pipelines made from it with `from_pipe`
share its modules, and with them these settings, which live on the modules (accelerate hooks, attention processors,
the VAE's tiling flag, layerwise-casting hooks, the compiled forward)."""

from __future__ import annotations

from typing import Any

import torch

from huabu.core.errors import InvalidRequest
from huabu.core.settings import Settings


def apply_memory_options(pipe: Any, settings: Settings, device: torch.device) -> None:
    """Set the pipeline up as `settings` asks; with offload, the pipeline manages the device itself."""
    if settings.dtype == "fp8":
        denoiser = _denoiser(pipe, "--dtype fp8")
        # Weights stored in float8, each layer cast up to the loading dtype while it runs (diffusers' layerwise
        # casting; norms and embeddings stay as they are).
        denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=denoiser.dtype)
    if settings.compile:
        # In place, so the module keeps its class (LoRA loading, from_pipe and isinstance checks still see it);
        # compiling itself waits for the first step.
        _denoiser(pipe, "--compile").compile(options=compile_options(device))
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.attention_slicing:
        pipe.enable_attention_slicing()
    if settings.offload == "none":
        pipe.to(device)
        return
    if device.type == "cpu":
        raise InvalidRequest(f"--offload {settings.offload} moves models between the CPU and a GPU; there is no GPU "
                             f"here (device {device}), so leave it off")
    if settings.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def compile_options(device: torch.device) -> dict[str, bool]:
    """Inductor options for the denoiser. On a CPU, freezing (weights folded in as constants, oneDNN's prepacked
    layouts) and the C++ wrapper (no Python between kernels) took huabu-tiny's 20-step default from 2.2 to 3.5
    images/s (docs/cpu-speed.md). Not set for CUDA, where they have not been measured."""
    return {"freezing": True, "cpp_wrapper": True} if device.type == "cpu" else {}


def _denoiser(pipe: Any, switch: str) -> torch.nn.Module:
    """The pipeline's UNet or transformer, which `switch` acts on."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is None:
        raise InvalidRequest(f"{switch} needs a UNet or transformer; {type(pipe).__name__} has neither")
    return denoiser
