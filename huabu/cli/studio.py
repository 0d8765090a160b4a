"""`huabu studio`: serve the web studio. Import-light: gradio and the engine load in the handler."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from huabu.core.errors import InvalidRequest

ANY_ADDRESS = "0.0.0.0"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `huabu studio`."""
    from huabu.cli.options import add_runtime_options

    parser = subparsers.add_parser(
        "studio", help="open the web studio (gradio) in Chinese or English",
        description="Serve the huabu studio: text to image, image to image, inpainting, ControlNet, LoRA, video, "
                    "gallery and settings, with the prompt book. It listens on 127.0.0.1 unless --host or "
                    "--listen says otherwise, which needs --auth or --auth-file; there is no public share link.")
    parser.add_argument("--language", choices=("zh", "en"), default="zh", help="initial page language (a toggle "
                                                                               "on the page switches it)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                            "machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 (needs --auth or --auth-file)")
    parser.add_argument("--auth", default=os.environ.get("HUABU_STUDIO_AUTH"), metavar="USER:PASS[,USER:PASS]",
                        help="require a login on the page and its API (default: $HUABU_STUDIO_AUTH)")
    parser.add_argument("--auth-file", type=Path, metavar="FILE", help="logins as user:password lines")
    add_runtime_options(parser)
    parser.set_defaults(handler=run_studio)


def run_studio(args: argparse.Namespace) -> int:
    from huabu.cli.options import quiet_libraries, settings_from_args

    if not 0 < args.port < 65536:
        raise InvalidRequest(f"--port must be between 1 and 65535, got {args.port}")
    host = ANY_ADDRESS if args.listen else args.host
    logins = read_logins(args.auth, args.auth_file)
    if not logins and not is_loopback(host):
        raise InvalidRequest(f"refusing to serve the studio on {host} without a login: pass --auth user:password "
                             f"or --auth-file FILE (or listen on 127.0.0.1)")
    quiet_libraries()
    settings = settings_from_args(args)
    if args.model:
        settings = settings.with_(default_model=args.model)
    from huabu.ui.app import Studio

    studio = Studio(settings, args.language, checkpoint_config=args.checkpoint_config)
    login = ", login required" if logins else ""
    print(f"huabu studio on http://{host}:{args.port} (Ctrl+C stops it{login})", flush=True)
    try:
        studio.launch(host, args.port, quiet=True, auth=logins or None)
    except OSError as err:  # gradio's "Cannot find empty port" and bind errors
        raise InvalidRequest(f"cannot listen on {host}:{args.port} ({str(err).split('.')[0]}); pick another "
                             f"--port or stop what uses it") from None
    return 0


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (localhost, 127.x.x.x, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # any other name may resolve to a public address
        return False


def read_logins(auth: str | None, auth_file: Path | None) -> list[tuple[str, str]]:
    """(user, password) pairs from `--auth u1:p1,u2:p2` and from `--auth-file` (one user:password a line, blank
    lines and # comments skipped); a password may hold `:`, and in the file also `,`."""
    entries = [(pair, "--auth") for pair in auth.split(",")] if auth is not None else []
    if auth_file is not None:
        try:
            lines = auth_file.expanduser().read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidRequest(f"cannot read --auth-file {auth_file}: {getattr(err, 'strerror', None) or err}"
                                 ) from None
        entries += [(line.strip(), f"line {number} of {auth_file}") for number, line in enumerate(lines, 1)
                    if line.strip() and not line.lstrip().startswith("#")]
    logins = []
    for entry, where in entries:
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            raise InvalidRequest(f"{where} must look like user:password (several in --auth: u1:p1,u2:p2)")
        logins.append((user, password))
    return logins
