"""Ship trained add-ons with a huabu-tiny-shaped model folder, as fp16 safetensors where the engine finds them:

    <model folder>-controlnet-<type>/  a diffusers ControlNet beside the model (huabu-tiny-controlnet-canny, -color):
                                       the engine's default ControlNet for that module on this model
    <model folder>/motion_adapter/     a diffusers MotionAdapter inside the model folder: the engine's default motion
                                       module for this model (pipelines load only what model_index.json lists)
    <model folder>-ip-adapter/         ip-adapter_huabu-tiny.safetensors (original layout), its image_encoder/ and
                                       the UNet LoRA trained with it (ip-adapter_huabu-tiny_lora.safetensors) beside
                                       the model: the adapter an image prompt without a model name takes

ControlNets and the IP-Adapter stay outside the model folder so that the model itself keeps its size; a motion
module is the model's own temporal half, which the engine already looks for inside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from huabu.core.atomic import atomic_dir
from huabu.core.errors import InvalidRequest, ModelNotFound
from huabu.engine.ip_adapters import OWN_FOLDER_SUFFIX
from huabu.engine.models import BUILTIN_DIR

IP_ADAPTER_NAME = "ip-adapter_huabu-tiny"


def controlnet_folder(model_dir: Path, kind: str) -> Path:
    model_dir = Path(model_dir)
    return model_dir.parent / f"{model_dir.name}-controlnet-{kind}"


def motion_folder(model_dir: Path) -> Path:
    return Path(model_dir) / "motion_adapter"


def ip_adapter_folder(model_dir: Path) -> Path:
    """Where a model folder's own IP-Adapter lives: `<folder>-ip-adapter/` beside it, where the engine looks."""
    model_dir = Path(model_dir)
    return model_dir.parent / f"{model_dir.name}{OWN_FOLDER_SUFFIX}"


def _trained_folder(run_dir: Path, what: str) -> Path:
    """A run folder's final/ (what training writes last), or the folder itself when it already is a saved model."""
    run_dir = Path(run_dir)
    for folder in (run_dir / "final", run_dir):
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return folder
    raise ModelNotFound(f"no trained {what} in {run_dir} (looked for final/ with config.json and .safetensors "
                        f"weights); finish or resume the training run first")


def _unet_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "unet" / "config.json"
    if not path.is_file():
        raise ModelNotFound(f"{model_dir} is not a diffusers model folder with a UNet (no unet/config.json); pass "
                            f"--model with a huabu-tiny-shaped folder")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_widths(name: str, channels, model_dir: Path) -> None:
    wanted = list(_unet_config(model_dir)["block_out_channels"])
    if list(channels) != wanted:
        raise InvalidRequest(f"{name} was trained for a UNet with widths {list(channels)}, {model_dir.name} has "
                             f"{wanted}; ship it with the model it was trained on")


def _write_fp16(model, target: Path, extra_files: tuple[Path, ...] = ()) -> Path:
    """save_pretrained in fp16 safetensors (plus `extra_files`, copied), swapped in whole, so a failed write leaves
    the shipped folder as it was."""
    with atomic_dir(target) as tmp:
        model.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        for path in extra_files:
            shutil.copyfile(path, Path(tmp) / path.name)
    return target


def ship_controlnet(run_dir: Path, kind: str, model_dir: Path = BUILTIN_DIR) -> Path:
    """Write the ControlNet trained in `run_dir` (for control type `kind`) beside `model_dir`; returns its folder."""
    from diffusers import ControlNetModel

    from huabu.engine.controlnets import MODULE_WORDS

    if kind not in MODULE_WORDS:
        raise InvalidRequest(f"unknown control type {kind!r}; one of {', '.join(MODULE_WORDS)}")
    run_config = Path(run_dir) / "config.json"
    if run_config.is_file():
        trained_type = json.loads(run_config.read_text(encoding="utf-8")).get("type", kind)
        if trained_type != kind:
            raise InvalidRequest(f"{run_dir} trained a {trained_type} ControlNet, not {kind}; pass --type "
                                 f"{trained_type}")
    controlnet = ControlNetModel.from_pretrained(_trained_folder(run_dir, "ControlNet"), dtype=torch.float32)
    _check_widths(f"ControlNet {run_dir}", controlnet.config.block_out_channels, model_dir)
    if controlnet.config.cross_attention_dim != _unet_config(model_dir)["cross_attention_dim"]:
        raise InvalidRequest(f"ControlNet {run_dir} was trained for another text encoder width; ship it with the "
                             f"model it was trained on")
    return _write_fp16(controlnet, controlnet_folder(model_dir, kind))


def ship_motion(run_dir: Path, model_dir: Path = BUILTIN_DIR) -> Path:
    """Write the motion module trained in `run_dir` into `model_dir`/motion_adapter, with the text LoRA and the
    motion words trained beside it if any (already fp16); returns that folder."""
    from diffusers import MotionAdapter

    from huabu.engine.motion_modules import MOTION_WORDS_FILE, TEXT_LORA_FILE

    trained = _trained_folder(run_dir, "motion module")
    adapter = MotionAdapter.from_pretrained(trained, dtype=torch.float32)
    _check_widths(f"motion module {run_dir}", adapter.config.block_out_channels, model_dir)
    beside = tuple(p for p in (trained / TEXT_LORA_FILE, trained / MOTION_WORDS_FILE) if p.is_file())
    return _write_fp16(adapter, motion_folder(model_dir), beside)


def ship_ip_adapter(run_dir: Path, target: Path, model_dir: Path = BUILTIN_DIR) -> Path:
    """Write the IP-Adapter trained in `run_dir` (its final/) to `target`: the weights in fp16 as
    IP_ADAPTER_NAME.safetensors, the image encoder in fp16 as image_encoder/ and the UNet LoRA trained with it, if
    any, in fp16 beside the weights as the engine finds it; returns `target`."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    from huabu.engine.ip_adapters import IMAGE_ENCODER, LORA_SUFFIX, fit_problem, read_ip_adapter
    from huabu.engine.lora_formats import read_lora, write_lora
    from huabu.tiny.train_ip_adapter import LORA_FILE, WEIGHTS_FILE

    trained = next((f for f in (Path(run_dir) / "final", Path(run_dir)) if (f / WEIGHTS_FILE).is_file()), None)
    if trained is None or not (trained / IMAGE_ENCODER).is_dir():
        raise ModelNotFound(f"no trained IP-Adapter in {run_dir} (looked for final/{WEIGHTS_FILE} and "
                            f"final/{IMAGE_ENCODER}/); finish or resume the training run first")
    state = read_ip_adapter(trained / WEIGHTS_FILE)
    problem = fit_problem(f"{run_dir}", state, _unet_config(model_dir)["cross_attention_dim"])
    if problem:
        raise InvalidRequest(problem)
    encoder = CLIPVisionModelWithProjection.from_pretrained(trained / IMAGE_ENCODER, dtype=torch.float16)
    flat = {f"{part}.{key}": tensor.to(torch.float16).contiguous()
            for part, tensors in state.items() for key, tensor in tensors.items()}
    lora = trained / LORA_FILE
    with atomic_dir(target) as tmp:
        save_file(flat, str(Path(tmp) / f"{IP_ADAPTER_NAME}.safetensors"))
        encoder.save_pretrained(Path(tmp) / IMAGE_ENCODER, safe_serialization=True)
        if lora.is_file():
            write_lora(Path(tmp) / f"{IP_ADAPTER_NAME}{LORA_SUFFIX}.safetensors", read_lora(lora)[0],
                       dtype=torch.float16)
    return target
