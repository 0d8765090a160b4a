"""What ships inside the package: huabu-tiny's folders and the offline diffusers configs that single-file checkpoints
are loaded with (the hub, where diffusers would fetch them, may be out of reach)."""

from __future__ import annotations

import json
from pathlib import Path

from huabu.core.settings import BUILTIN_MODEL

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "tiny" / BUILTIN_MODEL
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
# Other diffusers folders shipped beside huabu-tiny, named and listed like the models folder's once they have weights.
SHIPPED_MODELS = {"huabu-tiny-dit": BUILTIN_DIR.parent / "huabu-tiny-dit"}
# SD 1.x, SD 2.x, SDXL, SD3 and FLUX all use CLIP's BPE vocabulary; only the pad token differs, which each bundled
# config's tokenizer_config.json states. huabu-tiny ships the vocabulary files once.
CLIP_TOKENIZER_DIR = BUILTIN_DIR / "tokenizer"


def shipped_models() -> dict[str, Path]:
    """The SHIPPED_MODELS whose folders this checkout has."""
    return {name: path for name, path in SHIPPED_MODELS.items() if (path / "model_index.json").is_file()}


def bundled_configs() -> dict[str, Path]:
    """Offline diffusers config folders for single-file checkpoints, by name (plus huabu's shipped model folders,
    which files exported from them name in their metadata)."""
    found = {p.name: p for p in sorted(CONFIGS_DIR.iterdir()) if (p / "model_index.json").is_file()}
    found[BUILTIN_MODEL] = BUILTIN_DIR
    found.update(shipped_models())
    return found


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "spiece.model"))


def bundled_tokenizer(cls, folder: Path):
    """A tokenizer from its config folder. Bundled CLIP configs carry only tokenizer_config.json and share huabu-tiny's
    BPE vocabulary; T5's SentencePiece model is not bundled (see `single_file.missing_parts`)."""
    if has_tokenizer_files(folder):
        return cls.from_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    return cls.from_pretrained(CLIP_TOKENIZER_DIR, pad_token=config.get("pad_token", "<|endoftext|>"))
