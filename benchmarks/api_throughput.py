"""Requests per second and p50/p95 latency: the HTTP API (A1111 /sdapi/v1/txt2img and the native jobs API) on a
live loopback server vs direct Engine.generate calls, same model, steps and size.

    .venv/bin/python benchmarks/api_throughput.py [--model SPEC] [--requests 40] [--concurrency 1 8] [--steps 4]

Direct calls run one after another (the engine generates one image at a time). API requests are sent by
`--concurrency` clients at once; their latency includes waiting in the queue, so at concurrency 1 the difference
to the direct figures is the API's own overhead. Without --model: huabu-tiny, or while its weights are absent a
random huabu-tiny-sized model (see engine_overhead.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(label: str, concurrency: int, latencies: list[float], wall: float) -> None:
    print(f"{label:<24} {concurrency:>5} {len(latencies):>8} {len(latencies) / wall:>9.2f} "
          f"{statistics.median(latencies) * 1000:>9.1f} {percentile(latencies, 0.95) * 1000:>9.1f}")


def direct(engine, payload: dict, count: int) -> None:
    from huabu.core.requests import GenerateRequest

    latencies = []
    start = time.perf_counter()
    for index in range(count):
        begun = time.perf_counter()
        engine.generate(GenerateRequest.create(**payload, seed=index))
        latencies.append(time.perf_counter() - begun)
    report("Engine.generate", 1, latencies, time.perf_counter() - start)


async def through_api(base: str, payload: dict, count: int, concurrency: int, native: bool) -> None:
    import httpx

    a1111 = {"prompt": payload["prompt"], "steps": payload["steps"], "width": payload["width"],
             "height": payload["height"], "sampler_name": payload["sampler"]}
    latencies: list[float] = []
    todo = iter(range(count))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in todo:
            begun = time.perf_counter()
            if native:
                job = (await client.post("/api/v1/jobs", json={"request": {**payload, "seed": index}})).json()
                while job["state"] not in ("done", "failed", "cancelled"):
                    await asyncio.sleep(0.01)
                    job = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
                assert job["state"] == "done", job["error"]
            else:
                response = await client.post("/sdapi/v1/txt2img", json={**a1111, "seed": index})
                assert response.status_code == 200, response.text
            latencies.append(time.perf_counter() - begun)

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    report("API jobs (submit+poll)" if native else "API /sdapi/v1/txt2img", concurrency, latencies,
           time.perf_counter() - start)


def serve(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model spec (default: huabu-tiny, else a random model)")
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

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
    from huabu.core.requests import GenerateRequest

    engine.generate(GenerateRequest.create(**payload))  # load and warm up
    print(f"model {model or BUILTIN_MODEL}, {args.size}x{args.size}, {args.steps} steps, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'path':<24} {'conc.':>5} {'requests':>8} {'req/s':>9} {'p50 ms':>9} {'p95 ms':>9}")
    direct(engine, payload, args.requests)
    server, thread, base = serve(create_app(settings, ServerConfig(), engines=[engine]))
    try:
        for concurrency in args.concurrency:
            asyncio.run(through_api(base, payload, args.requests, concurrency, native=False))
            asyncio.run(through_api(base, payload, args.requests, concurrency, native=True))
    finally:
        server.should_exit = True
        thread.join(timeout=30)


if __name__ == "__main__":
    main()
