"""What torch offers huabu-tiny on this CPU: fp32 vs bf16, eager vs torch.compile, at the default and the few-step
batch (issue 17, item 3).

    .venv/bin/python benchmarks/cpu_speed.py [--repeats 5] [--threads 2] [--variants fp32,bf16,bf16+compile]

Each variant is its own Engine (Settings.dtype, Settings.compile) on huabu-tiny. Two workloads: the default (20 steps
DPM++ 2M, CFG 7, one image) and the few-step batch (`--fast`: 4 steps LCM, CFG 1, batch 16; with the huabu-tiny-lcm
LoRA when it is shipped, else the same compute without it). Every variant is warmed up on both first (compiling,
for the compiled ones: minutes), then the timed calls are interleaved, variant after variant, so machine load falls
on all alike; medians and the fastest call are printed as images/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--variants", default="fp32,bf16,bf16+compile",
                        help="comma-separated DTYPE[+compile] (default: fp32,bf16,bf16+compile)")
    args = parser.parse_args()

    from huabu.cli.options import quiet_libraries

    quiet_libraries()
    import torch

    from huabu.core.requests import GenerateRequest
    from huabu.core.settings import Settings
    from huabu.engine.generate import Engine
    from huabu.engine.loras import BUILTIN_LORAS_DIR

    if args.threads:
        torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="huabu-cpu-speed-"))
    lcm = (BUILTIN_LORAS_DIR / "huabu-tiny-lcm.safetensors").is_file()
    prompt = "a red apple in the top left corner on a blue background"
    workloads = {
        "default (20 steps, CFG 7, batch 1)": GenerateRequest.create(prompt=prompt, seed=1, steps=20, cfg_scale=7.0,
                                                                      sampler="DPM++ 2M"),
        f"fast (4 steps LCM{'' if lcm else ', no LoRA'}, CFG 1, batch 16)": GenerateRequest.create(
            prompt=prompt, seed=1, steps=4, cfg_scale=1.0, sampler="LCM", batch_size=16,
            loras=[{"name": "huabu-tiny-lcm"}] if lcm else []),
    }
    engines = {}
    for variant in args.variants.split(","):
        dtype, _, extra = variant.partition("+")
        engines[variant] = Engine(Settings.for_home(home, dtype=dtype, compile=extra == "compile"))
        for request in workloads.values():
            start = time.perf_counter()
            engines[variant].generate(request)
            print(f"warm-up {variant:<14} batch {request.batch_size:>2}: {time.perf_counter() - start:7.1f} s",
                  flush=True)

    timings = {(v, w): [] for v in engines for w in workloads}
    for _ in range(args.repeats):
        for w, request in workloads.items():
            for v, engine in engines.items():
                start = time.perf_counter()
                engine.generate(request)
                timings[v, w].append(time.perf_counter() - start)

    print(f"huabu-tiny 64x64, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} "
          "interleaved repeats; images/s at the median call (at the fastest call)")
    for w, request in workloads.items():
        print(f"  {w}")
        base = None
        for v in engines:
            rate = request.batch_size / statistics.median(timings[v, w])
            best = request.batch_size / min(timings[v, w])
            base = base or rate
            print(f"    {v:<14} {rate:7.2f} images/s  ({best:6.2f})  x{rate / base:.2f}")


if __name__ == "__main__":
    main()
