"""Helpers for the tests of resumable training (huabu-tiny stages, LoRA, ControlNet, motion modules): kill a run
right after it writes a checkpoint, read the newest checkpoint's weights, compare weights exactly."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


class Killed(Exception):
    """Stands for the process being killed."""


def kill_after(module, monkeypatch, step: int) -> None:
    """Make `module`'s run die right after writing its `step` checkpoint (its `save_checkpoint`), as a killed
    process would."""
    real = module.save_checkpoint

    def save_then_die(folder, done, *args, **kwargs):
        path = real(folder, done, *args, **kwargs)
        if done == step:
            raise Killed
        return path

    monkeypatch.setattr(module, "save_checkpoint", save_then_die)


def newest_weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of `name`.safetensors in the newest checkpoint under `out`/checkpoints."""
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    return load_file(str(newest / f"{name}.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
