"""A1111's scripts: runs of the one generation path with changed requests, put together as A1111 does.

`run_script` picks the script a request names (`GenerateRequest.script`), runs each changed request through the
`run` it is given (Engine.generate's own path, without the script) and returns the images in A1111's order, grids
first; with a `folder`, grids are saved there too (the cells are saved by the runs themselves). Every face reaches
this through Engine.generate.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest, ScriptRequest
from huabu.engine.scripts import batch, prompt_matrix, prompts_from_file, xyz
from huabu.engine.scripts.common import Run, ScriptOutput


def script_titles() -> list[str]:
    """A1111's scripts huabu runs, as its /sdapi/v1/scripts names them (lowercase titles)."""
    return [title for title in _scripts() if title != batch.NAME]


def _scripts() -> dict[str, ModuleType]:
    return {"x/y/z plot": xyz, "prompt matrix": prompt_matrix, "prompts from file or textbox": prompts_from_file,
            batch.NAME: batch}


def _module(script: ScriptRequest) -> ModuleType:
    scripts = _scripts()
    found = scripts.get(script.name.strip().lower())
    if found is None:
        raise InvalidRequest(f"script {script.name!r} is not one huabu runs; use one of {', '.join(scripts)}")
    return found


def run_script(request: GenerateRequest, run: Run, folder: Path | None) -> ScriptOutput:
    """Run the request's script; `folder` (when saving) receives the grids."""
    base = request.model_copy(update={"script": None})
    return _module(request.script).run(base, request.script.args, run, folder)


def script_requests(request: GenerateRequest) -> list[GenerateRequest]:
    """The requests a script would run (seeds picked for -1 may differ from the run's), for the checks a face makes
    before accepting it, e.g. the server's models-by-name and limits."""
    return _module(request.script).requests(request.model_copy(update={"script": None}), request.script.args)
