"""`huabu serve` (the HTTP API) and `huabu worker` (a Celery worker for scale-out). Import-light: the server
modules load inside the handlers."""

from __future__ import annotations

import argparse
import os
import socket

from huabu.cli.options import add_memory_options


def register(sub) -> None:
    serve = sub.add_parser("serve", help="run the HTTP API (A1111-compatible and native jobs)",
                           description="Serve the A1111-compatible /sdapi/v1 API and huabu's jobs API (OpenAPI at "
                                       "/docs). Binds 127.0.0.1 unless --listen; --listen needs --api-key or "
                                       "--api-auth.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7861)
    serve.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (needs --api-key or --api-auth)")
    serve.add_argument("--api-key", default=os.environ.get("HUABU_API_KEY"),
                       help="require 'Authorization: Bearer KEY' (default: $HUABU_API_KEY)")
    serve.add_argument("--api-auth", default=os.environ.get("HUABU_API_AUTH"), metavar="USER:PASS[,USER:PASS]",
                       help="require HTTP Basic credentials, as A1111 (default: $HUABU_API_AUTH)")
    serve.add_argument("--workers", type=int, default=1, help="local generation threads, each with its own engine")
    serve.add_argument("--broker", metavar="REDIS_URL",
                       help="run jobs on Celery workers (`huabu worker`) through this Redis instead of locally")
    serve.add_argument("--callback-allow", default="", metavar="HOST[,HOST]",
                       help="hosts that job completion callbacks may be sent to (default: none)")
    serve.add_argument("--max-body-mb", type=int, default=32, help="largest request body in MiB")
    serve.add_argument("--keep-jobs-days", type=float, default=7.0, metavar="DAYS",
                       help="delete finished jobs older than this from jobs.sqlite (default 7; 0 keeps them all)")
    serve.add_argument("--max-output-gb", type=float, metavar="GB",
                       help="refuse jobs that save once the outputs folder holds this much (default: no limit)")
    _limit_options(serve)
    _runtime(serve)
    serve.set_defaults(handler=run_serve)

    worker = sub.add_parser("worker", help="run a scale-out worker (Celery over Redis)",
                            description="Take jobs from `huabu serve --broker URL` through Redis; run several on "
                                        "one or many machines sharing HUABU_HOME's outputs folder.")
    worker.add_argument("--broker", required=True, metavar="REDIS_URL", help="e.g. redis://127.0.0.1:6379/0")
    worker.add_argument("--name", default=f"huabu@{socket.gethostname()}-{os.getpid()}", help="worker name")
    worker.add_argument("--requeue-after", type=float, default=3600.0, metavar="SECONDS",
                        help="a job unacknowledged this long (its worker died) is given to another worker; a "
                             "longer job whose worker is alive is not run twice (its lease in Redis)")
    worker.add_argument("--preload", metavar="MODEL", help="load this model before taking jobs")
    _limit_options(worker)  # a worker checks each job itself: anyone who can write to Redis can send one
    _runtime(worker)
    worker.set_defaults(handler=run_worker)


def _limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-size", type=int, default=2048, help="largest width/height a request may ask for")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch_size")
    parser.add_argument("--max-n-iter", type=int, default=16)


def _limits(args: argparse.Namespace):
    from huabu.server.config import Limits

    return Limits(max_width=args.max_size, max_height=args.max_size, max_steps=args.max_steps,
                  max_batch_size=args.max_batch, max_n_iter=args.max_n_iter)


def _runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="default model (built-in huabu-tiny, or a name in the models folder)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")
    parser.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16", "fp8"),
                        help="default: auto; fp8 stores the UNet's weights in float8 (layerwise casting)")
    add_memory_options(parser)


def _settings(args: argparse.Namespace):
    from huabu.cli.options import settings_from_args

    return settings_from_args(args).with_(default_model=args.model)


def run_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from huabu.server.config import ANY_ADDRESS, ServerConfig

    limits = replace(_limits(args), max_body_bytes=args.max_body_mb * 1024 * 1024)
    config = ServerConfig(host=ANY_ADDRESS if args.listen else args.host, port=args.port, api_key=args.api_key,
                          api_auth=args.api_auth, limits=limits, workers=args.workers, broker_url=args.broker,
                          keep_jobs_days=args.keep_jobs_days, max_output_gb=args.max_output_gb,
                          callback_allow=tuple(h.strip() for h in args.callback_allow.split(",") if h.strip()))
    from huabu.cli.options import quiet_libraries

    quiet_libraries()
    import uvicorn

    from huabu.server.app import create_app

    app = create_app(_settings(args), config)
    print(f"huabu API on http://{config.host}:{config.port} (docs at /docs)", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from huabu.cli.options import quiet_libraries

    quiet_libraries()
    from huabu.server.distributed import run_worker as worker_main

    worker_main(_settings(args), args.broker, args.name, args.requeue_after, args.preload, _limits(args))
    return 0
