"""What stands between the network and the engine: authentication, CSRF and DNS-rebinding checks, body and image
size limits, and safe file serving. Each rule answers a known attack on SD servers: A1111's API open without
--api-auth, ComfyUI's cross-site POSTs reaching code execution, ComfyUI's /view serving stored HTML (CVE-2024-10099)
and following symlinks out of the output folder. Every refusal is a one-line JSON error.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import math
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException

from huabu.core.errors import BadImage, HuabuError, InvalidRequest
from huabu.core.hosts import foreign_host, send_json_error
from huabu.server.config import Limits, ServerConfig

OPEN_PATHS = ("/health",)  # answer without credentials: load balancers and `huabu serve` readiness checks
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# Served files get one of these types by extension; anything else (html, svg, js, ...) is never served.
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".mp4": "video/mp4", ".webm": "video/webm"}
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


class PayloadTooLarge(InvalidRequest):
    """A body or an embedded image is larger than the server accepts (HTTP 413)."""


class NotAllowed(InvalidRequest):
    """The request asks for something the server does not allow over HTTP (HTTP 403)."""


class NotFound(HuabuError):
    """No such job or file (HTTP 404). File refusals say only this, so probing learns nothing."""


# --- ASGI guard: host, auth, origin, body size ---------------------------------------------------------------

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class Guard:
    """Pure ASGI middleware (it has to see the raw body stream to cap it) checking, in order:

    1. Host: on a loopback bind only loopback names, which stops DNS rebinding (a page on evil.example whose name
       resolves to 127.0.0.1 sends `Host: evil.example`);
    2. credentials (Bearer key or HTTP Basic) on every path but /health, loopback included; compared in
       constant time;
    3. on state-changing methods, a browser's Origin (or Referer) must be this server (CSRF: a page the user visits
       must not drive the API);
    4. the body size, by Content-Length and while streaming.
    """

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self._keys = [config.api_key.encode()] if config.api_key else []
        self._basic = [f"{user}:{password}".encode() for user, password in config.credentials()]

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self._check(scope, headers)
        if problem is not None:
            status, message, extra = problem
            await _send_error(send, status, message, extra)
            return
        limit = self.config.limits.max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _send_error(send, 413, f"request body is {int(length)} bytes; the limit is {limit}")
            return
        received = 0

        async def capped_receive() -> dict:
            # Raised inside the app, which turns an HTTPException into its response (FastAPI re-raises
            # HTTPExceptions from body reading; any other error there would become a 400).
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, capped_receive, send)

    def _check(self, scope: dict, headers: dict[str, str]) -> tuple[int, str, dict] | None:
        misdirected = foreign_host(headers.get("host", ""), self.config.host)
        if misdirected is not None:
            return 421, misdirected, {}
        if scope["path"] not in OPEN_PATHS and self.config.requires_auth and not self._authorised(headers):
            extra = {"www-authenticate": 'Basic realm="huabu"'} if self._basic else {}
            return 401, "authentication required: send Authorization: Bearer <key> or HTTP Basic credentials", extra
        if scope["method"] not in SAFE_METHODS:
            origin = headers.get("origin") or headers.get("referer")
            if origin is not None and not _same_origin(origin, headers.get("host", "")):
                return 403, f"cross-origin request refused (Origin {origin[:100]!r} is not this server)", {}
        return None

    def _authorised(self, headers: dict[str, str]) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        value = value.strip().encode("latin-1", "replace")
        ok = False
        # Compare against every configured secret without stopping early, so timing tells nothing.
        if scheme.lower() == "bearer":
            for key in self._keys:
                ok |= hmac.compare_digest(value, key)
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            for pair in self._basic:
                ok |= hmac.compare_digest(decoded, pair)
        return ok


def _same_origin(origin: str, host_header: str) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host_header.lower()


async def _send_error(send, status: int, message: str, extra: dict[str, str] | None = None) -> None:
    await send_json_error(send, status, _REASONS.get(status, "Error"), message, extra)


_REASONS = {401: "Unauthorized", 403: "Forbidden", 413: "PayloadTooLarge", 421: "MisdirectedRequest"}


# --- JSON bodies ------------------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json_body(body: bytes, limits: Limits) -> Any:
    """A request body parsed as JSON, refused with one line (HTTPException 400/413) when it could hurt the server:
    more values than `limits.max_json_items` (a 24 MB `[{},{},...]` would take ~50x its size as Python objects, so
    values are counted in the bytes before anything is parsed), NaN or Infinity (not JSON; they would come back as
    bare NaN), or strings that are not Unicode (an unpaired surrogate such as "\\ud800" cannot be stored or sent)."""
    items = body.count(b"{") + body.count(b"[") + body.count(b",")  # an upper bound: each value but one needs one
    if items > limits.max_json_items:
        raise HTTPException(413, f"request body holds up to {items} JSON values; the limit is {limits.max_json_items}")
    data = json.loads(body, parse_constant=_not_a_number, parse_float=_finite)
    _check_strings(data)
    return data


def _not_a_number(token: str) -> float:
    raise HTTPException(400, f"request body holds {token}, which JSON does not allow; send a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise HTTPException(400, f"request body holds the number {text[:40]}, which is too large for a float")
    return value


def _check_strings(data: Any) -> None:
    """Every key and string anywhere in `data` must be encodable text (iterative: nesting depth costs no stack)."""
    pending: list[tuple[str, Any]] = [("", data)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise HTTPException(400, f"{where or 'request body'}: text holds an unpaired UTF-16 surrogate "
                                         f"(a broken \\uD800-\\uDFFF escape); send valid Unicode")
        elif isinstance(value, dict):
            for key, item in value.items():
                pending.append((f"{where}.{key}" if where else str(key), key))
                pending.append((f"{where}.{key}" if where else str(key), item))
        elif isinstance(value, list):
            pending.extend((f"{where}[{index}]", item) for index, item in enumerate(value))


class CheckedRequest(Request):
    """A request whose JSON body goes through `parse_json_body` (FastAPI parses bodies with `Request.json`)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_body(await self.body(), self.app.state.huabu.config.limits)
        return self._json


class CheckedRoute(APIRoute):
    """The routers' route class: bodies are parsed by CheckedRequest (FastAPI's documented custom-request hook)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def checked(request: Request):
            return await handler(CheckedRequest(request.scope, request.receive))

        return checked


class SafeJSONResponse(JSONResponse):
    """Every answer is JSON, even for data that strict UTF-8 JSON cannot hold (a job stored by an older version
    with an unpaired surrogate or a NaN): such values go out \\u-escaped, or as null, instead of failing the
    whole listing with a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")
        except ValueError:  # NaN or Infinity
            cleaned = json.loads(json.dumps(content), parse_constant=lambda _: None)
            return json.dumps(cleaned, separators=(",", ":")).encode("ascii")


# --- images received over HTTP --------------------------------------------------------------------------------

def image_data_url(text: Any, limits: Limits, what: str = "image") -> str:
    """Check a base64 image from a request (raw base64 as A1111 clients send it, or a `data:image/...;base64,`
    URL) and return it as a data URL for the engine. Sizes are checked before anything is decoded fully, so a
    small file that would expand to a huge bitmap (a decompression bomb) is refused from its header."""
    if not isinstance(text, str) or not text:
        raise BadImage(f"{what} must be a base64-encoded image string")
    payload = text
    if text.startswith("data:"):
        _, comma, payload = text.partition(",")
        if not comma:
            raise BadImage(f"{what} is a data URL without data (expected data:image/png;base64,<base64>)")
    payload = "".join(payload.split())  # clients wrap long base64 lines
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise PayloadTooLarge(f"{what} is about {len(payload) * 3 // 4} bytes; the limit is {limits.max_image_bytes}")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(f"{what} is not valid base64 (send the image file's bytes base64-encoded)") from None
    try:
        with Image.open(io.BytesIO(raw)) as image:  # reads the header only
            size, fmt = image.size, image.format
    except Image.DecompressionBombError:  # Pillow's own guard, far above ours, fired on the header
        raise PayloadTooLarge(f"{what} has more pixels than the limit of {limits.max_image_pixels}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadImage(f"{what} is not an image Pillow can read") from None
    if fmt not in IMAGE_FORMATS:
        raise BadImage(f"{what} is a {fmt} file; send PNG, JPEG, WebP, BMP or GIF")
    if size[0] * size[1] > limits.max_image_pixels:
        raise PayloadTooLarge(f"{what} is {size[0]}x{size[1]} pixels; the limit is {limits.max_image_pixels} pixels")
    return f"data:image/{fmt.lower()};base64,{payload}"


def require_data_url(value: str | None, limits: Limits, what: str) -> str | None:
    """Images in native job requests must travel in the request: a server-side path is never read for a client."""
    if value is None:
        return None
    if not value.startswith("data:"):
        raise NotAllowed(f"{what} must be a data:image/...;base64, URL; file paths are not accepted over HTTP")
    return image_data_url(value, limits, what)


# --- files ------------------------------------------------------------------------------------------------------

def safe_output_file(root: Path, relative: str) -> tuple[Path, str]:
    """The file `relative` names under `root` and its media type, or NotFound. Refused: empty, absolute,
    backslash or `..` paths, anything whose real path (symlinks followed) leaves `root`, and non-media types."""
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/"):
        raise NotFound("file not found")
    if any(part in ("..", ".") for part in relative.split("/")):
        raise NotFound("file not found")
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(base / relative))
    if not target.is_relative_to(base) or not target.is_file():
        raise NotFound("file not found")
    media_type = MEDIA_TYPES.get(target.suffix.lower())
    if media_type is None:
        raise NotFound("file not found")
    return target, media_type


def check_callback_url(url: str, allowed_hosts: tuple[str, ...]) -> str:
    """A completion callback URL is accepted only for http(s) to a host the operator listed (--callback-allow)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"callback_url must be an http(s) URL, got {url[:100]!r}")
    if parts.hostname.lower() not in {h.lower() for h in allowed_hosts}:
        allowed = ", ".join(allowed_hosts) or "none (start the server with --callback-allow HOST)"
        raise NotAllowed(f"callback host {parts.hostname!r} is not allowed; allowed hosts: {allowed}")
    return url
