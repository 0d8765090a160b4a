"""`huabu samplers` and `huabu models`: what huabu can run."""

from __future__ import annotations

import argparse

from huabu.cli.options import Subparsers, settings_from_args


def register_samplers(sub: Subparsers) -> None:
    parser = sub.add_parser("samplers", help="list sampler names and schedule types",
                            description="A1111 sampler names huabu understands, the diffusers scheduler each uses, "
                                        "and the schedule types.")
    parser.set_defaults(handler=run_samplers)


def run_samplers(args: argparse.Namespace) -> int:
    from huabu.core.samplers import SAMPLERS, SCHEDULES

    width = max(len(s.name) for s in SAMPLERS)
    print("samplers (A1111 name, diffusers scheduler, what 'Automatic' means, aliases):")
    for s in SAMPLERS:
        aliases = ", ".join(s.aliases)
        note = f"  [{s.note}]" if s.note else ""
        print(f"  {s.name:<{width}}  {s.scheduler:<34} {s.default_schedule or 'model default':<13} {aliases}{note}")
    print("schedule types (also accepted as a suffix: 'DPM++ 2M Karras'):")
    for schedule in SCHEDULES:
        print(f"  {schedule.label:<{width}}  {', '.join(schedule.aliases)}")
    return 0


def register_models(sub: Subparsers) -> None:
    parser = sub.add_parser("models", help="list available models",
                            description="The built-in model and the models in the models folder.")
    parser.add_argument("--hash", action="store_true", help="also compute each model's A1111 hash (slow once)")
    parser.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    from huabu.engine.models import ModelManager, builtin_has_weights

    settings = settings_from_args(args)
    models = ModelManager(settings)
    print(f"models folder: {settings.models_dir}")
    for ref in models.list_models():
        if ref.kind == "builtin" and not builtin_has_weights():
            print(f"  {ref.name}  (built-in; no weights in this checkout yet)")
            continue
        digest = models.model_sha256(ref) if args.hash else None
        title = f"{ref.name} [{digest[:10]}]" if digest else ref.name
        print(f"  {title}  ({ref.kind})  {ref.location}")
    return 0
