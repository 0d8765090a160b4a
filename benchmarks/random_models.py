"""Random-weight pipelines of real models' shapes, built offline from huabu's bundled configs (huabu/engine/configs):
speed does not depend on the weights, so SD 1.5 at 512x512 and SDXL at 1024x1024 can be timed with no download.

    from random_models import save_random_model
    folder = save_random_model("sd15", Path("/tmp/sd15"), dtype=torch.float16, device="cuda")
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch


def random_pipeline(kind: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The pipeline of `huabu/engine/configs/<kind>` (sd15, sd2-base, sd2-v, sdxl) with random weights, built on
    `device` (a GPU builds SDXL's 2.6 billion weights in seconds, a CPU in minutes)."""
    import diffusers
    from diffusers import ModelMixin, SchedulerMixin
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from huabu.engine.bundled import CONFIGS_DIR, bundled_tokenizer

    folder = CONFIGS_DIR / kind
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    components = {}
    torch.manual_seed(0)
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        cls = getattr(importlib.import_module(spec[0]), spec[1])
        if issubclass(cls, SchedulerMixin):
            components[name] = cls.from_pretrained(folder, subfolder=name)
        elif issubclass(cls, PreTrainedTokenizerBase):
            components[name] = bundled_tokenizer(cls, folder / name)
        elif issubclass(cls, PreTrainedModel):
            config = cls.config_class.from_pretrained(folder / name)
            with torch.device(device):
                components[name] = cls(config).to(dtype)
        elif issubclass(cls, ModelMixin):
            with torch.device(device):
                components[name] = cls.from_config(cls.load_config(folder / name)).to(dtype)
    pipeline_class = getattr(diffusers, index["_class_name"])
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    accepted = pipeline_class.__init__.__code__.co_varnames
    return pipeline_class(**components, **{k: v for k, v in extra.items() if k in accepted})


def save_random_model(kind: str, folder: Path, dtype: torch.dtype = torch.float16, device: str = "cpu") -> Path:
    """A random `kind` pipeline saved as a diffusers folder (safetensors), the way a user's model is loaded."""
    if not (folder / "model_index.json").is_file():
        random_pipeline(kind, dtype, device).save_pretrained(folder, safe_serialization=True)
    return folder


def fill_absent_weights(folder: Path, dtype: torch.dtype = torch.float16) -> list[Path]:
    """Random weights for each diffusers model folder under `folder` that has its config.json but no weights file.

    A GPU check travels with a size limit, so it may leave large huabu-tiny parts behind (the ControlNets, the motion
    adapter); the code paths that load them then run on random weights of the same shapes."""
    import diffusers

    made = []
    for config_file in sorted(folder.rglob("config.json")):
        part = config_file.parent
        config = json.loads(config_file.read_text(encoding="utf-8"))
        cls = getattr(diffusers, config.get("_class_name", ""), None)
        if cls is None or (part / "diffusion_pytorch_model.safetensors").is_file():
            continue
        torch.manual_seed(0)
        cls.from_config(cls.load_config(part)).to(dtype).save_pretrained(part, safe_serialization=True)
        made.append(part)
    return made


if __name__ == "__main__":
    import sys

    for made in fill_absent_weights(Path(sys.argv[1])):
        print(f"random weights for {made}")
