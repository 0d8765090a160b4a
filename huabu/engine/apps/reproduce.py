"""The AppRequest that remakes an app output from its infotext and the input images given again: the generation
fields through the core field table, the app's own `App ...` rows, and each image checked against the pixel hash
the output recorded (huabu.core.apps says why hashes rather than paths)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huabu.core.apps import REPRODUCIBLE, AppRequest
from huabu.core.errors import InvalidRequest
from huabu.core.fields import infotext_to_request_fields, infotext_values
from huabu.engine.apps.common import pixel_hash
from huabu.engine.images import load_image

_FLAGS = {"image": "--image", "mask": "--mask", "reference": "--reference"}


def app_request_from_infotext(parsed: Mapping[str, Any], model: str | None, images: Mapping[str, Path | None],
                              sam: str | None = None) -> AppRequest:
    """`images` holds the paths given for "image", "mask" and "reference" (None where not given)."""
    app = str(parsed.get("App", ""))
    if app not in REPRODUCIBLE:
        raise InvalidRequest(f"App {app!r} outputs are not remade from their parameters (only "
                             f"{', '.join(REPRODUCIBLE)} are)")
    values = infotext_values(parsed)
    data = infotext_to_request_fields(parsed, AppRequest)
    data.update(app=app, model=model, sam=sam)
    if app != "instant-id":  # replace and try-on take their size from the image
        data.pop("width", None)
        data.pop("height", None)
    units = values.get("ip_adapters") or []
    if units:
        data["ip_adapter_weight"] = units[0].get("weight", 0.8)
        data["ip_adapter_model"] = units[0].get("model", "")
    control = parsed.get("App control")
    if control:
        nets = values.get("controlnets") or []
        data["controlnet"] = nets[0]["model"] if control != "none" and nets else "none"
    for what, flag in _FLAGS.items():
        recorded = parsed.get(f"App {what}")
        if not recorded:
            continue
        given = images.get(what)
        if given is None:
            raise InvalidRequest(f"this {app} output's input {what} is not stored in the PNG: pass it with {flag}")
        image = load_image(str(given), what)
        actual = pixel_hash(image.convert("L") if what == "mask" else image)
        if actual != recorded:
            raise InvalidRequest(f"{flag} {given} is not the {what} this output was made from (its pixels hash to "
                                 f"{actual}, the PNG says {recorded})")
        data[what] = str(given)
    return AppRequest.create(**data)
