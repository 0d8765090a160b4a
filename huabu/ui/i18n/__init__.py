"""The studio's words in Chinese and English, kept as data: one flat YAML table per language with the same keys.

Texts may hold `{name}` fields that callers fill with `str.format`. Edit or extend the YAML files to change a
label; `tests/test_ui_fields.py` checks that both tables hold the same keys and fields.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from huabu.core.errors import InvalidRequest

LANGUAGES = ("zh", "en")
I18N_DIR = Path(__file__).parent


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise InvalidRequest(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
    return language


@cache  # read-only data shipped with the package; cached per language
def _table(language: str) -> tuple[tuple[str, str], ...]:
    path = I18N_DIR / f"{check_language(language)}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InvalidRequest(f"{path} must be a flat mapping of text keys to strings")
    return tuple(data.items())


def load_texts(language: str) -> dict[str, str]:
    """The text table of `language` ("zh" or "en"): key -> text."""
    return dict(_table(language))


class Key(str):
    """A text key: passed where a component wants visible text, it is translated and relabelled on a language
    switch (see huabu.ui.labels.Labels)."""
