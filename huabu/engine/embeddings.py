"""Textual inversion embeddings as A1111 uses them: a file in the embeddings folder (~/.huabu/embeddings) named by
its file name in a prompt or negative prompt, weighted like any word.

Files are judged by their bytes (engine.checkpoints): safetensors with `emb_params` (SD 1.x/2.x) or `clip_l` and
`clip_g` (SDXL), A1111's `.pt` (`string_to_param`) or a diffusers `.bin` ({token: vector}) only when pickle is
allowed. Vectors are added to the model's tokenizer and text encoder with diffusers' `load_textual_inversion`
under alphanumeric token strings that carry the file's hash (`huabuti<hash>`, then diffusers' `_1`, `_2` for more
vectors), and the encoded text has the embedding's name replaced by those tokens. So prompt syntax never sees
them, an ordinary word never matches them, and a changed file gets new tokens rather than stale vectors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.core.errors import InvalidRequest, ModelNotFound, UnsafeCheckpoint
from huabu.engine import checkpoints

SUFFIXES = (".safetensors", ".pt", ".bin")
_SDXL_KEYS = ("clip_l", "clip_g")  # text_encoder (CLIP ViT-L), text_encoder_2 (OpenCLIP bigG)


@dataclass(frozen=True)
class Embedding:
    """One embedding file read: its vectors per text encoder (one entry, or clip_l and clip_g for SDXL)."""

    name: str
    path: Path
    vectors: tuple[Any, ...]  # torch tensors [n, width], one per text encoder in pipeline order
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def count(self) -> int:
        return int(self.vectors[0].shape[0])

    @property
    def width(self) -> int:
        """Sum of the vector widths: what A1111 reports as `shape` (768 for SD 1.x, 2048 for SDXL)."""
        return sum(int(vector.shape[-1]) for vector in self.vectors)


@dataclass(frozen=True)
class UsedEmbedding:
    """An embedding a prompt used: its name and A1111's short hash (the `TI hashes` infotext field)."""

    name: str
    short_hash: str


def find_embeddings(folder: Path) -> dict[str, Path]:
    """Embedding files by name (file name without suffix), searching subfolders as A1111 does; the first in sorted
    order wins a clash."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in SUFFIXES and path.is_file():
            found.setdefault(path.stem, path)
    return found


def read_embedding(path: Path, allow_pickle: bool) -> Embedding:
    """The vectors of an embedding file in any of the formats the module docstring names."""
    state = checkpoints.load_state_dict(path, allow_pickle)
    if "string_to_param" in state:  # A1111 .pt
        params = state["string_to_param"]
        vectors = (next(iter(params.values())),) if isinstance(params, dict) and params else ()
    elif "emb_params" in state:
        vectors = (state["emb_params"],)
    elif all(key in state for key in _SDXL_KEYS):
        vectors = tuple(state[key] for key in _SDXL_KEYS)
    elif len(state) == 1:  # diffusers: {token: vector}
        vectors = (next(iter(state.values())),)
    else:
        vectors = ()
    if not vectors or not all(hasattr(vector, "shape") for vector in vectors):
        raise ModelNotFound(f"{path.name} is not a textual inversion embedding (no emb_params, clip_l/clip_g or "
                            f"string_to_param)")
    vectors = tuple(vector.detach().float().reshape(-1, vector.shape[-1]) for vector in vectors)
    if checkpoints.sniff_format(path) == checkpoints.SAFETENSORS:  # what a .pt keeps beside its tensors
        state = {**checkpoints.safetensors_metadata(path), **state}
    step = state.get("step")
    step = int(step) if isinstance(step, str) and step.isdigit() else _int_or_none(step)
    checkpoint = state.get("sd_checkpoint")
    return Embedding(path.stem, path, vectors, step, str(checkpoint) if checkpoint else None,
                     _str_or_none(state.get("sd_checkpoint_name")))


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return str(value) if value else None


def name_pattern(name: str) -> re.Pattern[str]:
    """Where `name` stands as a word of its own (CLIP lowercases text, so any case)."""
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def named_in(texts: Iterable[str], names: Iterable[str]) -> list[str]:
    """The names that occur as words in any of the texts, longest first (so `bad-hands-5` wins over `bad`)."""
    joined = "\n".join(texts)
    return [name for name in sorted(names, key=len, reverse=True) if name_pattern(name).search(joined)]


def text_encoders(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs of a pipeline in order."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def model_width(pipe: Any) -> int:
    return sum(int(encoder.config.hidden_size) for _, encoder in text_encoders(pipe))


def _tokens(base: str, count: int) -> list[str]:
    return [base] + [f"{base}_{i}" for i in range(1, count)]  # diffusers' names for a multi-vector embedding


def load_into(pipe: Any, embedding: Embedding, base: str) -> list[str]:
    """Add the embedding's vectors to every tokenizer / text encoder pair (once) and return its token strings."""
    pairs = text_encoders(pipe)
    if len(pairs) != len(embedding.vectors) or embedding.width != model_width(pipe):
        raise InvalidRequest(f"embedding {embedding.name} has {embedding.width}-wide vectors but this model's text "
                             f"encoder takes {model_width(pipe)}; it was trained for another model family")
    tokens = _tokens(base, embedding.count)
    for (tokenizer, encoder), vectors in zip(pairs, embedding.vectors):
        if base in tokenizer.get_vocab():
            continue
        pipe.load_textual_inversion({base: vectors.to(encoder.dtype)}, token=base, tokenizer=tokenizer,
                                    text_encoder=encoder)
    return tokens


def use_embeddings(pipe: Any, texts: list[str], folder: Path, hashes: checkpoints.HashCache,
                   allow_pickle: bool) -> tuple[list[str], list[UsedEmbedding]]:
    """The texts with every embedding they name replaced by its tokens (loaded into the pipeline), and the
    embeddings used in the order found."""
    files = find_embeddings(folder)
    used = []
    for name in named_in(texts, files):
        digest = hashes.sha256(files[name])
        tokens = load_into(pipe, read_embedding(files[name], allow_pickle), f"huabuti{digest[:16]}")
        texts = [name_pattern(name).sub(" ".join(tokens), text) for text in texts]
        used.append(UsedEmbedding(name, digest[:12]))
    return texts, used


def ti_hashes_text(used: list[UsedEmbedding]) -> str | None:
    """A1111's `TI hashes` value: `name: hash` pairs (sha256 of the file, 12 digits), None when none was used."""
    return ", ".join(f"{item.name}: {item.short_hash}" for item in used) or None


def list_embeddings(folder: Path, width: int | None, allow_pickle: bool) -> dict[str, dict[str, Any]]:
    """A1111's /sdapi/v1/embeddings answer: "loaded" (usable with a text encoder `width` wide; any width when
    None) and "skipped" (other widths, pickle files not allowed, unreadable files), each by name."""
    listing: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
    for name, path in find_embeddings(folder).items():
        try:
            embedding = read_embedding(path, allow_pickle)
        except (ModelNotFound, InvalidRequest, UnsafeCheckpoint):
            listing["skipped"][name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                        "shape": None, "vectors": None}
            continue
        row = {"step": embedding.step, "sd_checkpoint": embedding.sd_checkpoint,
               "sd_checkpoint_name": embedding.sd_checkpoint_name, "shape": embedding.width,
               "vectors": embedding.count}
        listing["loaded" if width in (None, embedding.width) else "skipped"][name] = row
    return listing


def folder_text_width(folder: Path | None) -> int | None:
    """The text encoders' total width from a diffusers folder's configs, without loading it (None: unknown)."""
    import json

    if folder is None:
        return None
    configs = [folder / name / "config.json" for name in ("text_encoder", "text_encoder_2")]
    widths = [json.loads(path.read_text(encoding="utf-8")).get("hidden_size") for path in configs if path.is_file()]
    return sum(widths) if widths and all(isinstance(width, int) for width in widths) else None
