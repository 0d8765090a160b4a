"""The course's applications over the one generation path: each app turns an AppRequest (huabu.core.apps) into a
GenerateRequest plus its infotext fields, and `run_app` runs that through `Engine.generate` (progress, interrupt,
saving and the gallery as for any image). Modules: `common` (shared helpers), `segment` (GrabCut / SAM subject
masks), `replace`, `try_on`, `instant_id`, `portrait` (crop, caption and contact sheet; its LoRA training is in
huabu.training.portrait)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from huabu.core.apps import AppRequest
from huabu.core.errors import InvalidRequest, ModelNotFound
from huabu.engine.generate import Engine, GenerationResult
from huabu.engine.job import Progress

SAM_FOLDER = "sam"  # ~/.huabu/sam/<name>: SAM model folders named by `sam`


def sam_folder(engine: Engine, spec: str | None) -> Path | None:
    """The SAM folder `spec` names: a folder name in ~/.huabu/sam, or a path; None: GrabCut."""
    if not spec:
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    named = engine.settings.home / SAM_FOLDER / spec
    if named.is_dir():
        return named
    raise ModelNotFound(f"SAM model {spec!r} not found: not a folder, and not in {engine.settings.home / SAM_FOLDER}")


def run_app(engine: Engine, request: AppRequest, progress: Callable[[Progress], None] | None = None,
            interrupt: Callable[[], bool] | None = None, save: bool = False,
            outdir: str | Path | None = None) -> GenerationResult:
    """Run replace, try-on or instant-id (portrait trains a LoRA first: huabu.training.portrait.run_portrait)."""
    if request.app == "replace":
        from huabu.engine.apps.replace import replace_plan

        generate, tag, _ = replace_plan(request, sam_folder(engine, request.sam))
    elif request.app == "try-on":
        from huabu.engine.apps.try_on import try_on_plan

        generate, tag, _ = try_on_plan(request)
    elif request.app == "instant-id":
        from huabu.engine.apps.instant_id import instant_id_plan

        ref = engine.models.resolve(request.model)
        own = engine.controlnets.own_controlnets(ref.path)
        generate, tag = instant_id_plan(request, engine.ip_adapters, engine.controlnets, own)
    else:
        raise InvalidRequest(f"{request.app} trains a model first; run it with huabu.training.portrait")
    return engine.generate(generate, progress, interrupt, save, outdir, extensions=[tag])
