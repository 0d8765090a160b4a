"""Requests per second and p50/p95 latency through the HTTP API vs direct Engine.generate calls, same model, steps and
size: A1111 /sdapi/v1/txt2img (sync), native jobs followed by their SSE stream, native jobs polled every 250 ms.

    .venv/bin/python benchmarks/api_throughput.py [--model SPEC] [--requests 8] [--rounds 8] [--concurrency 1 8 32]
                                                  [--steps 4] [--warmup 8] [--engine process|thread]

This process runs the server (uvicorn on a thread, as `huabu serve` does) and the direct calls; the server's engine
runs in a child process as `huabu serve`'s does (`--engine thread`: on a thread of this process, sharing the direct
calls' engine); the API load comes from one separate client process, as real clients are, that stays up for the
whole run and takes its orders over a pipe.

Small blocks, interleaved: each round runs, for every path and concurrency, a block of direct calls and then a block
of that path's requests (`--requests` each, or the concurrency if larger), and a last direct block closes the run.
A path is compared with the direct blocks on either side of its own blocks, pooled over the rounds: this machine's
speed drifts by 10-25% within a minute, so a path measured a minute after its baseline (as this benchmark first
did) moved by that much between runs, while neighbours share the drift. Before the first round every path runs
once unreported at each concurrency (`--warmup` requests). Direct calls run one after another (the engine makes one
image at a time).

Columns: `+p50 ms` is the path's p50 latency less the direct calls' beside it; `API ms`, at one client, the p50 of
each request's latency less its own engine time as the server reports it (A1111: the `Server-Timing` header; native
jobs: the result's `seconds`; saving included), which the machine's drift does not move; `eng. ms` the p50 of those
engine times; `cpu ms/req` the CPU time a request took in the server process, its engine process and the client
process (Linux /proc). Without --model: huabu-tiny, or while its weights are absent a random huabu-tiny-sized
model."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PATHS = ("a1111", "sse", "poll")
LABELS = {"direct": "Engine.generate", "a1111": "A1111 txt2img", "sse": "jobs + SSE", "poll": "jobs + poll 250ms"}
POLL_EVERY = 0.25


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- the client process ------------------------------------------------------------------------------------------

async def one_request(client, path: str, payload: dict, seed: int) -> float:
    """One request followed to its end; returns the engine's seconds on it as the server reports them (A1111: the
    Server-Timing header; native jobs: the result's `seconds`)."""
    if path == "a1111":
        body = {"prompt": payload["prompt"], "steps": payload["steps"], "width": payload["width"],
                "height": payload["height"], "sampler_name": payload["sampler"], "seed": seed}
        response = await client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        return float(response.headers["server-timing"].split("dur=")[1]) / 1000
    job = (await client.post("/api/v1/jobs", json={"request": {**payload, "seed": seed}})).json()
    if path == "sse":
        event = None
        async with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event in ("done", "failed", "cancelled"):
                    job = json.loads(line[6:])
                    break
        assert job["state"] == "done", job
        return job["result"]["seconds"]
    while job["state"] not in ("done", "failed", "cancelled"):
        await asyncio.sleep(POLL_EVERY)
        job = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert job["state"] == "done", job["error"]
    return job["result"]["seconds"]


async def load(client, path: str, payload: dict, count: int, concurrency: int) -> dict:
    latencies: list[float] = []
    beyond: list[float] = []  # each request's latency less its engine time
    todo = iter(range(count))

    async def client_loop() -> None:
        for seed in todo:
            begun = time.perf_counter()
            engine = await one_request(client, path, payload, seed)
            latencies.append(time.perf_counter() - begun)
            beyond.append(latencies[-1] - engine)

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return {"latencies": latencies, "beyond": beyond, "wall": time.perf_counter() - start}


def client_main(base: str, payload: dict, most_clients: int) -> None:
    """The load process: one block of requests per order read from stdin, its figures written to stdout."""
    import httpx

    limits = httpx.Limits(max_connections=most_clients + 4, max_keepalive_connections=most_clients + 4)
    with asyncio.Runner() as runner:
        client = httpx.AsyncClient(base_url=base, timeout=600, limits=limits)
        for line in sys.stdin:
            order = json.loads(line)
            result = runner.run(load(client, order["path"], payload, order["requests"], order["clients"]))
            print(json.dumps(result), flush=True)
        runner.run(client.aclose())


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


class LoadProcess:
    """The separate client process (client_main), kept up for the whole run: started once, so no block pays for
    an interpreter's start, and ordered one block at a time."""

    def __init__(self, base: str, payload: dict, most_clients: int) -> None:
        command = [sys.executable, __file__, "--client", base, "--payload", json.dumps(payload),
                   "--clients", str(most_clients)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, path: str, count: int, concurrency: int) -> dict:
        self.process.stdin.write(json.dumps({"path": path, "requests": count, "clients": concurrency}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the client process failed during {path} (exit code {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@dataclass
class Pooled:
    """Blocks of one kind pooled: their requests over their summed wall time, their latencies together."""

    blocks: list[dict] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [value for block in self.blocks for value in block["latencies"]]

    @property
    def rate(self) -> float:
        return len(self.latencies) / sum(block["wall"] for block in self.blocks)

    @property
    def beyond(self) -> list[float]:
        return [value for block in self.blocks for value in block["beyond"]]

    @property
    def engine(self) -> list[float]:
        """The engine's seconds on each request, as the server reported them."""
        return [latency - extra for block in self.blocks for latency, extra in zip(block["latencies"], block["beyond"])]

    def cpu_ms(self, party: str) -> float:
        """CPU milliseconds `party` used a request."""
        return 1000 * sum(block["cpu"][party] for block in self.blocks) / len(self.latencies)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):  # a process that ended meanwhile
            pass
    return pids


class CpuMeter:
    """CPU time per request of the three parties of a block: this process (the server; during a direct block the
    direct engine), the server's engine children, and the client process. On this 2-core machine every CPU
    millisecond the server or the client takes while the engine runs is, roughly, half a millisecond taken from it."""

    def __init__(self, client_pid: int) -> None:
        self.client_pid = client_pid

    def sample(self) -> dict[str, float]:
        engines = [pid for pid in child_pids(os.getpid()) if pid != self.client_pid]
        return {"server": cpu_seconds(os.getpid()), "engine": sum(cpu_seconds(pid) for pid in engines),
                "client": cpu_seconds(self.client_pid)}

    def measure(self, run, *args) -> dict:
        before = self.sample()
        block = run(*args)
        after = self.sample()
        return {**block, "cpu": {party: after[party] - before[party] for party in before}}


def rate(block: dict) -> float:
    return len(block["latencies"]) / block["wall"]


def report(measured: dict[tuple[str, int], tuple[Pooled, Pooled, list[float]]]) -> None:
    print(f"{'path':<20} {'conc.':>5} {'reqs':>5} {'req/s':>7} {'direct':>7} {'/direct':>7} {'p50 ms':>8} "
          f"{'+p50 ms':>8} {'API ms':>7} {'p95 ms':>8} {'eng. ms':>8} {'cpu ms/req: server engine client':>33}  "
          "share in each round")
    for (path, concurrency), (api, beside, shares) in measured.items():
        lat = api.latencies
        extra = (statistics.median(lat) - statistics.median(beside.latencies)) * 1000
        engine = statistics.median(api.engine) * 1000
        own = statistics.median(api.beyond) * 1000 if concurrency == 1 else float("nan")  # else queueing too
        rounds = " ".join(f"{share:.0%}" for share in shares)
        print(f"{LABELS[path]:<20} {concurrency:>5} {len(lat):>5} {api.rate:>7.2f} {beside.rate:>7.2f} "
              f"{api.rate / beside.rate:>7.0%} {statistics.median(lat) * 1000:>8.1f} "
              f"{extra if concurrency == 1 else float('nan'):>8.1f} {own:>7.1f} {percentile(lat, 0.95) * 1000:>8.1f} "
              f"{engine:>8.1f} {api.cpu_ms('server'):>14.1f} {api.cpu_ms('engine'):>7.1f} "
              f"{api.cpu_ms('client'):>6.1f}  {rounds}")
    direct = Pooled([block for _, beside, _ in measured.values() for block in beside.blocks])
    print(f"direct blocks: {direct.cpu_ms('server'):.1f} CPU ms a request (engine in this process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model spec (default: huabu-tiny, else a random model)")
    parser.add_argument("--requests", type=int, default=8, help="requests per block (at least the concurrency)")
    parser.add_argument("--rounds", type=int, default=8, help="blocks of each path and concurrency, interleaved")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--warmup", type=int, default=8,
                        help="unreported requests per path and concurrency before round 1 (0: none)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine", choices=("process", "thread"), default="process",
                        help="the server's engine in a child process (as `huabu serve`) or on a thread of this one")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run as the load process against this URL
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args.client, json.loads(args.payload), args.clients)

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
    server, thread, base = serve(create_app(settings, ServerConfig(),
                                            engines=[engine] if args.engine == "thread" else None))
    clients = LoadProcess(base, payload, max(args.concurrency))
    print(f"model {model or BUILTIN_MODEL}, {args.size}x{args.size}, {args.steps} steps, torch threads "
          f"{torch.get_num_threads()}; clients in a separate process; server engine in a {args.engine}; "
          f"{args.rounds} rounds of blocks of {args.requests}")
    try:
        clients.run("a1111", 3, 1)  # a child engine loads the model and warms up
        if args.warmup:
            direct(engine, payload, args.warmup)
            for concurrency in args.concurrency:
                for path in args.paths:
                    clients.run(path, max(args.warmup, concurrency), concurrency)
        meter = CpuMeter(clients.process.pid)
        measured = {(path, c): (Pooled(), Pooled(), []) for c in args.concurrency for path in args.paths}
        before = meter.measure(direct, engine, payload, args.requests)
        for round_no in range(1, args.rounds + 1):
            for (path, concurrency), (api, beside, shares) in measured.items():
                block = meter.measure(clients.run, path, max(args.requests, concurrency), concurrency)
                after = meter.measure(direct, engine, payload, args.requests)
                api.blocks.append(block)
                beside.blocks += [before, after]
                shares.append(rate(block) / statistics.mean([rate(before), rate(after)]))
                before = after
            print(f"-- round {round_no}: direct {rate(before):.2f} req/s; " + ", ".join(
                f"{LABELS[path]} x{c} {shares[-1]:.0%}" for (path, c), (_, _, shares) in measured.items()),
                flush=True)
        report(measured)
    finally:
        clients.close()
        server.should_exit = True
        thread.join(timeout=30)


if __name__ == "__main__":
    main()
