"""Where huabu keeps its files and how it runs, built explicitly by each front end (never at import time).

`Settings.from_env()` reads the environment once; front ends pass the result (with their own overrides, e.g. CLI
flags) to the engine, the gallery and the server, so nothing reads global state later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from huabu.core.errors import InvalidRequest

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16", "fp8")
OFFLOADS = ("none", "model", "sequential")
BUILTIN_MODEL = "huabu-tiny"

_TRUE = {"1", "true", "yes", "on"}


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


@dataclass(frozen=True)
class Settings:
    home: Path
    outputs_dir: Path
    models_dir: Path
    loras_dir: Path
    controlnet_dir: Path
    motion_dir: Path  # AnimateDiff motion modules (huabu video --motion-module NAME)
    gallery_db: Path
    cache_dir: Path
    device: str = "auto"
    dtype: str = "auto"
    allow_unsafe_pickle: bool = False
    hub_offline: bool = False
    default_model: str = BUILTIN_MODEL
    model_cache_size: int = 1
    # Memory switches for large models, set once per loaded pipeline (huabu.engine.memory).
    offload: str = "none"  # "model": whole models to the GPU in turn; "sequential": layer by layer (slowest)
    vae_tiling: bool = False  # decode large images tile by tile
    attention_slicing: bool = False  # attention in slices: less peak memory, a little slower
    # torch.compile (inductor) the denoiser: minutes of compiling for each new shape, then faster steps (a server's
    # or a long batch's choice; huabu-tiny in bf16 on a CPU: 2-3x per step, docs/cpu-speed.md)
    compile: bool = False
    embeddings_dir: Path | None = None  # textual inversion embeddings; None: home/embeddings
    ip_adapter_dir: Path | None = None  # IP-Adapter weights and their image encoder; None: home/ip-adapter

    def __post_init__(self) -> None:
        if self.embeddings_dir is None:  # a field with a default, so Settings built field by field still work
            object.__setattr__(self, "embeddings_dir", self.home / "embeddings")
        if self.ip_adapter_dir is None:
            object.__setattr__(self, "ip_adapter_dir", self.home / "ip-adapter")
        if self.device not in DEVICES:
            raise InvalidRequest(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise InvalidRequest(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.offload not in OFFLOADS:
            raise InvalidRequest(f"offload must be one of {', '.join(OFFLOADS)}, got {self.offload!r}")
        if self.model_cache_size < 1:
            raise InvalidRequest(f"model cache size must be at least 1, got {self.model_cache_size}")

    @classmethod
    def for_home(cls, home: str | os.PathLike, **overrides) -> Settings:
        """Settings with every folder under `home` (the layout of ~/.huabu)."""
        home = Path(home).expanduser()
        base = dict(
            home=home,
            outputs_dir=home / "outputs",
            models_dir=home / "models",
            loras_dir=home / "loras",
            controlnet_dir=home / "controlnet",
            motion_dir=home / "motion",
            gallery_db=home / "gallery.sqlite",
            cache_dir=home / "cache",
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Settings from HUABU_* variables (HUABU_HOME, HUABU_DEVICE, HUABU_DTYPE, HUABU_MODEL,
        HUABU_ALLOW_UNSAFE_PICKLE, HUABU_COMPILE) and HF_HUB_OFFLINE; keyword overrides (None = not given) win."""
        env = os.environ if env is None else env
        home = overrides.pop("home", None) or env.get("HUABU_HOME") or Path.home() / ".huabu"
        from_env = dict(
            device=env.get("HUABU_DEVICE") or None,
            dtype=env.get("HUABU_DTYPE") or None,
            default_model=env.get("HUABU_MODEL") or None,
            allow_unsafe_pickle=_flag(env.get("HUABU_ALLOW_UNSAFE_PICKLE")) or None,
            hub_offline=_flag(env.get("HF_HUB_OFFLINE")) or None,
            compile=_flag(env.get("HUABU_COMPILE")) or None,
        )
        from_env.update({k: v for k, v in overrides.items() if v is not None})
        return cls.for_home(home, **from_env)

    @property
    def upscalers_dir(self) -> Path:
        """ESRGAN-family upscaler weights (.pth / .safetensors), loaded with spandrel."""
        return self.home / "upscalers"

    @property
    def vae_dir(self) -> Path:
        """VAEs (--vae NAME, override_settings.sd_vae): single files or diffusers folders."""
        return self.home / "vae"

    def with_(self, **changes) -> Settings:
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
