"""A1111's Prompts from file or textbox (scripts/prompts_from_file.py): one generation per non-empty line. A line is
a prompt, or A1111's options (`--prompt "a cat" --steps 10 --seed 5 --negative_prompt "blurry"`), which change
that line's request. A line's prompt joins the request's own prompt with a space, before it (prompt_position
"start") or after it ("end"); seeds stay as given unless `iterate_seed` (each line moves the seed on by
batch_size x n_iter) or `same_seed` (one random seed for every line when the seed is -1)."""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.core.errors import InvalidRequest
from huabu.core.requests import MAX_SEED, GenerateRequest
from huabu.engine.scripts.common import Run, ScriptOutput, rebuild, run_each

MAX_LINES = 1000


@dataclass(frozen=True)
class Lines:
    iterate_seed: bool = False  # A1111 "Iterate seed every line"
    same_seed: bool = False  # A1111 "Use same random seed for all lines"
    prompt_position: str = "start"
    text: str = ""


_POSITIONAL = ("iterate_seed", "same_seed", "prompt_position", "text")


def _text(value: str) -> str:
    return value


def _whole(value: str) -> int:
    return int(value)


def _number(value: str) -> float:
    return float(value)


# A1111's line options -> (request field, parse)
_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "sd_model": ("model", _text), "prompt": ("prompt", _text), "negative_prompt": ("negative_prompt", _text),
    "styles": ("styles", lambda value: [value]), "seed": ("seed", _whole), "sampler_name": ("sampler", _text),
    "batch_size": ("batch_size", _whole), "n_iter": ("n_iter", _whole), "steps": ("steps", _whole),
    "cfg_scale": ("cfg_scale", _number), "width": ("width", _whole), "height": ("height", _whole),
}


def lines_from_args(args: list[Any] | dict[str, Any]) -> Lines:
    named = dict(zip(_POSITIONAL, args)) if isinstance(args, list) else dict(args)
    unknown = set(named) - set(_POSITIONAL)
    if unknown:
        raise InvalidRequest(f"prompts from file has no argument {sorted(unknown)[0]!r}")
    lines = Lines(**named)
    if lines.prompt_position not in ("start", "end"):
        raise InvalidRequest(f"prompt_position must be start or end, got {lines.prompt_position!r}")
    return lines


def parse_line(line: str) -> dict[str, Any]:
    """A line's request fields: A1111's `--option value` syntax when the line has `--`, else the line as the prompt
    (also when the options cannot be read, as in A1111)."""
    if "--" not in line:
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError:
        return {"prompt": line}
    fields: dict[str, Any] = {}
    pos = 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--") or pos + 1 >= len(words):
            return {"prompt": line}
        tag = word[2:]
        if tag in ("prompt", "negative_prompt"):  # a prompt runs on until the next option
            end = pos + 1
            while end < len(words) and not words[end].startswith("--"):
                end += 1
            fields[tag] = " ".join(words[pos + 1:end])
            pos = end
            continue
        if tag not in _OPTIONS:
            raise InvalidRequest(f"prompts from file: option --{tag} is not supported (line {line[:60]!r})")
        name, parse = _OPTIONS[tag]
        try:
            fields[name] = parse(words[pos + 1])
        except ValueError:
            raise InvalidRequest(f"prompts from file: --{tag} {words[pos + 1]!r} is not a number") from None
        pos += 2
    return fields


def _joined(own: str, line: str | None, at_start: bool) -> str | None:
    if not line or not own:
        return line
    return f"{line} {own}" if at_start else f"{own} {line}"


def requests(base: GenerateRequest, args: list[Any] | dict[str, Any]) -> list[GenerateRequest]:
    """One request per line, each checked before the first generation."""
    spec = lines_from_args(args)
    lines = [line.strip() for line in spec.text.splitlines() if line.strip()]
    if not lines:
        raise InvalidRequest("prompts from file: no prompts (the text has no non-empty line)")
    if len(lines) > MAX_LINES:
        raise InvalidRequest(f"prompts from file: {len(lines)} lines; at most {MAX_LINES}")
    seed = base.seed
    if (spec.iterate_seed or spec.same_seed) and seed == -1:
        seed = secrets.randbelow(MAX_SEED)
    planned = []
    for line in lines:
        fields = {"seed": seed, **parse_line(line)}
        for name in ("prompt", "negative_prompt"):
            if name in fields:
                fields[name] = _joined(getattr(base, name), fields[name], spec.prompt_position == "start")
        planned.append(rebuild(base, **fields))
        if spec.iterate_seed:
            seed = (seed + base.batch_size * base.n_iter) % (MAX_SEED + 1)
    return planned


def run(base: GenerateRequest, args: list[Any] | dict[str, Any], generate: Run, folder: Path | None) -> ScriptOutput:
    return run_each(requests(base, args), generate)
