"""Where LoRAs meet the engine: finding the files a request names, their A1111 hashes, and the hook that applies
them to a pipeline.

`apply_loras` is the extension point the LoRA work fills in (diffusers/peft `load_lora_weights`, kohya keys);
until then it validates and records, but does not change the weights, and says so in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from huabu.engine import checkpoints
from huabu.errors import ModelNotFound

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt")


@dataclass(frozen=True)
class ResolvedLora:
    name: str
    path: Path
    weight: float
    te_weight: float | None
    sha256: str

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]  # A1111 writes 12 hex digits in "Lora hashes"


def find_lora(name: str, loras_dir: Path) -> Path:
    """The file for LoRA `name` in `loras_dir` (by file name or stem, searching subfolders)."""
    if loras_dir.is_dir():
        wanted = name.lower()
        for candidate in sorted(loras_dir.rglob("*")):
            if candidate.suffix.lower() in LORA_SUFFIXES and wanted in (candidate.stem.lower(), candidate.name.lower()):
                return candidate
    raise ModelNotFound(f"LoRA {name!r} not found in {loras_dir} (looked for {name}.safetensors)")


def resolve_loras(specs: Iterable[Any], loras_dir: Path, hashes: checkpoints.HashCache,
                  allow_pickle: bool = False) -> list[ResolvedLora]:
    """Files and hashes for LoRA specs (anything with name/weight/te_weight: request LoraSpecs, prompt tags)."""
    resolved = []
    for spec in specs:
        path = find_lora(spec.name, loras_dir)
        checkpoints.check_loadable(path, allow_pickle)
        resolved.append(ResolvedLora(spec.name, path, float(spec.weight),
                                     None if spec.te_weight is None else float(spec.te_weight), hashes.sha256(path)))
    return resolved


def apply_loras(pipe: Any, loras: list[ResolvedLora]) -> None:
    """Load `loras` into `pipe` for the next generation (replacing earlier ones). Extension point: the LoRA layer
    implements this; for now the weights are left unchanged."""
    if loras:
        log.warning("LoRA weights are not applied yet (the LoRA layer is not built): %s",
                    ", ".join(lora.name for lora in loras))


def lora_hashes_text(loras: list[ResolvedLora]) -> str | None:
    """The value of A1111's `Lora hashes` infotext field: "name: 0123456789ab, other: ..."."""
    return ", ".join(f"{lora.name}: {lora.short_hash}" for lora in loras) or None
