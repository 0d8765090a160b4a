"""`huabu studio`: serve the web studio. Import-light: gradio and the engine load in the handler."""

from __future__ import annotations

import argparse

from huabu.errors import InvalidRequest


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `huabu studio`."""
    from huabu.cli import add_runtime_options

    parser = subparsers.add_parser(
        "studio", help="open the web studio (gradio) in Chinese or English",
        description="Serve the huabu studio: text to image, image to image, inpainting, ControlNet, LoRA, video, "
                    "gallery and settings, with the prompt book. It listens on 127.0.0.1 unless --host says "
                    "otherwise; there is no public share link.")
    parser.add_argument("--language", choices=("zh", "en"), default="zh", help="initial page language (a toggle "
                                                                               "on the page switches it)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                            "machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_runtime_options(parser)
    parser.set_defaults(handler=run_studio)


def run_studio(args: argparse.Namespace) -> int:
    from huabu.cli import quiet_libraries, settings_from_args

    if not 0 < args.port < 65536:
        raise InvalidRequest(f"--port must be between 1 and 65535, got {args.port}")
    quiet_libraries()
    settings = settings_from_args(args)
    if args.model:
        settings = settings.with_(default_model=args.model)
    from huabu.ui.app import Studio

    studio = Studio(settings, args.language, checkpoint_config=args.checkpoint_config)
    print(f"huabu studio on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    try:
        studio.launch(args.host, args.port, quiet=True)
    except OSError as err:  # gradio's "Cannot find empty port" and bind errors
        raise InvalidRequest(f"cannot listen on {args.host}:{args.port} ({str(err).split('.')[0]}); pick another "
                             f"--port or stop what uses it") from None
    return 0
