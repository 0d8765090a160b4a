"""The prompt book (咒语书): clickable prompt parts and style templates, kept as YAML data.

`parts.yaml` maps a category id to its zh/en labels and a list of parts; `styles.yaml` is a list of style
templates. User folders holding files of the same shape add entries or override shipped ones by name.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from huabu.core.errors import HuabuError, InvalidRequest

BOOK_DIR = Path(__file__).parent
PARTS_FILE = "parts.yaml"
STYLES_FILE = "styles.yaml"
PLACEHOLDER = "{prompt}"

_PART_KEYS = {"en", "zh", "prompt"}
_CATEGORY_KEYS = {"en", "zh", "parts"}
_STYLE_REQUIRED = {"name", "name_zh", "name_en", "prompt"}
_STYLE_KEYS = _STYLE_REQUIRED | {"negative_prompt", "example"}


class PromptBookError(HuabuError):
    """A prompt-book file is malformed."""


@dataclass(frozen=True)
class PromptPart:
    category: str
    en: str
    zh: str
    prompt: str

    def text(self, chinese: bool = False) -> str:
        """What the part puts in a prompt: its English text, or its Chinese label for a model that reads Chinese."""
        return self.zh if chinese else self.prompt


@dataclass(frozen=True)
class Style:
    name: str
    name_zh: str
    name_en: str
    prompt: str
    negative_prompt: str
    example: str | None  # absolute path of the example image, None while it has not been made


@dataclass(frozen=True)
class PromptBook:
    categories: dict[str, dict[str, str]]  # id -> {"zh": ..., "en": ...}
    parts: list[PromptPart]
    styles: dict[str, Style]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses repeated mapping keys (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(err.problem or err.context).split())
        raise PromptBookError(f"{path}: not valid YAML{at}: {problem}") from err
    except yaml.YAMLError as err:
        raise PromptBookError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise PromptBookError(f"{path}: cannot be read: {err}") from err


def _text(path: Path, where: str, entry: dict, key: str, required: bool = True) -> str:
    value = entry.get(key)
    if value is None and not required:
        return ""
    if value is None:
        raise PromptBookError(f"{path}: {where}: missing key {key!r}")
    if not isinstance(value, str) or not value.strip():
        raise PromptBookError(f"{path}: {where}: {key!r} must be a non-empty string")
    return value.strip()


def _check_keys(path: Path, where: str, entry: object, allowed: set[str]) -> dict:
    if not isinstance(entry, dict):
        raise PromptBookError(f"{path}: {where}: expected a mapping, got {type(entry).__name__}")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise PromptBookError(f"{path}: {where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return entry


def _check_template(path: Path, where: str, key: str, template: str) -> None:
    if template.count(PLACEHOLDER) > 1:
        raise PromptBookError(f"{path}: {where}: {key!r} holds {PLACEHOLDER} more than once; use it at most once")


def _merge_parts(path: Path, categories: dict[str, dict[str, str]], parts: dict[tuple[str, str], PromptPart]) -> None:
    data = _read_yaml(path)
    if data is None:
        return
    if not isinstance(data, dict):
        raise PromptBookError(f"{path}: expected a mapping of category id -> {{zh, en, parts}}")
    for category, body in data.items():
        where = f"category {category!r}"
        body = _check_keys(path, where, body, _CATEGORY_KEYS)
        if category in categories:
            labels = dict(categories[category])
            for lang in ("zh", "en"):
                if lang in body:
                    labels[lang] = _text(path, where, body, lang)
        else:
            labels = {lang: _text(path, where, body, lang) for lang in ("zh", "en")}
        categories[category] = labels
        entries = body.get("parts") or []
        if not isinstance(entries, list):
            raise PromptBookError(f"{path}: {where}: 'parts' must be a list")
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            label = entry.get("en", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"
            part_where = f"{where} part {label!r}"
            entry = _check_keys(path, part_where, entry, _PART_KEYS)
            part = PromptPart(category, *(_text(path, part_where, entry, k) for k in ("en", "zh", "prompt")))
            if part.en in seen:
                raise PromptBookError(f"{path}: {part_where}: duplicate part name in this category")
            seen.add(part.en)
            parts[(category, part.en)] = part  # dict keeps first-insertion order, so overrides stay in place


def _merge_styles(path: Path, styles: dict[str, Style]) -> None:
    data = _read_yaml(path)
    if data is None:
        return
    if not isinstance(data, list):
        raise PromptBookError(f"{path}: expected a list of styles")
    seen: set[str] = set()
    for index, entry in enumerate(data):
        label = entry.get("name", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"
        where = f"style {label!r}"
        entry = _check_keys(path, where, entry, _STYLE_KEYS)
        name, name_zh, name_en, prompt = (
            _text(path, where, entry, k) for k in ("name", "name_zh", "name_en", "prompt")
        )
        negative = _text(path, where, entry, "negative_prompt", required=False)
        _check_template(path, where, "prompt", prompt)
        _check_template(path, where, "negative_prompt", negative)
        if name in seen:
            raise PromptBookError(f"{path}: {where}: duplicate style name")
        seen.add(name)
        example = _text(path, where, entry, "example", required=False)
        example_path = path.parent / example if example else None
        # Example images are made later with huabu-tiny; until one exists the style simply has none.
        resolved = str(example_path) if example_path is not None and example_path.is_file() else None
        styles[name] = Style(name, name_zh, name_en, prompt, negative, resolved)


def load_book(extra_dirs: Sequence[Path] = (), shipped: bool = True) -> PromptBook:
    """Load the shipped book (unless not `shipped`), then each user folder in order (its parts.yaml / styles.yaml
    add or override by name: a part by category and `en` label, a style by `name`). Folders that do not exist are
    skipped."""
    categories: dict[str, dict[str, str]] = {}
    parts: dict[tuple[str, str], PromptPart] = {}
    styles: dict[str, Style] = {}
    for folder in ((BOOK_DIR,) if shipped else ()) + tuple(map(Path, extra_dirs)):
        if (folder / PARTS_FILE).is_file():
            _merge_parts(folder / PARTS_FILE, categories, parts)
        if (folder / STYLES_FILE).is_file():
            _merge_styles(folder / STYLES_FILE, styles)
    return PromptBook(categories, list(parts.values()), styles)


def _merge(template: str, text: str) -> str:
    text = text.strip()
    if PLACEHOLDER in template:
        if not text:  # no user text: drop the slot and the separators left dangling around it
            return template.replace(PLACEHOLDER, "").strip(" ,")
        return template.replace(PLACEHOLDER, text)
    return ", ".join(t for t in (text, template.strip()) if t)


def apply_styles(
    prompt: str, negative_prompt: str, style_names: Sequence[str], book: PromptBook
) -> tuple[str, str]:
    """Wrap the prompt in each style's template in order (through {prompt}, else appended) and join the
    negatives with ', '."""
    styles = []
    for name in style_names:
        if name not in book.styles:
            close = difflib.get_close_matches(name, list(book.styles), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; {len(book.styles)} styles are known"
            raise InvalidRequest(f"unknown style {name!r}{hint}")
        styles.append(book.styles[name])
    for style in styles:
        prompt = _merge(style.prompt, prompt)
        negative_prompt = _merge(style.negative_prompt, negative_prompt) if style.negative_prompt else negative_prompt
    return prompt, negative_prompt.strip()


def add_part(prompt: str, part: PromptPart, chinese: bool = False) -> str:
    """Append the part's text (`PromptPart.text`) with ', ' unless every comma-separated piece of it is already in
    the prompt."""
    text = part.text(chinese)
    have = {piece.strip().lower() for piece in prompt.split(",")}
    if all(piece.strip().lower() in have for piece in text.split(",")):
        return prompt
    base = prompt.rstrip().rstrip(",").rstrip()
    return f"{base}, {text}" if base else text
