"""ControlNet unit vocabulary (resize and control modes, as sd-webui-controlnet names them) and the two text forms
a unit arrives in besides JSON: the CLI's `--control MODULE:IMAGE[:WEIGHT[:START:END]]` and an infotext.

Import-light (no OpenCV, no torch): huabu.core.requests validates units with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huabu.core.text_boxes import GLYPH

JUST_RESIZE = "Just Resize"
CROP_AND_RESIZE = "Crop and Resize"
RESIZE_AND_FILL = "Resize and Fill"
RESIZE_MODES = (JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL)
# Older names the extension still accepts, and the short words of huabu's CLI.
RESIZE_ALIASES = {
    "Inner Fit (Scale to Fit)": CROP_AND_RESIZE, "Scale to Fit (Inner Fit)": CROP_AND_RESIZE,
    "Outer Fit (Shrink to Fit)": RESIZE_AND_FILL, "Envelope (Outer Fit)": RESIZE_AND_FILL,
    "Just Resize (Latent upscale)": JUST_RESIZE,
    "just": JUST_RESIZE, "resize": JUST_RESIZE, "crop": CROP_AND_RESIZE, "fill": RESIZE_AND_FILL,
}

BALANCED = "Balanced"
PROMPT_FIRST = "My prompt is more important"
CONTROL_FIRST = "ControlNet is more important"
CONTROL_MODES = (BALANCED, PROMPT_FIRST, CONTROL_FIRST)
CONTROL_ALIASES = {"balanced": BALANCED, "prompt": PROMPT_FIRST, "control": CONTROL_FIRST}


def resize_mode_name(value: object) -> str:
    """A resize mode given as its name, an alias or the extension's number (0, 1, 2; 3 = latent "Just Resize")."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value == 3:
            return JUST_RESIZE
        if 0 <= value < len(RESIZE_MODES):
            return RESIZE_MODES[value]
    elif isinstance(value, str):
        name = RESIZE_ALIASES.get(value, RESIZE_ALIASES.get(value.strip().lower(), value))
        if name in RESIZE_MODES:
            return name
    raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)} (or 0, 1, 2); got {value!r}")


def control_mode_name(value: object) -> str:
    """A control mode given as its name, a short word (balanced, prompt, control) or the extension's number."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(CONTROL_MODES):
            return CONTROL_MODES[value]
    elif isinstance(value, str):
        name = CONTROL_ALIASES.get(value.strip().lower(), value)
        if name in CONTROL_MODES:
            return name
    raise ValueError(f"control mode must be one of {', '.join(CONTROL_MODES)} (or 0, 1, 2); got {value!r}")


def parse_control_spec(text: str) -> dict[str, Any]:
    """`MODULE:IMAGE[:WEIGHT[:START:END]]` -> unit fields. Numbers are taken from the right, so an image path
    may itself hold colons (C:\\maps\\edge.png); a module of `none` means IMAGE already is the control map. The glyph
    module takes no image (`glyph[:WEIGHT[:START:END]]`): it draws the prompt's quoted words."""
    module, sep, rest = text.partition(":")
    if module == GLYPH:
        return _glyph_spec(text, rest)
    if not sep or not module or not rest:
        raise ValueError(f"--control {text!r}: write MODULE:IMAGE[:WEIGHT[:START:END]], e.g. canny:ref.png:0.8")
    parts = rest.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 3:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    if len(numbers) == 2:  # IMAGE:START:END is not a form; the first number is the weight
        raise ValueError(f"--control {text!r}: give WEIGHT, or WEIGHT:START:END (e.g. canny:ref.png:0.8:0:0.6)")
    image = ":".join(parts)
    if not image:
        raise ValueError(f"--control {text!r}: the image is missing")
    fields: dict[str, Any] = {"module": module, "image": image}
    if numbers:
        fields["weight"] = numbers[0]
    if len(numbers) == 3:
        fields["guidance_start"], fields["guidance_end"] = numbers[1], numbers[2]
    return fields


def _glyph_spec(text: str, rest: str) -> dict[str, Any]:
    try:
        numbers = [float(part) for part in rest.split(":")] if rest else []
    except ValueError:
        raise ValueError(f"--control {text!r}: glyph takes no image; write glyph[:WEIGHT[:START:END]] and quote the "
                         f'words in the prompt (a sign that says "画布")') from None
    if len(numbers) not in (0, 1, 3):
        raise ValueError(f"--control {text!r}: write glyph, glyph:WEIGHT or glyph:WEIGHT:START:END")
    fields: dict[str, Any] = {"module": GLYPH}
    if numbers:
        fields["weight"] = numbers[0]
    if len(numbers) == 3:
        fields["guidance_start"], fields["guidance_end"] = numbers[1], numbers[2]
    return fields


def unit_fields_from_infotext(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """ControlUnit fields from one parsed `ControlNet N` value (huabu.core.control_infotext.parse_unit).

    Thresholds equal to the defaults the infotext shows for unset ones are left unset, so a remade image runs the
    preprocessor exactly as the original did."""
    from huabu.core.control_infotext import HIDDEN_SLIDER, THRESHOLD_DEFAULTS

    module = str(parsed.get("module", "none"))
    fields: dict[str, Any] = {"module": module, "model": str(parsed.get("model", ""))}
    for key in ("weight", "guidance_start", "guidance_end"):
        if key in parsed:
            fields[key] = float(parsed[key])
    for key in ("resize_mode", "control_mode"):
        if key in parsed:
            fields[key] = str(parsed[key])
    if isinstance(parsed.get("processor_res"), int):
        fields["processor_res"] = parsed["processor_res"]
    if isinstance(parsed.get("pixel_perfect"), bool):
        fields["pixel_perfect"] = parsed["pixel_perfect"]
    defaults = THRESHOLD_DEFAULTS.get(module, (HIDDEN_SLIDER, HIDDEN_SLIDER))
    for key, default in zip(("threshold_a", "threshold_b"), defaults):
        value = parsed.get(key)
        # An int equal to the default is what an unset threshold looks like (a set one is written as a float).
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (value == default and type(value) is type(default)):
                fields[key] = float(value)
    return fields


def units_from_cli(controls: list[str], models: list[str], control_mode: str = BALANCED,
                   resize_mode: str = CROP_AND_RESIZE, processor_res: int | None = None) -> list[dict[str, Any]]:
    """ControlUnit fields for the CLI's repeated `--control` specs: the i-th `--controlnet-model` goes with the i-th
    `--control` (later ones use the ControlNet folder's default for their module). Without a processor resolution
    the units are pixel perfect: preprocessed at the output's own resolution."""
    from huabu.core.errors import InvalidRequest

    if len(models) > len(controls):
        raise InvalidRequest(f"{len(models)} --controlnet-model for {len(controls)} --control; give one per "
                             f"--control, in the same order")
    units = []
    for index, text in enumerate(controls):
        try:
            fields = parse_control_spec(text)
        except ValueError as err:
            raise InvalidRequest(str(err)) from None
        fields.update(model=models[index] if index < len(models) else "", control_mode=control_mode,
                      resize_mode=resize_mode)
        if processor_res is None:
            fields["pixel_perfect"] = True
        else:
            fields["processor_res"] = processor_res
        units.append(fields)
    return units
