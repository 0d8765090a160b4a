"""The installed LoRAs (Settings.loras_dir) with what their files say about themselves: `huabu loras`, the studio's
LoRA picker and A1111's `/sdapi/v1/loras` (`[{name, alias, path, metadata}]`) all read `list_loras`."""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huabu.core.settings import Settings
from huabu.engine import checkpoints
from huabu.engine import lora_formats as formats
from huabu.engine.loras import LORA_SUFFIXES


@dataclass(frozen=True)
class LoraInfo:
    name: str  # what <lora:name:w> and --lora take (the file stem)
    alias: str  # A1111's alias: ss_output_name, else the name
    path: Path
    hash: str  # A1111's LoRA hash (sshs_model_hash / addnet hash); "Lora hashes" shows its first 12 hex
    format: str  # kohya | diffusers | pickle | unknown
    base_model: str | None = None  # the base model's name
    base_model_version: str | None = None  # ss_base_model_version: sd_v1, sd_v2, sdxl_base_v1-0, ...
    rank: int | None = None
    alpha: float | None = None
    trigger_words: tuple[str, ...] = ()
    top_tags: tuple[str, ...] = ()  # the most frequent caption tags of its training data
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    def to_a1111(self) -> dict[str, Any]:
        """The entry A1111's /sdapi/v1/loras returns."""
        return {"name": self.name, "alias": self.alias, "path": str(self.path), "metadata": self.metadata}


def list_loras(settings: Settings, hashes: checkpoints.HashCache | None = None) -> list[LoraInfo]:
    """Every LoRA file in the LoRA folder (and its sub-folders), sorted by path."""
    root = settings.loras_dir
    if not root.is_dir():
        return []
    hashes = hashes or checkpoints.HashCache(settings.cache_dir / "hashes.json")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in LORA_SUFFIXES)
    return [lora_info(path, hashes) for path in files]


def lora_info(path: Path, hashes: checkpoints.HashCache | None = None) -> LoraInfo:
    """What one LoRA file says about itself, read from its safetensors header (tensors are not loaded)."""
    path = Path(path)
    if checkpoints.sniff_format(path) != checkpoints.SAFETENSORS:
        return LoraInfo(path.stem, path.stem, path, formats.a1111_lora_hash(path, hashes), "pickle")
    header = _header(path)
    metadata = dict(header.pop("__metadata__", None) or {})
    fmt = formats.detect_format(header)
    rank, alpha = _rank_alpha(path, header, metadata, fmt)
    triggers = tuple(word.strip() for word in metadata.get("huabu_trigger_word", "").split(",") if word.strip())
    return LoraInfo(path.stem, metadata.get("ss_output_name") or path.stem, path,
                    formats.a1111_lora_hash(path, hashes), fmt,
                    metadata.get("ss_sd_model_name") or metadata.get("huabu_base_model") or None,
                    metadata.get("ss_base_model_version") or None, rank, alpha, triggers, _top_tags(metadata),
                    metadata)


def _header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def _rank_alpha(path: Path, header: dict, metadata: dict[str, str], fmt: str) -> tuple[int | None, float | None]:
    """From ss_network_dim/alpha when present, else from the first layer's shape and alpha."""
    rank = alpha = None
    if metadata.get("ss_network_dim", "").isdigit():
        rank = int(metadata["ss_network_dim"])
    try:
        alpha = float(metadata["ss_network_alpha"])
    except (KeyError, ValueError):
        pass
    down = next((k for k in sorted(header) if k.endswith(("lora_down.weight", "lora_A.weight"))), None)
    if rank is None and down is not None:
        rank = int(header[down]["shape"][0])
    if alpha is None and fmt == formats.KOHYA and down is not None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            key = down.replace(".lora_down.weight", ".alpha")
            alpha = float(f.get_tensor(key).item()) if key in header else rank
    elif alpha is None and fmt == formats.DIFFUSERS:
        adapter = json.loads(metadata.get(formats.ADAPTER_METADATA_KEY) or "{}")
        alpha = adapter.get("unet.lora_alpha", rank)
    return rank, alpha


def _top_tags(metadata: dict[str, str], count: int = 5) -> tuple[str, ...]:
    try:
        folders = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        return ()
    total: Counter = Counter()
    for tags in folders.values() if isinstance(folders, dict) else ():
        total.update({tag: n for tag, n in tags.items() if isinstance(n, int)})
    return tuple(tag for tag, _ in total.most_common(count))
