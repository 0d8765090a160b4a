"""Reading checkpoint files safely: format judged from the bytes, pickle refused unless allowed, hashes cached.

diffusers' own single-file loader picks safetensors vs torch.load by the file *extension* (so `x.SAFETENSORS`
holding a pickle would reach torch.load: InvokeAI's CVE-2024-12029 pattern). We sniff the bytes first and hand
diffusers an already-loaded state dict.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import Any

from huabu.core.atomic import atomic_path
from huabu.core.errors import ModelNotFound, UnsafeCheckpoint, first_line

SAFETENSORS = "safetensors"
PICKLE = "pickle"
UNKNOWN = "unknown"

# A safetensors header larger than this is not a plausible model file.
_MAX_HEADER = 100 * 1024 * 1024


def sniff_format(path: str | os.PathLike) -> str:
    """"safetensors", "pickle" (torch's zip format or a raw pickle stream) or "unknown", from the first bytes."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= min(_MAX_HEADER, size - 8) and head[8:9] == b"{":
            return SAFETENSORS
    if head[:4] == b"PK\x03\x04":
        return PICKLE
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return PICKLE
    return UNKNOWN


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors file (empty when it has none)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(header_len))
        except ValueError:  # JSON and UTF-8 errors alike
            raise _damaged(Path(path), "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(Path(path), "its header is not a JSON object")
    return dict(header.get("__metadata__") or {})


def check_safetensors(path: str | os.PathLike, shown: str | None = None) -> None:
    """Refuse a safetensors file whose header is damaged or whose data is cut short (read from the header alone),
    naming it as `shown` (default: its file name)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt"):
            pass
    except Exception as err:  # safetensors raises its own SafetensorError for every kind of damage
        raise _damaged(Path(path), first_line(err), shown) from None


def _damaged(path: Path, why: str, shown: str | None = None) -> ModelNotFound:
    return ModelNotFound(f"{shown or path.name} is a damaged or truncated safetensors file ({why}); download or "
                         f"copy it again")


def _refuse_pickle(path: Path) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(
        f"{path.name} is a pickle checkpoint, which can run code when loaded; use a .safetensors file, or pass "
        f"--allow-unsafe-pickle if you trust it (it is then read with torch.load(weights_only=True))"
    )


def check_loadable(path: str | os.PathLike, allow_pickle: bool) -> str:
    """The file's format, after refusing pickle (unless allowed) and files that are no checkpoint at all."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"checkpoint file not found: {path}")
    fmt = sniff_format(path)
    if fmt == PICKLE and not allow_pickle:
        raise _refuse_pickle(path)
    if fmt == UNKNOWN:
        raise ModelNotFound(f"{path} is not a model checkpoint (neither safetensors nor a PyTorch pickle file)")
    return fmt


def load_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, Any]:
    """Tensors of a checkpoint file, whatever its extension; pickle only when allowed and only with
    weights_only=True (no arbitrary objects). A nested "state_dict" (LDM .ckpt files) is unwrapped."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    fmt = check_loadable(path, allow_pickle)
    if fmt == SAFETENSORS:
        try:
            state = load_file(path)
        except Exception as err:  # safetensors raises its own SafetensorError for every kind of damage
            raise _damaged(path, first_line(err)) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError and friends: the file holds more than tensors
            raise UnsafeCheckpoint(
                f"{path.name} could not be read with torch.load(weights_only=True): {first_line(err)}") from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelNotFound(f"{path.name} holds no state dict (found {type(state).__name__})")
    return state


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safetensors_data_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of the tensor bytes after the header: kohya's "sshs"/addnet-style hash, unchanged by metadata edits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + header_len)
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def short_hash(sha256: str | None, length: int = 10) -> str | None:
    """A1111's "Model hash" is the first 10 hex digits of the file's sha256 (LoRA hashes use 12)."""
    return sha256[:length] if sha256 else None


class HashCache:
    """File sha256 values cached on disk by (real path, size, mtime), so big checkpoints are hashed once."""

    def __init__(self, cache_file: str | os.PathLike | None) -> None:
        self.cache_file = Path(cache_file) if cache_file else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = {}
            if self.cache_file and self.cache_file.is_file():
                try:
                    self._entries = json.loads(self.cache_file.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    self._entries = {}  # a damaged cache is only a cache: start again
        return self._entries

    def _save(self) -> None:
        if not self.cache_file:
            return
        with atomic_path(self.cache_file) as tmp:
            tmp.write_text(json.dumps(self._entries, indent=1), encoding="utf-8")

    def sha256(self, path: str | os.PathLike, kind: str = "sha256") -> str:
        """Full hex sha256 of the file (`kind="sshs"`: of its safetensors tensor data)."""
        real = os.path.realpath(path)
        stat = os.stat(real)
        key = f"{kind}:{real}"
        with self._lock:
            entry = self._load().get(key)
            if entry and entry["size"] == stat.st_size and entry["mtime"] == stat.st_mtime_ns:
                return entry["hash"]
        digest = file_sha256(real) if kind == "sha256" else safetensors_data_sha256(real)
        with self._lock:
            self._load()[key] = {"size": stat.st_size, "mtime": stat.st_mtime_ns, "hash": digest}
            self._save()
        return digest
