"""The Host-header rule both local servers (the studio and the HTTP API) apply against DNS rebinding: a page on
evil.example whose name a DNS server re-points to 127.0.0.1 reaches a loopback server with `Host: evil.example`,
and as its own origin; only the Host header tells that request apart. A loopback server answers loopback names
only, with the 421 of RFC 9110 ("not this server"). Pure ASGI, so it sits in front of FastAPI and gradio alike.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def hostname(host_header: str) -> str:
    """The name in a Host header, lower-cased, without its port or IPv6 brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_bind(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def foreign_host(host_header: str, bind_host: str) -> str | None:
    """The refusal line for a request to a server bound to `bind_host`, or None when it may answer. Servers bound
    beyond loopback answer any name (their names are the operator's; they require a login instead)."""
    if not is_loopback_bind(bind_host):
        return None
    name = hostname(host_header)
    if name in (*LOOPBACK_NAMES, bind_host):
        return None
    return f"this server answers to localhost only, not to host {name[:100]!r}"


async def send_json_error(send: Send, status: int, kind: str, detail: str,
                          extra: dict[str, str] | None = None) -> None:
    """A one-line JSON error, straight to the ASGI `send`."""
    body = json.dumps({"error": kind, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LoopbackHostGuard:
    """ASGI middleware: on a loopback bind, requests and websockets naming another host get 421 (or are closed)."""

    def __init__(self, app: Any, bind_host: str) -> None:
        self.app = app
        self.bind_host = bind_host

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"), "")
            problem = foreign_host(host, self.bind_host)
            if problem is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
                else:
                    await send_json_error(send, 421, "MisdirectedRequest", problem)
                return
        await self.app(scope, receive, send)
