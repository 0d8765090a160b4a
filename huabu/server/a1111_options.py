"""GET/POST /sdapi/v1/options over the Catalog: every A1111 option key (huabu's live value where it has one),
the options that act on generation checked on the way in, and a cap on keys A1111 does not know (clients and
extensions store their own settings there, but the store must not grow without bound)."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from huabu.core.a1111_options import a1111_default, a1111_defaults, is_a1111_option
from huabu.core.errors import InvalidRequest
from huabu.core.requests import MAX_SEED
from huabu.server.runner import png_base64

MAX_UNKNOWN_KEYS = 64
SAMPLES_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def current_options(catalog) -> dict[str, Any]:
    """What GET /options answers: A1111's defaults, what clients set, then huabu's live values."""
    with catalog.lock:
        stored = dict(catalog.options)
    options = {**a1111_defaults(), **stored}
    options.update(sd_model_checkpoint=catalog.current_model_title(),
                   CLIP_stop_at_last_layers=catalog.default_clip_skip, outdir_samples=str(catalog.settings.outputs_dir))
    return options


def store_options(catalog, updates: dict[str, Any]) -> None:
    """POST /options: `sd_model_checkpoint` switches the default model (only to one the server lists),
    `CLIP_stop_at_last_layers` the default clip skip; `samples_format` and `eta_noise_seed_delta` are checked here
    and act on later requests; any other key is kept, unknown ones up to MAX_UNKNOWN_KEYS."""
    updates = dict(updates)
    if "sd_model_checkpoint" in updates:
        model = catalog.resolve_model(str(updates.pop("sd_model_checkpoint")))
        with catalog.lock:
            catalog.default_model = model
    if "CLIP_stop_at_last_layers" in updates:
        catalog.default_clip_skip = _whole(updates.pop("CLIP_stop_at_last_layers"), "CLIP_stop_at_last_layers", 1, 12)
    if "samples_format" in updates and str(updates["samples_format"]).lower() not in SAMPLES_FORMATS:
        raise InvalidRequest(f"samples_format must be one of png, jpg, webp (got {updates['samples_format']!r})")
    if "eta_noise_seed_delta" in updates:
        updates["eta_noise_seed_delta"] = _whole(updates["eta_noise_seed_delta"], "eta_noise_seed_delta", 0, MAX_SEED)
    with catalog.lock:
        unknown = {key for key in [*catalog.options, *updates] if not is_a1111_option(key)}
        if len(unknown) > MAX_UNKNOWN_KEYS:
            raise InvalidRequest(f"too many option keys A1111 does not have ({len(unknown)}; at most "
                                 f"{MAX_UNKNOWN_KEYS} are kept): GET /sdapi/v1/options lists A1111's own")
        catalog.options.update(updates)


def _whole(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequest(f"{name} must be an integer from {low} to {high} (got {value!r})")
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high} (got {value!r})") from None
    if number != float(value) or not low <= number <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high} (got {value!r})")
    return number


def option(catalog, key: str) -> Any:
    """A client-set option, else A1111's default."""
    with catalog.lock:
        if key in catalog.options:
            return catalog.options[key]
    return a1111_default(key)


def image_format(samples_format: str) -> str:
    """PIL's name for an A1111 samples_format (PNG for one it does not know)."""
    return SAMPLES_FORMATS.get(str(samples_format).lower(), "PNG")


def encode_image(image: Image.Image, infotext: str | None, samples_format: str) -> str:
    """base64 in the format A1111's samples_format names: PNG with the `parameters` chunk, JPEG / WebP with the
    infotext in EXIF UserComment as A1111 writes it."""
    fmt = image_format(samples_format)
    if fmt == "PNG":
        return png_base64(image, infotext)
    exif = Image.Exif()
    if infotext:
        exif[0x9286] = b"UNICODE\0" + infotext.encode("utf-16-be")  # EXIF UserComment, A1111's encoding
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt, exif=exif.tobytes(), quality=95)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
