"""Turning the `--device` / `--dtype` words into torch objects, once, when a model is loaded."""

from __future__ import annotations

import torch

from huabu.core.errors import InvalidRequest

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA, then Apple MPS, then the CPU; an explicit device that is absent is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise InvalidRequest("--device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    if name == "mps" and not mps:
        raise InvalidRequest("--device mps: torch sees no Apple MPS device")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" is fp16 on CUDA (as A1111) and fp32 elsewhere; fp16 on the CPU is refused (slow, ops missing).
    "fp8" loads in the dtype the layers compute in (huabu.engine.memory stores their weights in float8)."""
    if name == "fp8":
        name = "fp16" if device.type == "cuda" else "fp32"
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name == "fp16" and device.type == "cpu":
        raise InvalidRequest("--dtype fp16 needs a GPU; use fp32 (or bf16) on the CPU")
    return _DTYPES[name]
