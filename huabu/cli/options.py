"""The command line's shared options and helpers: what every sub-CLI (generate, video, studio, serve, train ...)
adds to its parser and reads back from its arguments. Import-light: `huabu --help` imports this for every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huabu.core.errors import InvalidRequest
from huabu.engine.libraries import quiet_libraries  # noqa: F401 (the commands call it from here)

if TYPE_CHECKING:
    from huabu.core.settings import Settings

# What a registration function is given: the `huabu` parser's sub-parsers.
Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Options that pick and place the model: shared by every command that generates."""
    group = parser.add_argument_group("model and device")
    group.add_argument("--model", help="huabu-tiny (default), a diffusers folder, a .safetensors file, a name in "
                                       "the models folder, or a hub id (online only)")
    group.add_argument("--model-config", dest="checkpoint_config", metavar="CONFIG",
                       help="config for a single-file checkpoint whose kind is not detected: sd15, sd2-v, sd2-base, "
                            "sdxl, sd3-medium, sd35-medium, sd35-large, flux-dev, flux-schnell, huabu-tiny, or a "
                            "diffusers folder (which also lends the parts the file lacks, e.g. FLUX's text encoders)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")
    group.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16", "fp8"),
                       help="default: auto (fp16 on CUDA, with the VAE upcast when it overflows; fp32 elsewhere); "
                            "fp8 stores the UNet's weights in float8 and computes in fp16 (GPU) or fp32")
    add_memory_options(group)
    group.add_argument("--allow-unsafe-pickle", action="store_true",
                       help="load pickle .ckpt files (with torch.load(weights_only=True)); only for files you trust")


def add_memory_options(group: argparse._ActionsContainer) -> None:
    """The memory switches, set once per loaded pipeline (huabu.engine.memory); `settings_from_args` reads them."""
    group.add_argument("--offload", choices=("none", "model", "sequential"),
                       help="GPU memory saving: 'model' moves whole models to the GPU in turn, 'sequential' layer by "
                            "layer (slowest, least memory); default none")
    group.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile")
    group.add_argument("--attention-slicing", action="store_true", help="attention in slices: less memory, slower")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet/transformer: minutes of compiling for each new size or batch, "
                            "then faster steps (for servers and long batches)")


# The few-step preset: huabu-tiny's LCM-LoRA (shipped beside the model) sampled as LCM asks, without CFG.
FAST_LORA = "huabu-tiny-lcm"
FAST_PRESET = {"steps": 4, "cfg": 1.0, "sampler": "LCM", "schedule": "Automatic"}
FAST_PRESET_FLAGS = ("--steps 4", "--cfg 1", "--sampler LCM", f"--lora {FAST_LORA}")


def apply_fast_preset(args: argparse.Namespace) -> None:
    """`--fast`: set the preset's options in `args` (a model other than huabu-tiny is refused: the LoRA is its own)."""
    if not getattr(args, "fast", False):
        return
    if args.model not in (None, "", "huabu-tiny"):
        raise InvalidRequest(f"--fast is huabu-tiny's preset; for {args.model} pass an LCM LoRA made for it with "
                             "--lora NAME --sampler LCM --steps 4 --cfg 1")
    for name, value in FAST_PRESET.items():
        setattr(args, name, value)
    if not any(text.split(":")[0] == FAST_LORA for text in args.lora):
        args.lora = [*args.lora, FAST_LORA]


def add_generation_options(parser: argparse.ArgumentParser, prompt_optional: bool = False) -> None:
    """The options of a generation; `prompt_optional` when the prompt may come from elsewhere (--from-file)."""
    parser.add_argument("prompt", help="A1111 prompt syntax: (word:1.2), [from:to:when], [a|b], <lora:name:w>, BREAK",
                        **({"nargs": "?", "default": ""} if prompt_optional else {}))
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
    parser.add_argument("--sampler", default="DPM++ 2M", help="A1111 name, e.g. 'Euler a', 'DPM++ 2M Karras' "
                                                               "(huabu samplers lists them)")
    parser.add_argument("--schedule", default="Automatic", help="schedule type: Automatic, Karras, Exponential...")
    parser.add_argument("--shift", type=float, help="flow-matching models (SD3, FLUX): the sigma shift, as "
                                                    "ComfyUI's ModelSamplingSD3 (default: the model's own)")
    parser.add_argument("--fast", action="store_true",
                        help=f"huabu-tiny's few-step preset: {' '.join(FAST_PRESET_FLAGS)} (overrides those options)")
    parser.add_argument("--seed", type=int, default=-1, help="-1 picks a random seed (recorded in the PNG)")
    parser.add_argument("--size", type=parse_size, metavar="WxH", help="default: the model's size (or the image's)")
    parser.add_argument("--batch", type=int, default=1, help="images per pipeline call")
    parser.add_argument("--n-iter", type=int, default=1, help="pipeline calls (batches)")
    parser.add_argument("-o", "--output", type=Path, help="output folder (created if missing); default: "
                                                          "~/.huabu/outputs")
    parser.add_argument("--vae", help="a VAE in ~/.huabu/vae (by name) or a path: a .safetensors file or a diffusers "
                                      "folder; default: the model's own")
    add_variation_options(parser)
    add_prompt_options(parser)
    add_control_options(parser)
    add_text_box_options(parser)
    add_ip_adapter_options(parser)
    add_runtime_options(parser)


def add_variation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("variation seeds")
    group.add_argument("--subseed", type=int, default=-1, help="variation seed (-1: random)")
    group.add_argument("--subseed-strength", type=float, default=0.0,
                       help="0 keeps the seed's image, 1 gives the variation seed's; between: a blend of both noises")
    group.add_argument("--seed-resize-from", type=parse_size, metavar="WxH",
                       help="draw the noise at this size (centred), to keep a composition at another size")


def add_hires_options(parser: argparse.ArgumentParser) -> None:
    """A1111's hires fix, for txt2img."""
    group = parser.add_argument_group("hires fix")
    group.add_argument("--hires", type=float, metavar="SCALE",
                       help="upscale the result by SCALE and repaint it (A1111's hires fix), e.g. 2")
    group.add_argument("--hires-resize", type=parse_size, metavar="WxH",
                       help="hires fix to this size instead of a scale (0 for one side keeps the aspect)")
    group.add_argument("--hires-steps", type=int, default=0, help="steps of the second pass (0: --steps)")
    group.add_argument("--denoise", type=float, default=0.7, help="denoising strength of the second pass")
    group.add_argument("--upscaler", default="Latent",
                       help="Latent, 'Latent (bicubic)', 'Latent (nearest-exact)' ... or Lanczos, Nearest, None")
    group.add_argument("--hires-sampler", help="sampler of the second pass (default: --sampler)")
    group.add_argument("--hires-prompt", default="",
                       help="prompt of the second pass (default: the prompt); its LoRA tags act in that pass only")
    group.add_argument("--hires-negative", default="", help="negative prompt of the second pass")


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """What shapes the prompt beside its text: styles, LoRAs, clip skip (images and videos alike)."""
    parser.add_argument("--style", action="append", default=[], help="prompt-book style (repeatable)")
    parser.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                        help="LoRA from the LoRA folder (repeatable; same as <lora:NAME:WEIGHT> in the prompt)")
    parser.add_argument("--clip-skip", type=int, default=1)


def add_control_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ControlNet")
    group.add_argument("--control", action="append", default=[], metavar="MODULE:IMAGE[:WEIGHT[:START:END]]",
                       help="steer with a ControlNet (repeatable): MODULE is canny, softedge, depth, pose, color, or "
                            "none when IMAGE already is a control map; WEIGHT (default 1) and the START:END fraction "
                            "of the steps it acts in (default 0:1), e.g. canny:ref.png:0.8:0:0.6")
    group.add_argument("--controlnet-model", action="append", default=[], metavar="NAME_OR_PATH",
                       help="the ControlNet of the i-th --control (repeatable, in order): a diffusers folder, a "
                            ".safetensors file or a name in ~/.huabu/controlnet; default: the one there whose name "
                            "holds the module's name")
    group.add_argument("--control-mode", choices=("balanced", "prompt", "control"), default="balanced",
                       help="which matters more for all units: balanced, prompt, or control (sd-webui-controlnet's "
                            "control modes)")
    group.add_argument("--control-resize", choices=("crop", "just", "fill"), default="crop",
                       help="fit control images to the output: crop (Crop and Resize), just (stretch), fill (Resize "
                            "and Fill)")
    group.add_argument("--control-res", type=int, metavar="PIXELS",
                       help="preprocessor resolution (short side); default: the output's own (pixel perfect)")


def _box(text: str) -> list[int]:
    from huabu.core.text_boxes import parse_box

    try:
        return list(parse_box(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_text_box_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text in images (with --control glyph)")
    group.add_argument("--text-box", type=_box, action="append", default=[], metavar="X0,Y0,X1,Y1",
                       help='where the prompt\'s quoted words are drawn (a sign that says "画布"): one box per word, '
                            "in the order of the quotes, in output pixels (repeatable); words without one are laid "
                            "out across the middle")


def add_ip_adapter_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("IP-Adapter image prompts")
    group.add_argument("--ip-adapter", action="append", default=[], metavar="IMAGE[:WEIGHT]",
                       help="steer with a reference image through an IP-Adapter (repeatable): WEIGHT 0-2, default 1, "
                            "e.g. ref.png:0.6")
    group.add_argument("--ip-adapter-model", action="append", default=[], metavar="NAME_OR_PATH",
                       help="the IP-Adapter of the i-th --ip-adapter (repeatable, in order): a .safetensors file or a "
                            "name in ~/.huabu/ip-adapter; default: the only one there")


def ip_adapters_from_args(args: argparse.Namespace) -> list[dict]:
    from huabu.core.ip_adapters import ip_adapters_from_cli

    return ip_adapters_from_cli(args.ip_adapter, args.ip_adapter_model)


def add_config_options(parser: argparse.ArgumentParser, cls: type, notes: dict[str, str] | None = None) -> None:
    """One `--field-name` option per field of the config dataclass `cls`, typed by its default (a tuple field takes
    a comma-separated list, a bool one is a `--name` / `--no-name` switch), so a command and its Python API cannot
    drift. Options left out keep the dataclass's default: build the config with `config_from_args`."""
    notes = notes or {}
    for field in dataclasses.fields(cls):
        default = field.default
        typed: dict[str, Any]
        if isinstance(default, bool):
            typed, shown = {"action": argparse.BooleanOptionalAction}, default
        elif isinstance(default, tuple):
            typed = {"type": _comma_list(float if "float" in str(field.type) else int)}
            shown = ",".join(map(str, default)) or "-"
        else:
            typed, shown = {"type": type(default)}, default if default != "" else "-"
        note = notes.get(field.name, "")
        parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name, default=argparse.SUPPRESS,
                            help=f"{note} (default: {shown})".lstrip(), **typed)


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """The config dataclass `cls` with the options add_config_options added and the user gave."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def add_training_command(stages, name: str, config_class: type, notes: dict[str, str], train: str,
                         **parser_options: Any) -> argparse.ArgumentParser:
    """A `huabu train NAME` command: one option per field of its config dataclass, plus --threads. `train`
    ("module:function", called with the config and a cancel callable) is imported only when the command runs."""
    parser = stages.add_parser(name, **parser_options)
    add_config_options(parser, config_class, notes)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(handler=lambda args: run_training(args, config_class, train))
    return parser


def run_training(args: argparse.Namespace, config_class: type, train: str) -> int:
    """Run a training command; Ctrl-C stops it after a checkpoint, which the same command resumes from."""
    config = config_from_args(args, config_class)
    quiet_libraries()
    import torch

    from huabu.cli.stopping import stop_on_ctrl_c

    module, _, function = train.partition(":")
    train_function = getattr(importlib.import_module(module), function)
    if args.threads:
        torch.set_num_threads(args.threads)
    with stop_on_ctrl_c() as stop:
        print(train_function(config, cancel=stop.is_set))
    return 0


def _comma_list(item: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(item(value) for value in text.split(",") if value.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None

    return parse


def parse_size(text: str) -> tuple[int, int]:
    """"64x64" (or "64") -> (64, 64)."""
    width, sep, height = text.lower().partition("x")
    try:
        return (int(width), int(height) if sep else int(width))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x768, got {text!r}") from None


def parse_lora(text: str) -> dict:
    name, _, weight = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return {"name": name, "weight": float(weight)} if weight else {"name": text}
    except ValueError:
        raise InvalidRequest(f"--lora {text!r}: weight {weight!r} is not a number; write NAME or NAME:0.8") from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    from huabu.core.settings import Settings

    return Settings.from_env(device=getattr(args, "device", None), dtype=getattr(args, "dtype", None),
                             allow_unsafe_pickle=getattr(args, "allow_unsafe_pickle", False) or None,
                             offload=getattr(args, "offload", None),
                             vae_tiling=getattr(args, "vae_tiling", False) or None,
                             attention_slicing=getattr(args, "attention_slicing", False) or None,
                             compile=getattr(args, "compile", False) or None)


def control_units_from_args(args: argparse.Namespace) -> list[dict]:
    from huabu.core.control_units import units_from_cli

    return units_from_cli(args.control, args.controlnet_model, args.control_mode, args.control_resize,
                          args.control_res)
