"""Requests per second and p50/p95 latency through the HTTP API vs direct Engine.generate calls, same model, steps and
size: A1111 /sdapi/v1/txt2img (sync), native jobs followed by their SSE stream, native jobs polled every 250 ms.

    .venv/bin/python benchmarks/api_throughput.py [--model SPEC] [--requests 32] [--concurrency 1 8 32] [--steps 4]
                                                  [--rounds 2] [--warmup 8]
                                                  [--engine process|thread]

This process runs the server (uvicorn on a thread, as `huabu serve` does) and the direct calls; the server's engine
runs in a child process as `huabu serve`'s does (`--engine thread`: on a thread of this process, sharing the direct
calls' engine); the API load comes from a separate client process, as real clients are. Each round measures direct,
then each API path at each concurrency, so the paths of one round share the machine's load; the report gives every
round and the ratio of each path to the direct rate of its round. Before the first round every path runs once
unreported at each concurrency (`--warmup` requests), so round 1 measures the same warm server as the later ones.
Direct calls run one after another (the engine makes one image at a time); an API client's latency includes waiting
in the queue, so at concurrency 1 `p50 - direct p50` is the API's own cost a request. Without --model: huabu-tiny,
or while its weights are absent a random huabu-tiny-sized model."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PATHS = ("a1111", "sse", "poll")
LABELS = {"direct": "Engine.generate", "a1111": "A1111 txt2img", "sse": "jobs + SSE", "poll": "jobs + poll 250ms"}
POLL_EVERY = 0.25


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- the client process ------------------------------------------------------------------------------------------

async def one_request(client, path: str, payload: dict, seed: int) -> None:
    if path == "a1111":
        body = {"prompt": payload["prompt"], "steps": payload["steps"], "width": payload["width"],
                "height": payload["height"], "sampler_name": payload["sampler"], "seed": seed}
        response = await client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        return
    job = (await client.post("/api/v1/jobs", json={"request": {**payload, "seed": seed}})).json()
    if path == "sse":
        async with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event: ") and line[7:] in ("done", "failed", "cancelled"):
                    assert line[7:] == "done", line
                    return
        raise AssertionError("event stream ended without a final event")
    while job["state"] not in ("done", "failed", "cancelled"):
        await asyncio.sleep(POLL_EVERY)
        job = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert job["state"] == "done", job["error"]


async def load(base: str, path: str, payload: dict, count: int, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    todo = iter(range(count))

    async def client_loop(client) -> None:
        for seed in todo:
            begun = time.perf_counter()
            await one_request(client, path, payload, seed)
            latencies.append(time.perf_counter() - begun)

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "wall": wall}


def client_main(args: argparse.Namespace) -> None:
    result = asyncio.run(load(args.client, args.path, json.loads(args.payload), args.requests, args.clients))
    print(json.dumps(result))


# --- the server process ------------------------------------------------------------------------------------------

def serve(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def direct(engine, payload: dict, count: int) -> dict:
    """Engine.generate calls one after another on a thread of their own, as the server's engine thread makes them
    (on a loaded 2-core machine torch's ops ran 5x slower on the main thread than on any other)."""
    from huabu.core.requests import GenerateRequest

    latencies: list[float] = []

    def calls() -> None:
        for seed in range(count):
            begun = time.perf_counter()
            engine.generate(GenerateRequest.create(**payload, seed=seed))
            latencies.append(time.perf_counter() - begun)

    start = time.perf_counter()
    thread = threading.Thread(target=calls, name="direct")
    thread.start()
    thread.join()
    return {"latencies": latencies, "wall": time.perf_counter() - start}


def through_client(base: str, path: str, payload: dict, count: int, concurrency: int) -> dict:
    command = [sys.executable, __file__, "--client", base, "--path", path, "--payload", json.dumps(payload),
               "--requests", str(count), "--clients", str(concurrency)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"client for {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class EngineClock:
    """Times each Engine.generate call, wherever it runs (here, or on the server's engine thread): an API path's
    engine p50 against the direct one is what sharing the process (the GIL) costs the engine; its latency p50
    minus its engine p50 is what the hand-offs cost."""

    def __init__(self, engine) -> None:
        self.times: list[float] = []
        original = engine.generate

        def timed(*args, **kwargs):
            begun = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.times.append(time.perf_counter() - begun)

        engine.generate = timed

    def take(self) -> list[float]:
        taken, self.times = self.times, []
        return taken


def row(label: str, concurrency: int, figures: dict, base: dict) -> str:
    lat, rate = figures["latencies"], len(figures["latencies"]) / figures["wall"]
    base_rate = len(base["latencies"]) / base["wall"]
    extra = (statistics.median(lat) - statistics.median(base["latencies"])) * 1000
    engine = statistics.median(figures["engine"]) * 1000 if figures["engine"] else float("nan")
    return (f"{label:<20} {concurrency:>5} {len(lat):>5} {rate:>7.2f} {rate / base_rate:>7.0%} "
            f"{statistics.median(lat) * 1000:>8.1f} {percentile(lat, 0.95) * 1000:>8.1f} "
            f"{extra if concurrency == 1 else float('nan'):>8.1f} {engine:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model spec (default: huabu-tiny, else a random model)")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole set (figures per round)")
    parser.add_argument("--warmup", type=int, default=8,
                        help="unreported requests per path and concurrency before round 1 (0: none)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine", choices=("process", "thread"), default="process",
                        help="the server's engine in a child process (as `huabu serve`) or on a thread of this one")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run as the load process against this URL
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from huabu.cli.options import quiet_libraries

    quiet_libraries()
    import torch

    from huabu.core.settings import BUILTIN_MODEL, Settings
    from huabu.engine.generate import Engine
    from huabu.engine.models import builtin_has_weights
    from huabu.server import ServerConfig, create_app

    home = Path(tempfile.mkdtemp(prefix="huabu-api-bench-"))
    model = args.model
    if model is None and not builtin_has_weights():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from engine_overhead import build_random_model

        model = str(build_random_model(home / "models" / "random-tiny").name)
    settings = Settings.for_home(home, device=args.device, hub_offline=True, default_model=model or BUILTIN_MODEL)
    engine = Engine(settings)
    payload = {"prompt": "a red apple on a blue background", "steps": args.steps, "width": args.size,
               "height": args.size, "sampler": "Euler", "model": model}
    direct(engine, payload, 3)  # load and warm up
    clock = EngineClock(engine)  # times the in-process engine only: a child's calls are not seen (eng. ms nan)
    server, thread, base = serve(create_app(settings, ServerConfig(),
                                            engines=[engine] if args.engine == "thread" else None))
    if args.engine == "process":
        through_client(base, "a1111", payload, 3, 1)  # the child loads the model and warms up
    print(f"model {model or BUILTIN_MODEL}, {args.size}x{args.size}, {args.steps} steps, torch threads "
          f"{torch.get_num_threads()}; clients in a separate process; server engine in a {args.engine}")
    print(f"{'path':<20} {'conc.':>5} {'reqs':>5} {'req/s':>7} {'/direct':>7} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'+p50 ms':>8} {'eng. ms':>8}")
    try:
        if args.warmup:
            direct(engine, payload, args.warmup)
            for concurrency in args.concurrency:
                for path in args.paths:
                    through_client(base, path, payload, max(args.warmup, concurrency), concurrency)
            clock.take()
        for round_no in range(1, args.rounds + 1):
            print(f"-- round {round_no}")
            base_figures = {**direct(engine, payload, args.requests), "engine": clock.take()}
            print(row(LABELS["direct"], 1, base_figures, base_figures), flush=True)
            for concurrency in args.concurrency:
                for path in args.paths:
                    figures = through_client(base, path, payload, max(args.requests, concurrency), concurrency)
                    figures["engine"] = clock.take()
                    print(row(LABELS[path], concurrency, figures, base_figures), flush=True)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


if __name__ == "__main__":
    main()
