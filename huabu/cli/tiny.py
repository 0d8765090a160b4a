"""`huabu tiny ...`: make the scene dataset, train each huabu-tiny stage, assemble and evaluate the model.

Each training stage's options are generated from its config dataclass, so the CLI and the Python API cannot drift.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from huabu.cli.options import add_config_options, config_from_args
from huabu.core.errors import InvalidRequest
from huabu.tiny import configs
from huabu.tiny.demo_configs import TinyControlNetConfig
from huabu.training.motion_config import MotionTrainConfig

# stage -> (training module, its config dataclass)
STAGES = {
    "clip": ("huabu.tiny.train_clip", configs.ClipTrainConfig),
    "vae": ("huabu.tiny.train_vae", configs.VaeTrainConfig),
    "unet": ("huabu.tiny.train_unet", configs.UnetTrainConfig),
    "dit": ("huabu.tiny.train_dit", configs.DitTrainConfig),  # huabu-tiny-dit's SD3-shaped transformer
    "motion": ("huabu.tiny.motion", MotionTrainConfig),  # AnimateDiff motion module on moving scenes
    "controlnet": ("huabu.tiny.controlnet", TinyControlNetConfig),  # huabu tiny's preset of huabu train controlnet
    "ip-adapter": ("huabu.tiny.train_ip_adapter", configs.IpAdapterTrainConfig),  # image prompts for huabu-tiny
}


def register(sub) -> None:
    tiny = sub.add_parser("tiny", help="huabu-tiny: dataset, training stages, evaluation, assembly")
    tsub = tiny.add_subparsers(dest="tiny_command", metavar="<step>", required=True)

    data = tsub.add_parser("data", help="render the captioned scene dataset (deterministic from --seed)")
    data.add_argument("--out", help="default: data/scenes, with --text data/text-scenes, with --world geneval "
                                    "data/world-scenes")
    data.add_argument("--count", type=int, default=200_000)
    data.add_argument("--seed", type=int, default=0)
    kind = data.add_mutually_exclusive_group()
    kind.add_argument("--text", action="store_true", help="the 128x128 text scenes (a word beside the object, quoted "
                                                          "in the caption) the glyph ControlNet trains on")
    kind.add_argument("--world", choices=("shipped", "geneval"), default="shipped",
                      help="geneval: 123 objects, counting and colour attributes, English and Chinese captions "
                           "(huabu.tiny.world); shipped (default): the scenes huabu-tiny was trained on")
    data.set_defaults(handler=_data)

    train = tsub.add_parser("train", help="train one stage (resumes from its newest checkpoint; Ctrl-C stops after "
                                          "writing one)")
    stages = train.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for stage in STAGES:
        p = stages.add_parser(stage, help=f"train the {stage} stage")
        add_config_options(p, STAGES[stage][1])
        p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
        p.set_defaults(handler=_train)

    assemble = tsub.add_parser("assemble", help="build the huabu-tiny diffusers folder (fp16) from trained stages")
    assemble.add_argument("--clip", default="runs/clip/final")
    assemble.add_argument("--vae", default="runs/vae/final")
    assemble.add_argument("--unet", default="runs/unet/final")
    assemble.add_argument("--base", help="a model (name or folder) whose VAE and CLIP take --vae and --clip's place, "
                                         "as `train unet --base` trained under; no scorer is written")
    assemble.add_argument("--out", default=None, help="default: the shipped huabu/tiny/huabu-tiny")
    assemble.set_defaults(handler=_assemble)

    dit = tsub.add_parser("assemble-dit", help="build the huabu-tiny-dit diffusers folder (SD3 pipeline, fp16) from "
                                               "the dit stage and huabu-tiny's VAE and CLIP")
    dit.add_argument("--transformer", default="runs/dit/final", help="the dit stage's final folder")
    dit.add_argument("--base", default=configs.DitTrainConfig.base, help="the model the dit stage trained under")
    dit.add_argument("--text-projection", default="", help="the CLIP text projection it trained with (default: "
                                                           "the shipped huabu-tiny-scorer's)")
    dit.add_argument("--out", default=None, help="default: huabu/tiny/huabu-tiny-dit")
    dit.set_defaults(handler=_assemble_dit)

    export = tsub.add_parser("export", help="write huabu-tiny (or huabu-tiny-dit) as one .safetensors file "
                                            "(A1111 / ComfyUI layout)")
    export.add_argument("--model", help="huabu-tiny-dit, or a diffusers folder shaped as huabu-tiny or huabu-tiny-dit "
                                        "(default: huabu-tiny)")
    export.add_argument("-o", "--out", help="default: <model name>.safetensors")
    export.set_defaults(handler=_export)

    ev = tsub.add_parser("eval", help="prompt adherence on held-out prompts, with the reachable ceilings")
    ev.add_argument("--model", help="a huabu-tiny-shaped diffusers folder (default: the shipped one)")
    ev.add_argument("--scorer", help="the CLIP vision tower folder (default: the shipped one)")
    ev.add_argument("--steps", type=int, default=20)
    ev.add_argument("--cfg", type=float, default=5.0)
    ev.add_argument("--singles", type=int, default=200)
    ev.add_argument("--pairs", type=int, default=100)
    ev.add_argument("--sampler", default="DPM++ 2M", help="an A1111 sampler name (LCM with an LCM-LoRA)")
    ev.add_argument("--lora", help="a LoRA file applied at weight 1 (e.g. huabu train lcm's)")
    ev.add_argument("--grid", help="also write a PNG: real held-out scenes above the generated ones")
    ev.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="what the denoising runs in")
    ev.add_argument("--json", action="store_true", help="print one JSON line")
    ev.add_argument("--world", choices=("shipped", "geneval"), default="shipped",
                    help="geneval: score GenEval-style categories on held-out scenes of huabu.tiny.world instead")
    ev.add_argument("--lang", choices=("en", "zh"), default="en", help="with --world geneval: the prompts' language")
    ev.add_argument("--count", type=int, default=20, help="with --world geneval: held-out scenes per category")
    ev.set_defaults(handler=_eval)

    from huabu.cli import tiny_demos as demo_cli

    demo_cli.register(tsub)


def _data(args: argparse.Namespace) -> int:
    from huabu.tiny.data import write_dataset
    from huabu.tiny.demo_configs import TEXT_DATA

    out = args.out or (TEXT_DATA if args.text else "data/world-scenes" if args.world == "geneval" else "data/scenes")
    path = write_dataset(Path(out), args.count, args.seed, text=args.text, world=args.world)
    print(f"{args.count} scenes in {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import importlib

    import torch

    from huabu.cli.stopping import stop_on_ctrl_c

    module_name, cls = STAGES[args.stage]
    module = importlib.import_module(module_name)
    if args.threads:
        torch.set_num_threads(args.threads)
    with stop_on_ctrl_c() as stop:
        result = module.train(config_from_args(args, cls), cancel=stop.is_set)
    print(result)
    return 0


def _stage_folder(option: str, path: str) -> Path:
    """A trained stage's folder (its config.json there), or a one-line error naming the option."""
    if not (Path(path) / "config.json").is_file():
        raise InvalidRequest(f"{option} {path}: no trained stage there (no config.json); give a run's final folder")
    return Path(path)


def _assemble(args: argparse.Namespace) -> int:
    from huabu.tiny.assemble import DEFAULT_OUT, assemble, assemble_on_base
    from huabu.tiny.train_unet import base_folder

    unet = _stage_folder("--unet", args.unet)
    if args.base:
        if not args.out:
            raise InvalidRequest("assemble --base writes a model beside huabu-tiny, not over it: give --out")
        out = assemble_on_base(unet, base_folder(args.base), Path(args.out))
    else:
        out = assemble(_stage_folder("--clip", args.clip), _stage_folder("--vae", args.vae), unet,
                       Path(args.out) if args.out else DEFAULT_OUT)
    print(f"assembled a huabu-tiny-shaped model in {out}")
    return 0


def _assemble_dit(args: argparse.Namespace) -> int:
    from huabu.tiny.assemble import DIT_OUT, assemble_dit
    from huabu.tiny.train_unet import base_folder

    out = assemble_dit(_stage_folder("--transformer", args.transformer), base_folder(args.base), args.text_projection,
                       Path(args.out) if args.out else DIT_OUT)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"assembled huabu-tiny-dit in {out} ({size / 1e6:.1f} MB)")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from huabu.engine.bundled import SHIPPED_MODELS
    from huabu.engine.convert import export_single_file
    from huabu.tiny.assemble import DEFAULT_OUT

    folder = SHIPPED_MODELS.get(args.model) or (Path(args.model) if args.model else DEFAULT_OUT)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    # The file names the shipped folder of its shape as its config, so it loads offline without --model-config.
    config = "huabu-tiny-dit" if index["_class_name"] == "StableDiffusion3Pipeline" else "huabu-tiny"
    path = export_single_file(folder, args.out or f"{folder.name}.safetensors", config_name=config,
                              dtype=torch.float16)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.world == "geneval":
        return _eval_world(args)
    from huabu.tiny.eval import EvalSettings, evaluate, format_report

    settings = EvalSettings(steps=args.steps, cfg_scale=args.cfg, singles=args.singles, pairs=args.pairs,
                            grid=Path(args.grid) if args.grid else None, sampler=args.sampler,
                            lora=Path(args.lora) if args.lora else None, dtype=args.dtype)
    if args.model:
        settings.model = Path(args.model)
    if args.scorer:
        settings.scorer = Path(args.scorer)
    result = evaluate(settings)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0


def _eval_world(args: argparse.Namespace) -> int:
    from huabu.tiny.eval_world import WorldEvalSettings, evaluate_world, format_world_report

    settings = WorldEvalSettings(lang=args.lang, count=args.count, steps=args.steps, cfg_scale=args.cfg,
                                 sampler=args.sampler, lora=Path(args.lora) if args.lora else None, dtype=args.dtype,
                                 grid=Path(args.grid) if args.grid else None,
                                 **({"model": Path(args.model)} if args.model else {}))
    result = evaluate_world(settings)
    print(json.dumps(result, ensure_ascii=False) if args.json else format_world_report(result))
    return 0
