"""VAE choice (A1111's sd_vae): a VAE from the VAE folder or a path, swapped into a loaded model for one request.

A VAE is a diffusers folder or one file (.safetensors; pickle .pt/.ckpt only when allowed), in diffusers' key
layout or the original LDM one (converted with diffusers' own converter). Its name and A1111 hash (the first 10
hex digits of the file's sha256) go into the infotext as `VAE` and `VAE hash`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.core.errors import ModelNotFound
from huabu.engine.checkpoints import HashCache, load_state_dict, short_hash

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
AUTOMATIC = ("", "Automatic", "None", None)  # A1111's "use the checkpoint's own VAE"


@dataclass(frozen=True)
class VaeRef:
    name: str  # what infotexts and /sd-vae call it: the file name (with its extension) or the folder name
    path: Path

    @property
    def weights(self) -> Path:
        """The file whose hash names it."""
        if self.path.is_dir():
            found = sorted(self.path.glob("diffusion_pytorch_model.*"))
            if not found:
                raise ModelNotFound(f"VAE folder {self.path} has no diffusion_pytorch_model weights")
            return found[0]
        return self.path


def list_vaes(folder: Path) -> list[VaeRef]:
    """The VAEs in `folder`: files with a VAE suffix and diffusers folders (those holding config.json)."""
    if not folder.is_dir():
        return []
    refs = [VaeRef(entry.name, entry) for entry in sorted(folder.iterdir())
            if (entry.is_file() and entry.suffix.lower() in VAE_SUFFIXES)
            or (entry.is_dir() and (entry / "config.json").is_file())]
    return refs


def find_vae(spec: str, folder: Path) -> VaeRef:
    """A VAE by name in `folder` (with or without its extension) or by path."""
    for ref in list_vaes(folder):
        if spec in (ref.name, Path(ref.name).stem):
            return ref
    path = Path(spec).expanduser()
    if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
        return VaeRef(path.name, path)
    names = ", ".join(ref.name for ref in list_vaes(folder)) or "none"
    raise ModelNotFound(f"VAE {spec!r} is neither in {folder} ({names}) nor a file or diffusers folder")


def vae_hash(ref: VaeRef, hashes: HashCache) -> str:
    return short_hash(hashes.sha256(ref.weights))


def load_vae(ref: VaeRef, like: Any, allow_pickle: bool) -> Any:
    """An AutoencoderKL with `ref`'s weights, shaped like the model's own VAE `like` when from a single file, in
    its dtype and on its device."""
    from diffusers import AutoencoderKL

    if ref.path.is_dir():
        vae = AutoencoderKL.from_pretrained(ref.path)
    else:
        state = load_state_dict(ref.path, allow_pickle)
        if not any(key.startswith("encoder.down_blocks") for key in state):  # LDM layout
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            state = convert_ldm_vae_checkpoint(state, dict(like.config))
        vae = AutoencoderKL.from_config(like.config)
        missing, unexpected = vae.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelNotFound(f"VAE {ref.name} does not fit this model's VAE ({len(missing)} missing and "
                                f"{len(unexpected)} unexpected weights)")
    return vae.to(device=like.device, dtype=like.dtype).eval()


@contextmanager
def swapped_vae(model: Any, vae: Any) -> Iterator[None]:
    """Every pipeline of the loaded model decodes and encodes with `vae` until the block ends, mode pipelines made
    meanwhile too (from_pipe copies the VAE); afterwards all of them have the model's own again."""
    own = model.pipeline.vae
    try:
        for pipe in [model.pipeline, *model.pipelines.values()]:
            pipe.vae = vae
        yield
    finally:
        for pipe in [model.pipeline, *model.pipelines.values()]:
            pipe.vae = own
