"""ControlNet units in A1111 infotexts, as sd-webui-controlnet (1.1.4xx) writes and reads them.

Each enabled unit i becomes the extra field `ControlNet i`, whose value is `Field Name: value` pairs joined by
", " in the extension's order (the whole value is then JSON-quoted by the infotext writer, since it holds commas):

    ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and
    Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0.0, Guidance End: 1.0,
    Pixel Perfect: False, Control Mode: Balanced"

Values are Python's str() of the unit's fields: floats keep their ".0", booleans are True/False. Thresholds the
user did not set are the module's defaults, written as the extension's API path writes them (ints for Canny's
100/200, 0.5 for the hidden sliders of modules without thresholds). Model is "name [hash]", hash being A1111's
legacy 8-hex-digit checkpoint hash that the extension shows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# sd-webui-controlnet's ControlNetUnit.infotext_fields(), in order.
FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
          "guidance_start", "guidance_end", "pixel_perfect", "control_mode")
PREFIX = "ControlNet "
_KEY = re.compile(r"^ControlNet (\d+)$")

# Threshold defaults per module (sd-webui-controlnet's slider defaults); other modules show their hidden 0.5.
THRESHOLD_DEFAULTS: Mapping[str, tuple[Any, Any]] = {"canny": (100, 200)}
HIDDEN_SLIDER = 0.5


def display_name(field: str) -> str:
    """"resize_mode" -> "Resize Mode" (the extension capitalises each word)."""
    return " ".join(word.capitalize() for word in field.split("_"))


def field_name(display: str) -> str:
    return "_".join(word.lower() for word in display.split(" "))


def thresholds_shown(module: str, threshold_a: float | None, threshold_b: float | None) -> tuple[Any, Any]:
    """What the infotext shows for the two thresholds: the user's values as floats, else the module's defaults."""
    default_a, default_b = THRESHOLD_DEFAULTS.get(module, (HIDDEN_SLIDER, HIDDEN_SLIDER))
    return (default_a if threshold_a is None else float(threshold_a),
            default_b if threshold_b is None else float(threshold_b))


def _plain(value: object) -> str:
    # The extension refuses values holding its separators (it writes nothing then); we keep the unit readable by
    # replacing them, which only a file name could contain.
    return str(value).replace(",", "_").replace(":", "_")


def serialize_unit(values: Mapping[str, Any]) -> str:
    """`Module: ..., Model: ..., ...` from a mapping holding every name in FIELDS."""
    return ", ".join(f"{display_name(field)}: {_plain(values[field])}" for field in FIELDS)


def parse_value(text: str) -> bool | int | float | str:
    """As the extension reads a value back: True/False, then int, then float, else the text."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_unit(text: str) -> dict[str, Any]:
    """`Module: canny, Weight: 0.8, ...` -> {"module": "canny", "weight": 0.8, ...} (unknown fields kept too)."""
    fields: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition(": ")
        if not sep:
            raise ValueError(f"ControlNet infotext item {item.strip()!r} is not 'Name: value'")
        fields[field_name(key)] = parse_value(value.strip())
    return fields


def units_in_params(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `ControlNet N` fields of a parsed infotext (huabu.core.pnginfo.parse_infotext), parsed, in unit order."""
    found = []
    for key, value in params.items():
        match = _KEY.match(key)
        if match and isinstance(value, str) and value:
            found.append((int(match.group(1)), parse_unit(value)))
    return [unit for _, unit in sorted(found, key=lambda pair: pair[0])]
