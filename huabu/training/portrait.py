"""`huabu apps portrait` (FaceChain's flow): crop the subject out of a few photos, caption the crops, train a
subject LoRA on them with the LoRA recipe (huabu.training.lora, the one loop), then render the subject in
prompt-book styles through the engine and lay the renders out as a contact sheet.

Resumable: the crops are remade the same way each time, the LoRA run continues from its last checkpoint
(`resume`), a finished LoRA is not trained again, and styles already rendered are kept. Files: the crops and the
training run in `~/.huabu/portraits/NAME/`, the LoRA in the LoRA folder as `portrait-NAME`, the renders and the
contact sheet in the output folder's `portraits/NAME/` (or the folder given).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from huabu.core.apps import AppRequest
from huabu.core.atomic import atomic_path
from huabu.core.errors import InvalidRequest
from huabu.core.lora_request import TrainLoraRequest
from huabu.core.pnginfo import read_parameters, save_png_atomic
from huabu.core.requests import GenerateRequest
from huabu.engine.apps.common import AppTag
from huabu.engine.apps.portrait import caption, contact_sheet, crop_subject, pick_styles, subject_box
from huabu.engine.generate import Engine
from huabu.engine.images import load_image
from huabu.engine.prompts.book import PromptBook, apply_styles, load_book
from huabu.training.lora import train_lora
from huabu.training.lora_data import IMAGE_SUFFIXES

MAX_PHOTOS = 64
DONE = "done.json"  # written beside the training run once its LoRA is complete

# (stage, done, total): stage is "crop", "train" or "render".
PortraitProgress = Callable[[str, int, int], None]


@dataclass
class PortraitResult:
    sheet: Path
    renders: list[Path]
    lora: Path
    found: dict[str, int]  # how each photo's subject was found: face / blob / whole
    infotexts: list[str] = field(default_factory=list)
    interrupted: bool = False


def lora_name(name: str) -> str:
    return f"portrait-{name}"


def prepare_crops(photos: Path, folder: Path, name: str, size: int) -> dict[str, int]:
    """The subject cropped out of each photo, `size` square, with its caption sidecar, into `folder`."""
    if not photos.is_dir():
        raise InvalidRequest(f"photos folder not found: {photos}")
    files = sorted(p for p in photos.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidRequest(f"no photos in {photos} (png, jpg, webp or bmp)")
    if len(files) > MAX_PHOTOS:
        raise InvalidRequest(f"{len(files)} photos in {photos}; a portrait model takes at most {MAX_PHOTOS}")
    folder.mkdir(parents=True, exist_ok=True)
    found: dict[str, int] = {}
    for index, path in enumerate(files):
        image = load_image(str(path), "photo")
        box, how = subject_box(image)
        found[how] = found.get(how, 0) + 1
        crop = crop_subject(image, box, size)
        with atomic_path(folder / f"{index:03d}.png") as target:
            crop.save(target, format="PNG")
        with atomic_path(folder / f"{index:03d}.txt") as target:
            target.write_text(caption(name, crop), encoding="utf-8")
    return found


def run_portrait(request: AppRequest, engine: Engine, progress: PortraitProgress | None = None,
                 cancel: threading.Event | None = None, outdir: str | Path | None = None) -> PortraitResult:
    """The whole flow for one subject; `cancel` stops after the current training step or render (the LoRA so far
    is kept and `resume` continues)."""
    if request.app != "portrait":
        raise InvalidRequest(f"run_portrait runs the portrait app, not {request.app}")
    settings = engine.settings
    report = progress or (lambda stage, done, total: None)
    work = settings.home / "portraits" / request.name
    out = Path(outdir) if outdir is not None else settings.outputs_dir / "portraits" / request.name
    book = engine.prompt_book(request.model)
    styles = pick_styles(list(book.styles), request.styles, request.count, own_styles(engine, request.model))
    model = engine.models.load(request.model)
    size = model.default_size

    report("crop", 0, 1)
    found = prepare_crops(Path(request.photos).expanduser(), work / "data", request.name, size)
    report("crop", 1, 1)

    lora = settings.loras_dir / f"{lora_name(request.name)}.safetensors"
    run_folder = work / "train"
    state = {"steps": request.train_steps, "rank": request.rank, "model": model.name}
    done_file = run_folder / DONE
    if not (request.resume and lora.is_file() and done_file.is_file()
            and json.loads(done_file.read_text()) == state):
        train = TrainLoraRequest.create(
            data=str(work / "data"), out=str(lora), base=request.model, rank=request.rank, alpha=request.rank,
            steps=request.train_steps, lr=1e-3, batch=min(4, sum(found.values())), min_snr_gamma=5.0,
            checkpoint_every=max(1, request.train_steps // 4), resume=request.resume, overwrite=True,
            seed=0, workdir=str(run_folder))
        train_lora(train, settings, lambda p: report("train", p.step, p.steps), cancel)
        if cancel is not None and cancel.is_set():
            return PortraitResult(out / "contact-sheet.png", [], lora, found, interrupted=True)
        done_file.write_text(json.dumps(state))

    seed = _portrait_seed(work, request)
    renders, infotexts = [], []
    for index, style in enumerate(styles):
        report("render", index, len(styles))
        target = out / f"{index:02d}-{style}.png"
        if request.resume and target.is_file():
            renders.append(target)
            infotexts.append(read_parameters(target) or "")
            continue
        if cancel is not None and cancel.is_set():
            return PortraitResult(out / "contact-sheet.png", renders, lora, found, infotexts, interrupted=True)
        prompt, negative, styled = render_prompt(request, style, book)
        generate = GenerateRequest.create(
            prompt=prompt, negative_prompt=negative, styles=styled, steps=request.steps, cfg_scale=request.cfg_scale,
            sampler=request.sampler, schedule_type=request.schedule_type, seed=seed, model=request.model,
            width=request.width, height=request.height)
        tag = AppTag({"App": "portrait", "App style": style})
        result = engine.generate(generate, extensions=[tag])
        renders.append(save_png_atomic(result.images[0], target, result.infotexts[0]))
        infotexts.append(result.infotexts[0])
    report("render", len(styles), len(styles))
    sheet = contact_sheet([Image.open(path).convert("RGB") for path in renders], styles)
    sheet_path = save_png_atomic(sheet, out / "contact-sheet.png", infotexts[0] if infotexts else "")
    return PortraitResult(sheet_path, renders, lora, found, infotexts)


def render_prompt(request: AppRequest, style: str, book: PromptBook) -> tuple[str, str, list[str]]:
    """(prompt, negative prompt, styles for the request) of one render: the subject's LoRA and trigger word in the
    style, from the first step, or after `style_start` of the steps as A1111 prompt editing."""
    subject = f"a {request.name} {request.prompt}".strip()
    lora = f"<lora:{lora_name(request.name)}:1>"
    if not request.style_start:
        return f"{lora} {subject}", request.negative_prompt, [style]
    styled, negative = apply_styles(subject, request.negative_prompt, [style], book)
    return f"{lora} [{subject}:{styled}:{request.style_start:g}]", negative, []


def own_styles(engine: Engine, model: str | None) -> list[str]:
    """The styles of the model's own prompt book, in order (none when it carries none): a portrait takes these
    when no styles are named, since a small model loses its subject under words it was never trained on."""
    folder = engine.models.book_dir(model)
    return list(load_book([folder], shipped=False).styles) if folder else []


def _portrait_seed(work: Path, request: AppRequest) -> int:
    """The seed of every render: the request's, else one picked once per subject (a resumed run keeps it)."""
    if request.seed != -1:
        return request.seed
    path = work / "seed.json"
    if path.is_file():
        return int(json.loads(path.read_text())["seed"])
    seed = secrets.randbelow(2**32 - 1)
    path.write_text(json.dumps({"seed": seed}))
    return seed
