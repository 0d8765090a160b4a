"""Helpers for the tests of resumable training (huabu-tiny stages, LoRA, ControlNet, motion modules): kill a run
right after it writes a checkpoint, read the newest checkpoint's weights, compare weights exactly; and the toy
untrained huabu-tiny stages that assembly and evaluation tests start from."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


class Killed(Exception):
    """Stands for the process being killed."""


def kill_after(monkeypatch, step: int) -> None:
    """Make the training loop (huabu.training.loop) die right after writing its `step` checkpoint, as a killed
    process would."""
    from huabu.training import loop

    real = loop.save_checkpoint

    def save_then_die(folder, done, *args, **kwargs):
        path = real(folder, done, *args, **kwargs)
        if done == step:
            raise Killed
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)


def newest_weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of `name`.safetensors in the newest checkpoint under `out`/checkpoints."""
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    return load_file(str(newest / f"{name}.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def toy_stages(root: Path) -> dict[str, Path]:
    """Random toy huabu-tiny stages saved as the training stages write them: root/clip (with the shipped tokenizer),
    root/vae and root/unet."""
    from transformers import CLIPTokenizer

    from huabu.tiny import configs, train_clip, train_unet, train_vae

    clip = train_clip.build_clip(configs.ClipTrainConfig(text_hidden=32, text_layers=1, vision_hidden=32,
                                                         vision_layers=1, projection_dim=16))
    clip.save_pretrained(root / "clip")
    CLIPTokenizer.from_pretrained(train_clip.TOKENIZER_DIR).save_pretrained(root / "clip")
    train_vae.build_vae(configs.VaeTrainConfig(channels=(8, 8, 8))).save_pretrained(root / "vae")
    unet = train_unet.build_unet(configs.UnetTrainConfig(channels=(32, 32, 32), heads=2), cross_attention_dim=32)
    unet.save_pretrained(root / "unet")
    return {"clip": root / "clip", "vae": root / "vae", "unet": root / "unet"}
