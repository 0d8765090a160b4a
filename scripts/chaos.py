"""Chaos run: feed `huabu serve` a stream of jobs and kill it with SIGKILL at random moments (half of the kills the
moment a PNG is being written), M times, on a fresh HUABU_HOME; with --broker, Celery workers (`huabu worker`) are
killed too. After each restart: no 0-byte output and no temporary file of a dead process. At the end, with the
queue drained: every accepted job (HTTP 202) finished, no job wrote a second set of outputs, and
`PRAGMA integrity_check` is ok on jobs.sqlite and gallery.sqlite. Prints "M kills, L jobs lost, D duplicates".

    python scripts/chaos.py --kills 10            # local engine threads
    python scripts/chaos.py --kills 10 --broker redis://127.0.0.1:6379/15   # Celery workers, killed as well

Loopback only; the built-in huabu-tiny model at 64x64, so it runs on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPORARY = re.compile(r"^\..+\.(\d+)-[0-9a-f]{12}\..+$")  # huabu.core.atomic's temporary names
REQUEST = {"prompt": "a red cat", "steps": 4, "width": 64, "height": 64}


def call(base: str, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Cluster:
    """The server (and with a broker, its workers) as child processes on one home."""

    def __init__(self, home: Path, port: int, broker: str | None, workers: int, requeue_after: float) -> None:
        self.home, self.port, self.broker, self.workers = home, port, broker, workers
        self.requeue_after = requeue_after
        self.base = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "HUABU_HOME": str(home), "HUABU_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
                    "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        self.server: subprocess.Popen | None = None
        self.worker_processes: list[subprocess.Popen] = []

    def _spawn(self, *args: str) -> subprocess.Popen:
        log = open(self.home / "chaos.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "huabu.cli", *args], env=self.env, stdout=log, stderr=log)

    def start(self) -> None:
        extra = ["--broker", self.broker] if self.broker else []
        self.server = self._spawn("serve", "--port", str(self.port), *extra)
        if self.broker:
            while len(self.worker_processes) < self.workers:
                self.worker_processes.append(self._spawn("worker", "--broker", self.broker, "--requeue-after",
                                                         str(self.requeue_after),
                                                         "--name", f"chaos{len(self.worker_processes)}@%h"))
        deadline = time.monotonic() + 180
        while True:
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"huabu serve did not start; see {self.home / 'chaos.log'}")
            try:
                if call(self.base, "GET", "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)

    def kill_server(self) -> None:
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()

    def kill_a_worker(self, rng: random.Random) -> None:
        victim = self.worker_processes.pop(rng.randrange(len(self.worker_processes)))
        victim.send_signal(signal.SIGKILL)
        victim.wait()

    def stop(self) -> None:
        for process in [self.server, *self.worker_processes]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.worker_processes = []


def leftovers(outputs: Path, alive: set[int]) -> list[str]:
    """0-byte files and temporary files of processes not in `alive`."""
    found = []
    for folder, _, files in os.walk(outputs):
        for name in files:
            path = Path(folder, name)
            match = TEMPORARY.match(name)
            if match and int(match.group(1)) not in alive:
                found.append(f"temporary {path}")
            elif not match and path.stat().st_size == 0:
                found.append(f"empty {path}")
    return found


def feed(base: str, accepted: list[str], stop: threading.Event, rng: random.Random) -> None:
    """Submit jobs at random intervals until `stop`; record every job the server accepted (202)."""
    while not stop.is_set():
        try:
            status, job = call(base, "POST", "/api/v1/jobs",
                               {"request": {**REQUEST, "seed": rng.randrange(10**6), "batch_size": rng.randint(1, 2)}})
            if status == 202:
                accepted.append(job["id"])
        except OSError:  # the server is down: the client sees a failed call, nothing was accepted
            pass
        stop.wait(rng.uniform(0.0, 0.3))


def kill_while_writing(outputs: Path, timeout: float) -> None:
    """Return as soon as a temporary output file exists (a PNG being written), or after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, _, files in os.walk(outputs):
            if any(TEMPORARY.match(name) for name in files):
                return
        time.sleep(0.001)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--broker", help="Redis URL: run jobs on Celery workers and kill those too")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requeue-after", type=float, default=30.0,
                        help="the workers' --requeue-after: below the slowest job's time, copies of running jobs' "
                             "messages are handed out and must not run twice")
    parser.add_argument("--home", type=Path, help="default: a new temporary folder")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    home = args.home or Path(tempfile.mkdtemp(prefix="huabu-chaos-"))
    home.mkdir(parents=True, exist_ok=True)
    outputs = home / "outputs"
    cluster = Cluster(home, args.port, args.broker, args.workers, args.requeue_after)
    accepted: list[str] = []
    problems: list[str] = []
    for kill in range(args.kills):
        cluster.start()
        alive = {cluster.server.pid, *(p.pid for p in cluster.worker_processes)}
        problems += [f"after restart {kill}: {item}" for item in leftovers(outputs, alive)]
        stop = threading.Event()
        feeder = threading.Thread(target=feed, args=(cluster.base, accepted, stop, rng))
        feeder.start()
        if kill % 2:
            time.sleep(rng.uniform(0.5, 2.0))
            kill_while_writing(outputs, timeout=20)
        else:
            time.sleep(rng.uniform(0.5, 4.0))
        if args.broker and rng.random() < 0.5:
            cluster.kill_a_worker(rng)
        cluster.kill_server()
        stop.set()
        feeder.join()
        print(f"kill {kill + 1}/{args.kills}: {len(accepted)} jobs accepted so far", flush=True)

    cluster.start()
    deadline = time.monotonic() + 600
    while True:
        states = {job_id: call(cluster.base, "GET", f"/api/v1/jobs/{job_id}")[1] for job_id in accepted}
        if all(job and job.get("state") in ("done", "failed", "cancelled") for job in states.values()):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    cluster.stop()
    lost = [job_id for job_id, job in states.items() if not job or job.get("state") not in ("done", "failed",
                                                                                           "cancelled")]
    # Files of every job the server holds, also those whose 202 answer a kill cut off before the client read it:
    # a PNG no job names is a second set of outputs.
    with sqlite3.connect(home / "jobs.sqlite") as con:
        results = [json.loads(row[0]) for row in con.execute("SELECT result FROM jobs WHERE result IS NOT NULL")]
    referenced = {name for result in results for name in result.get("files", [])}
    written = {path.relative_to(outputs).as_posix() for path in outputs.rglob("*.png")} if outputs.exists() else set()
    duplicates = sorted(written - referenced)
    problems += [f"at the end: {item}" for item in leftovers(outputs, set())]
    for db in ("jobs.sqlite", "gallery.sqlite"):
        with sqlite3.connect(home / db) as con:
            check = con.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            problems.append(f"{db}: integrity_check {check}")
    done = sum(1 for job in states.values() if job and job.get("state") == "done")
    failed = sum(1 for job in states.values() if job and job.get("state") == "failed")
    print(f"{args.kills} kills, {len(lost)} jobs lost, {len(duplicates)} duplicates "
          f"({len(accepted)} accepted: {done} done, {failed} failed; "
          f"{len(written)} images written; integrity_check ok on both databases: "
          f"{not [p for p in problems if 'integrity' in p]}; leftovers: {len(problems)})")
    for line in problems + [f"lost {job_id}" for job_id in lost] + [f"duplicate {name}" for name in duplicates]:
        print("  " + line)
    return 0 if not (lost or duplicates or problems) else 1


if __name__ == "__main__":
    sys.exit(main())
