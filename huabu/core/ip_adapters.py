"""IP-Adapter image prompts as data: sd-webui-controlnet's IP-Adapter module names, the CLI's
`--ip-adapter IMAGE[:WEIGHT]`, and an IP-Adapter unit in an infotext (a `ControlNet N` field, as the extension
writes it: "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15 [hash], Weight: 0.8, ...").

Import-light (no torch): huabu.core.requests validates `ip_adapters` with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huabu.core.control_infotext import HIDDEN_SLIDER, serialize_unit
from huabu.core.control_units import BALANCED, CROP_AND_RESIZE

# sd-webui-controlnet's CLIP-vision IP-Adapter preprocessors (the image encoder is CLIP ViT-H or bigG).
CLIP_MODULES = ("ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith",
                "ip-adapter_clip_g", "ip-adapter-auto")
DEFAULT_MODULE = "ip-adapter_clip_sd15"


def is_ip_adapter_module(module: object) -> bool:
    """Whether a ControlNet unit's module is one of the extension's IP-Adapter preprocessors."""
    return isinstance(module, str) and module.strip().lower().startswith("ip-adapter")


def ip_adapter_module_name(value: object) -> str:
    """A module huabu runs (the CLIP-vision ones), else ValueError naming them."""
    name = str(value).strip().lower() if value is not None else ""
    if name in CLIP_MODULES:
        return name
    raise ValueError(f"IP-Adapter module must be one of {', '.join(CLIP_MODULES)} (Face ID modules need insightface, "
                     f"which huabu does not run); got {value!r}")


def parse_ip_adapter_spec(text: str) -> dict[str, Any]:
    """`IMAGE[:WEIGHT]` -> IPAdapterSpec fields; the weight is taken from the right, so a path may hold colons."""
    image, sep, last = text.rpartition(":")
    if sep:
        try:
            return {"image": image, "weight": float(last)} if image else {"image": text}
        except ValueError:
            pass
    if not text:
        raise ValueError("--ip-adapter: the image is missing (write IMAGE[:WEIGHT], e.g. ref.png:0.6)")
    return {"image": text}


def ip_adapters_from_cli(specs: list[str], models: list[str]) -> list[dict[str, Any]]:
    """IPAdapterSpec fields for the CLI's repeated `--ip-adapter`; the i-th `--ip-adapter-model` goes with the i-th
    (later ones use the IP-Adapter folder's only adapter)."""
    from huabu.core.errors import InvalidRequest

    if len(models) > len(specs):
        raise InvalidRequest(f"{len(models)} --ip-adapter-model for {len(specs)} --ip-adapter; give one per "
                             f"--ip-adapter, in the same order")
    units = []
    for index, text in enumerate(specs):
        try:
            fields = parse_ip_adapter_spec(text)
        except ValueError as err:
            raise InvalidRequest(str(err)) from None
        if index < len(models):
            fields["model"] = models[index]
        units.append(fields)
    return units


def serialize_ip_adapter_unit(module: str, title: str, weight: float) -> str:
    """The `ControlNet N` value of an IP-Adapter unit: the extension's fields, its hidden sliders at their
    defaults (huabu runs IP-Adapters over the whole schedule, on the whole image)."""
    return serialize_unit({"module": module, "model": title, "weight": float(weight), "resize_mode": CROP_AND_RESIZE,
                           "processor_res": 512, "threshold_a": HIDDEN_SLIDER, "threshold_b": HIDDEN_SLIDER,
                           "guidance_start": 0.0, "guidance_end": 1.0, "pixel_perfect": False,
                           "control_mode": BALANCED})


def ip_adapter_fields_from_infotext(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """IPAdapterSpec fields (without the image) from one parsed `ControlNet N` value whose module is an IP-Adapter."""
    fields: dict[str, Any] = {"module": str(parsed.get("module", DEFAULT_MODULE)),
                              "model": str(parsed.get("model", ""))}
    if isinstance(parsed.get("weight"), (int, float)) and not isinstance(parsed.get("weight"), bool):
        fields["weight"] = float(parsed["weight"])
    return fields
