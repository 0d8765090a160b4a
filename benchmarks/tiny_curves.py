"""Training curves of a huabu-tiny stage for docs/: its loss (the run's log.jsonl) and the GenEval-style scores
(`huabu tiny eval --world geneval`) of the EMA weights it kept along the way, in English and in Chinese.

    .venv/bin/python benchmarks/tiny_curves.py scores --run runs/dit-bi --model huabu/tiny/huabu-tiny-dit
    .venv/bin/python benchmarks/tiny_curves.py plot --run runs/dit-bi --out docs/huabu-tiny-dit-curves.png
    .venv/bin/python benchmarks/tiny_curves.py scores --run runs/unet-world --model runs/unet-world/model \
        --sampler "DPM++ 2M"
    .venv/bin/python benchmarks/tiny_curves.py plot --run runs/unet-world --smooth 4 \
        --out docs/huabu-tiny-unet-world-curves.png

`scores` reads `<run>/ema-history/step-*.safetensors` (EMA checkpoints copied aside while the run went on: the loop
keeps only the newest two), loads each into `--model` (a pipeline folder of the same shapes), and appends a line per
step and language to `<run>/scores.jsonl`; steps already there are skipped, so it can follow a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from huabu.tiny import eval as E
from huabu.tiny.eval_world import CATEGORY_LABELS, WorldEvalSettings, evaluate_world

LANGUAGES = ("en", "zh")


def load_ema(pipe, path: Path) -> None:
    """An EMA checkpoint of the DiT or UNet stage (`transformer.*` / `unet.*` and `text_encoder.*` when the encoder
    trained, or the bare denoiser's keys) into the pipeline; a trained text encoder goes into every CLIP slot."""
    denoiser = "unet" if hasattr(pipe, "unet") else "transformer"
    state = load_file(str(path))
    parts = {denoiser: {}, "text_encoder": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in parts:
            parts[head][rest] = value
        else:
            parts[denoiser][key] = value
    getattr(pipe, denoiser).load_state_dict(parts[denoiser])
    if parts["text_encoder"]:
        for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if encoder is not None:
                encoder.load_state_dict(parts["text_encoder"])


def scores(args: argparse.Namespace) -> None:
    out = args.run / "scores.jsonl"
    done = {(r["step"], r["lang"]) for r in map(json.loads, out.read_text().splitlines())} if out.is_file() else set()
    pipe = E.load_pipeline(args.model, args.sampler)
    for path in sorted((args.run / "ema-history").glob("step-*.safetensors")):
        step = int(path.stem.split("-")[1])
        if all((step, lang) in done for lang in LANGUAGES):
            continue
        load_ema(pipe, path)
        for lang in LANGUAGES:
            settings = WorldEvalSettings(model=args.model, lang=lang, count=args.count, sampler=args.sampler)
            result = evaluate_world(settings, pipe)
            with out.open("a") as f:
                f.write(json.dumps({"step": step, "lang": lang, "scores": result["scores"]}) + "\n")
            print(step, lang, " ".join(f"{k} {v:.0%}" for k, v in result["scores"].items()), flush=True)


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines()]
    steps, loss = np.array([r["step"] for r in log]), np.array([r["loss"] for r in log])
    window = max(1, args.smooth)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, loss, color="0.8", lw=0.8, label=f"every {steps[1] - steps[0]} steps")
    left.plot(steps[window - 1:], smooth, color="C0", label=f"mean of {window}")
    left.set(xlabel="step", ylabel="training loss", title=f"{args.run.name}: loss")
    left.set_ylim(0, np.percentile(loss, 99))
    left.legend()
    records = [json.loads(line) for line in (args.run / "scores.jsonl").read_text().splitlines()]
    for i, (key, label) in enumerate(CATEGORY_LABELS.items()):
        for lang, style in zip(LANGUAGES, ("-", "--")):
            rows = sorted((r["step"], r["scores"][key]) for r in records if r["lang"] == lang)
            if rows:
                x, y = zip(*rows)
                right.plot(x, np.array(y) * 100, style, color=f"C{i}", marker=".", label=f"{label} ({lang})")
    right.set(xlabel="step", ylabel="% of held-out prompts", title="GenEval-style scores (solid en, dashed zh)",
              ylim=(0, 100))
    right.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("scores")
    sc.add_argument("--run", type=Path, required=True)
    sc.add_argument("--model", type=Path, required=True)
    sc.add_argument("--count", type=int, default=10, help="held-out scenes per category")
    sc.add_argument("--sampler", default="Euler")
    pl = sub.add_parser("plot")
    pl.add_argument("--run", type=Path, required=True)
    pl.add_argument("--out", type=Path, required=True)
    pl.add_argument("--smooth", type=int, default=20, help="log lines averaged in the smoothed loss")
    args = parser.parse_args()
    scores(args) if args.command == "scores" else plot(args)


if __name__ == "__main__":
    main()
