"""A1111 1.10's option keys with its defaults (GET /sdapi/v1/options answers every one: clients read keys such as
`send_seed` or `outdir_txt2img_samples` and fail on a missing one). The table is data/a1111_options.json: the
keys and defaults of A1111's modules/shared_options.py and its built-in extensions' settings."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def _defaults() -> dict[str, Any]:
    text = resources.files("huabu.core").joinpath("data/a1111_options.json").read_text(encoding="utf-8")
    return json.loads(text)


def a1111_defaults() -> dict[str, Any]:
    """A fresh copy of every option key with A1111's default."""
    return json.loads(json.dumps(_defaults()))


def a1111_default(key: str) -> Any:
    """A fresh copy of one option's A1111 default (None for a key A1111 does not have); a per-request read, so
    unlike a1111_defaults it copies only that value."""
    value = _defaults().get(key)
    return json.loads(json.dumps(value)) if isinstance(value, (dict, list)) else value


def is_a1111_option(key: str) -> bool:
    return key in _defaults()
