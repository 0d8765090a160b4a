"""A1111-compatible generation parameters ("infotext") and atomic image output.

The infotext layout follows A1111 1.10 `processing.create_infotext` so that A1111, ComfyUI readers, civitai and
other tools read our PNGs; `parse_infotext` reads theirs. Pillow writes and reads the PNG text chunks; what is
hand-written here is only the text format itself, which no library provides.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from huabu.core.atomic import atomic_file
from huabu.core.errors import BadImage

PARAMETERS_KEY = "parameters"

# A1111's own pattern for one `key: value` pair of the parameter line (quoted values may hold commas).
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RE = re.compile(r"\w[\w \-/]+")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_INT_RE = re.compile(r"^-?(?:0|[1-9]\d*)$")
_FLOAT_RE = re.compile(r"^-?\d+\.\d+(?:[eE][-+]?\d+)?$")
_NEGATIVE_PREFIX = "Negative prompt:"

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


def _quote(value: str) -> str:
    # As A1111's quote(): JSON-quote what would otherwise break the `, `-joined line; we also quote values holding a
    # double quote or edge whitespace, which A1111's regex would misread.
    if any(c in value for c in ',:\n"') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def create_infotext(prompt: str, negative_prompt: str, params: dict[str, object], version: str) -> str:
    """Build the A1111 `parameters` text: prompt, optional `Negative prompt:` line, then `Key: value, ...`.

    `params` keeps the caller's order; None values are dropped; `Version: huabu <version>` always comes last.
    """
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        if not _KEY_RE.fullmatch(key) or key == "Version":
            raise ValueError(
                f"infotext key {key!r} cannot be written (letters, digits, space, '-', '/'; not 'Version')"
            )
        pairs.append(f"{key}: {_quote(str(value))}")
    pairs.append(f"Version: {_quote(f'huabu {version}')}")
    prompt, negative_prompt = _prompt_text(prompt, "p"), _prompt_text(negative_prompt, "n")
    negative_line = f"\n{_NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{', '.join(pairs)}".strip()


def _prompt_text(text: str, which: str) -> str:
    """A prompt (`which` "p") or negative prompt ("n") as it is written: as it is, as A1111 writes it, whenever it
    reads back exactly; otherwise (a line starting `Negative prompt:`, whitespace at a line's edge, a JSON string
    literal) as one JSON string line, which A1111 shows as a quoted prompt and `parse_infotext` decodes."""
    prompt, negative = (text, "n") if which == "p" else ("p", text)
    layout = f"{prompt}\n{_NEGATIVE_PREFIX} {negative}\nVersion: huabu 0"
    read = parse_infotext(layout)
    if read["Prompt"] == prompt and read["Negative prompt"] == negative:
        return text
    return json.dumps(text, ensure_ascii=False)


def add_params(infotext: str, params: dict[str, object]) -> str:
    """An infotext with more `key: value` pairs before its closing Version pair (A1111 scripts add theirs so)."""
    head, _, version = infotext.rpartition(", Version: ")
    if not head:
        raise ValueError("add_params takes an infotext that ends in its Version pair")
    pairs = [f"{key}: {_quote(str(value))}" for key, value in params.items() if value is not None]
    return ", ".join([head, *pairs, f"Version: {version}"])


def _convert(key: str, value: str) -> object:
    # Hashes are hex strings that may happen to be all digits; keep them as text.
    if key.lower().endswith("hash"):
        return value
    if _INT_RE.match(value):
        return int(value)
    if _FLOAT_RE.match(value):
        return float(value)
    return value


def _is_parameter_line(line: str) -> bool:
    pairs = _PARAM_RE.findall(line)
    # A1111 asks for at least 3 pairs; a line we wrote with fewer still ends in our Version pair.
    return len(pairs) >= 3 or (
        bool(pairs) and pairs[-1][0] == "Version" and _unquote(pairs[-1][1]).startswith("huabu ")
    )


def parse_infotext(text: str) -> dict[str, object]:
    """Parse an A1111 infotext into {"Prompt", "Negative prompt", key: value...}, as A1111's
    `parse_generation_parameters` does; `WxH` values also give `<key>-1`/`<key>-2`, unquoted numbers become numbers."""
    *lines, last = text.strip().split("\n")
    if not _is_parameter_line(last):
        lines.append(last)
        last = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE_PREFIX) and not negative_lines:
            negative_lines.append(line[len(_NEGATIVE_PREFIX):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)

    result: dict[str, object] = {"Prompt": _unquote("\n".join(prompt_lines)),
                                 "Negative prompt": _unquote("\n".join(negative_lines))}
    for key, raw in _PARAM_RE.findall(last):
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
            result[key] = _unquote(raw)
            continue
        result[key] = _convert(key, raw)
        size = _SIZE_RE.match(raw)
        if size:
            result[f"{key}-1"] = int(size.group(1))
            result[f"{key}-2"] = int(size.group(2))
    return result


def _decode_user_comment(data: bytes | str) -> str | None:
    # EXIF UserComment: an 8-byte charset prefix, then the text. A1111 writes "UNICODE\0" + UTF-16 big-endian
    # (piexif); some tools write little-endian, which we recognise by where the zero bytes fall.
    if isinstance(data, str):
        return data or None
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\x00":
        little = len(body) >= 2 and body[1] == 0 and body[0] != 0
        text = body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    elif prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        text = body.decode("utf-8", errors="replace")
    else:
        text = data.decode("utf-8", errors="replace")
    text = text.rstrip("\x00")
    return text or None


def read_parameters(source: str | os.PathLike | Image.Image) -> str | None:
    """The A1111 `parameters` text of an image: the PNG text chunk, else the EXIF UserComment (JPEG/WebP)."""
    if isinstance(source, Image.Image):
        return _parameters_of(source)
    try:
        with Image.open(source) as image:
            return _parameters_of(image)
    except (OSError, SyntaxError) as err:  # Pillow signals some truncated/corrupt files with SyntaxError
        raise BadImage(f"cannot read image metadata from {os.fspath(source)!r}: {err}") from err


def _parameters_of(image: Image.Image) -> str | None:
    value = image.info.get(PARAMETERS_KEY)
    if value is None and image.format == "PNG" and hasattr(image, "text"):
        # Text chunks placed after the image data are only seen once Pillow has read the whole file.
        value = image.text.get(PARAMETERS_KEY)
    if isinstance(value, str):
        return value
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    return _decode_user_comment(comment) if comment else None


def save_png_atomic(image: Image.Image, path: Path, parameters: str | None) -> Path:
    """Write `image` as PNG with a `parameters` text chunk (iTXt when not latin-1), via a temp file and os.replace."""
    info = PngInfo()
    if parameters is not None:
        try:
            parameters.encode("latin-1")
            info.add_text(PARAMETERS_KEY, parameters)
        except UnicodeEncodeError:
            info.add_itxt(PARAMETERS_KEY, parameters)
    with atomic_file(path) as f:
        image.save(f, format="PNG", pnginfo=info)
    return Path(path)


def output_names(folder: Path, seed: int, ext: str = "png") -> Iterator[Path]:
    """The A1111-style names `<NNNNN>-<seed>.<ext>` in `folder` after the highest number there, in order, for
    `huabu.core.atomic.publish_new` to take the first free one."""
    ext = ext.lstrip(".")
    numbers = [int(m.group(0)) for entry in os.listdir(folder) if (m := re.match(r"\d+", entry))]
    return (Path(folder) / f"{number:05}-{seed}.{ext}" for number in itertools.count(max(numbers, default=-1) + 1))
