"""Pickle-free, atomic training checkpoints.

accelerate's save_state pickles optimizer and RNG state; huabu loads no pickle it did not have to, so a checkpoint
here is a folder of safetensors files (one per module, one per optimizer) plus a JSON file with the step and any
other plain state. Training loops derive their data order and noise from (seed, step), which is what makes a
resumed run continue identically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from huabu.core.atomic import atomic_dir

_STATE = "state.json"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into flat tensors (for safetensors) and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(rest["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def save_checkpoint(folder: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None, extra: dict | None = None,
                    keep: int = 2) -> Path:
    """Write `folder/step-XXXXXXX` atomically (huabu.core.atomic.atomic_dir) and keep only the newest `keep`
    checkpoints."""
    folder = Path(folder)
    final = folder / f"step-{step:07d}"
    opt_meta = {}
    with atomic_dir(final) as tmp:
        for name, module in modules.items():
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, str(tmp / f"{name}.safetensors"))
        for name, opt in (optimizers or {}).items():
            tensors, rest = _optimizer_tensors(opt)
            save_file(tensors, str(tmp / f"optim-{name}.safetensors"))
            opt_meta[name] = rest
        (tmp / _STATE).write_text(json.dumps({"step": step, "optimizers": opt_meta, "extra": extra or {}}))
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / _STATE).is_file())


def checkpoint_state(path: Path) -> dict:
    """The plain state of a checkpoint, {"step": int, "extra": dict}, without reading its tensors."""
    state = json.loads((Path(path) / _STATE).read_text())
    return {"step": state["step"], "extra": state["extra"]}


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None) -> dict:
    """Restore modules and optimizers in place; returns {"step": int, "extra": dict}."""
    path = Path(path)
    state = json.loads((path / _STATE).read_text())
    for name, module in modules.items():
        module.load_state_dict(load_file(str(path / f"{name}.safetensors")))
    for name, opt in (optimizers or {}).items():
        _load_optimizer(opt, load_file(str(path / f"optim-{name}.safetensors")), state["optimizers"][name])
    return {"step": state["step"], "extra": state["extra"]}


def load_latest(folder: Path, modules: dict[str, torch.nn.Module],
                optimizers: dict[str, torch.optim.Optimizer] | None = None) -> dict | None:
    """Resume from the newest checkpoint in `folder`, or return None when there is none."""
    checkpoints = list_checkpoints(folder)
    return load_checkpoint(checkpoints[-1], modules, optimizers) if checkpoints else None
