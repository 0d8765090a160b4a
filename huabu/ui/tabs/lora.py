"""The LoRA tab: pick installed LoRAs and their weights (as `<lora:name:weight>` prompt tags, which the engine
reads), and train a new one from an uploaded folder or zip (huabu.training.lora.train_lora) with live loss, sample
previews and Cancel."""

import logging
import queue
import re
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import gradio as gr

from huabu.core.errors import InvalidRequest
from huabu.training.lora_data import IMAGE_SUFFIXES
from huabu.ui.fields import set_lora_tag
from huabu.ui.i18n import Key
from huabu.ui.jobs import readable_errors

log = logging.getLogger(__name__)

DATA_SUFFIXES = (*IMAGE_SUFFIXES, ".txt")
MAX_ARCHIVE_BYTES = 4 * 1024**3  # uncompressed; refuses zip bombs before anything is written
MAX_ARCHIVE_FILES = 20_000
UPDATE_SECONDS = 0.5  # how often the page is told about training progress
# A LoRA trained from the page goes into the LoRA folder under this name; paths are for the CLI.
PLAIN_NAME = re.compile(r"[\w\- ]+")


def collect_training_data(files: list[str] | None, archive: str | None, target: Path) -> Path:
    """Put uploaded training files into `target`: the images and caption sidecars of an uploaded folder (gradio
    keeps their names, not their sub-folders) and the contents of a zip (sub-folders kept, so kohya's `N_name`
    repeat folders work). Members that would land outside `target` are refused."""
    target.mkdir(parents=True, exist_ok=True)
    for name in files or []:
        path = Path(name)
        if path.suffix.lower() in DATA_SUFFIXES:
            shutil.copyfile(path, _free_name(target / path.name))
    if archive:
        _extract(Path(archive), target)
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in target.rglob("*")):
        raise InvalidRequest("the upload holds no training images (png, jpg, webp or bmp)")
    return target


def _free_name(path: Path) -> Path:
    """`path`, or `stem-1.ext`, `stem-2.ext`... when two uploaded files share a name (sidecars move along)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _extract(archive: Path, target: Path) -> None:
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise InvalidRequest(f"{archive.name} is not a zip archive") from None
    with bundle:
        members = [m for m in bundle.infolist() if not m.is_dir()]
        if len(members) > MAX_ARCHIVE_FILES or sum(m.file_size for m in members) > MAX_ARCHIVE_BYTES:
            raise InvalidRequest(f"{archive.name} is too large to train from (at most {MAX_ARCHIVE_FILES} files "
                                 f"and {MAX_ARCHIVE_BYTES // 1024**3} GiB unpacked)")
        root = target.resolve()
        for member in members:
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                raise InvalidRequest(f"{archive.name} holds an unsafe path {member.filename!r}; refusing it")
            if name.suffix.lower() not in DATA_SUFFIXES or any(p.startswith(".") for p in name.parts):
                continue
            destination = (root / Path(*name.parts)).resolve()
            if not destination.is_relative_to(root):
                raise InvalidRequest(f"{archive.name} holds an unsafe path {member.filename!r}; refusing it")
            destination.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(member) as source, open(destination, "xb") as sink:
                shutil.copyfileobj(source, sink)


def lora_choices(studio) -> list[tuple[str, str]]:
    from huabu.engine import lora_library as library

    return [(f"{info.name} [{info.short_hash}]", info.name) for info in library.list_loras(
        studio.settings, studio.engine.models.hashes)]


def lora_details(studio, name: str | None, language: str) -> str:
    from huabu.engine import lora_library as library

    texts = studio.texts[language]
    for info in library.list_loras(studio.settings, studio.engine.models.hashes):
        if info.name == name:
            words = ", ".join(info.trigger_words) or "-"
            return texts["lora.details"].format(base=info.base_model or "-", version=info.base_model_version or "-",
                                                rank=info.rank or "-", words=words, format=info.format)
    return ""


def build_lora(studio, labels, language, prefs, txt2img, img2img) -> dict[str, Any]:
    labels(gr.Markdown, value=Key("lora.use_heading"))
    with gr.Row():
        picked = labels(gr.Dropdown, choices=lora_choices(studio), value=None, label=Key("lora.installed"),
                        info=Key("lora.installed_info"), scale=3, elem_id="lora-installed")
        weight = labels(gr.Slider, minimum=-1, maximum=2, step=0.05, value=0.8, label=Key("lora.weight"), scale=2,
                        elem_id="lora-weight")
        refresh = labels(gr.Button, value=Key("lora.refresh"), scale=1, elem_id="lora-refresh")
    details = gr.Markdown(elem_id="lora-details")
    with gr.Row():
        to_txt2img = labels(gr.Button, value=Key("lora.add_txt2img"), elem_id="lora-add-txt2img")
        to_img2img = labels(gr.Button, value=Key("lora.add_img2img"), elem_id="lora-add-img2img")

    labels(gr.Markdown, value=Key("lora.train_heading"))
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                folder = labels(gr.File, file_count="directory", label=Key("lora.folder"), height=140,
                                elem_id="lora-folder")
                archive = labels(gr.File, file_types=[".zip"], label=Key("lora.zip"), height=140, elem_id="lora-zip")
            with gr.Row():
                name = labels(gr.Textbox, value="", label=Key("lora.name"), placeholder="my_style", elem_id="lora-name")
                trigger = labels(gr.Textbox, value="", label=Key("lora.trigger"), info=Key("lora.trigger_info"),
                                 elem_id="lora-trigger")
            with gr.Row():
                steps = labels(gr.Slider, minimum=1, maximum=5000, step=1, value=500, label=Key("lora.steps"),
                               elem_id="lora-steps")
                rank = labels(gr.Slider, minimum=1, maximum=128, step=1, value=8, label=Key("lora.rank"),
                              elem_id="lora-rank")
                alpha = labels(gr.Slider, minimum=1, maximum=128, step=1, value=8, label=Key("lora.alpha"),
                               elem_id="lora-alpha")
            with gr.Row():
                lr = labels(gr.Number, value=1e-4, minimum=0, label=Key("lora.lr"), elem_id="lora-lr")
                batch = labels(gr.Slider, minimum=1, maximum=16, step=1, value=1, label=Key("lora.batch"),
                               elem_id="lora-batch")
                resolution = labels(gr.Slider, minimum=0, maximum=2048, step=8, value=0, label=Key("lora.resolution"),
                                    info=Key("gen.size_info"), elem_id="lora-resolution")
            with gr.Row():
                sample_prompt = labels(gr.Textbox, value="", label=Key("lora.sample_prompt"),
                                       info=Key("lora.sample_info"), scale=3, elem_id="lora-sample-prompt")
                sample_every = labels(gr.Slider, minimum=0, maximum=1000, step=1, value=100,
                                      label=Key("lora.sample_every"), scale=2, elem_id="lora-sample-every")
                train_te = labels(gr.Checkbox, value=False, label=Key("lora.train_text_encoder"), scale=1,
                                  elem_id="lora-train-te")
        with gr.Column(scale=2):
            with gr.Row():
                train = labels(gr.Button, value=Key("lora.train"), variant="primary", scale=3, elem_id="lora-train")
                cancel = labels(gr.Button, value=Key("lora.cancel"), variant="stop", scale=1, elem_id="lora-cancel")
            loss = labels(gr.LinePlot, x="step", y="loss", label=Key("lora.loss"), height=220, elem_id="lora-loss")
            samples = labels(gr.Gallery, label=Key("lora.samples"), columns=4, height=200, interactive=False,
                             elem_id="lora-samples")
            status = gr.Markdown(elem_id="lora-status")

    def insert(prompt: str, name: str | None, weight: float, language: str) -> str:
        if not name:
            raise gr.Error(studio.texts[language]["lora.pick_first"], print_exception=False)
        with readable_errors(studio.texts[language]):
            return set_lora_tag(prompt or "", name, weight)

    def rescan(current: str | None):
        found = lora_choices(studio)
        return gr.update(choices=found, value=current if current in [v for _, v in found] else None)

    picked.change(lambda name, language: lora_details(studio, name, language), [picked, language], details,
                  queue=False, api_visibility="private")
    refresh.click(rescan, picked, picked, queue=False, api_name="lora_list")
    to_txt2img.click(insert, [txt2img.area.prompt, picked, weight, language], txt2img.area.prompt, queue=False,
                     api_visibility="private")
    to_img2img.click(insert, [img2img.area.prompt, picked, weight, language], img2img.area.prompt, queue=False,
                     api_visibility="private")

    def train_lora(folder, archive, name, trigger, steps, rank, alpha, lr, batch, resolution, sample_prompt,
                   sample_every, train_text_encoder, language, prefs, session: gr.Request, progress=gr.Progress()):
        from huabu.core.lora_request import TrainLoraRequest
        from huabu.training.lora import output_path

        texts = studio.texts[language]
        data = Path(tempfile.mkdtemp(prefix="huabu-lora-data-"))
        try:
            with readable_errors(texts):
                if not folder and not archive:
                    raise InvalidRequest(texts["lora.no_data"])
                if not PLAIN_NAME.fullmatch((name or "").strip()):
                    raise InvalidRequest(texts["lora.no_name"])
                collect_training_data(folder, archive, data)
                request = TrainLoraRequest.create(
                    data=str(data), out=(name or "").strip(), base=(prefs or {}).get("model") or None,
                    rank=int(rank), alpha=float(alpha), steps=int(steps), lr=float(lr), batch=int(batch),
                    resolution=int(resolution) or None, trigger=(trigger or "").strip() or None,
                    sample_every=int(sample_every), train_text_encoder=bool(train_text_encoder),
                    sample_prompt=[sample_prompt.strip()] if (sample_prompt or "").strip() else [],
                    sample_steps=20)
                if output_path(request, studio.settings).exists():  # never overwrite an installed LoRA
                    raise InvalidRequest(texts["lora.exists"].format(name=request.out))
                yield from _run_training(studio, request, texts, session, progress)
        finally:
            shutil.rmtree(data, ignore_errors=True)

    event = train.click(train_lora, [folder, archive, name, trigger, steps, rank, alpha, lr, batch, resolution,
                                     sample_prompt, sample_every, train_te, language, prefs],
                        [loss, samples, status], api_name="train_lora", concurrency_id="train", concurrency_limit=1)
    event.then(rescan, picked, picked, queue=False, api_visibility="private")
    cancel.click(studio.cancel_training, language, status, queue=False, api_name="train_lora_cancel")
    return {"installed": picked, "train": train}


def _run_training(studio, request, texts: dict[str, str], session, progress):
    """Run train_lora in a thread and yield (loss plot, samples, status) at most every UPDATE_SECONDS, and at the
    end; Cancel sets the run's event, which stops it after the current step with the LoRA so far written."""
    import pandas as pd

    from huabu.training.loop import TrainProgress
    from huabu.training.lora import train_lora

    updates: queue.Queue = queue.Queue()
    key = getattr(session, "session_hash", None) or "local"
    cancel = studio.training.start(key)

    def work() -> None:
        try:
            updates.put(("done", train_lora(request, studio.settings, updates.put, cancel)))
        except BaseException as err:  # handed to the page's thread, which turns it into one line
            updates.put(("error", err))

    thread = threading.Thread(target=work, name="huabu-lora-train", daemon=True)
    thread.start()
    steps, losses, pictures, last_yield = [], [], [], 0.0
    try:
        while True:
            item = updates.get()
            if isinstance(item, TrainProgress):
                steps.append(item.step)
                losses.append(item.loss)
                pictures.extend(studio.displayable(p) for p in item.samples)
                progress((item.step, item.steps), desc=texts["lora.progress"].format(
                    step=item.step, steps=item.steps, loss=item.loss), unit="steps")
                if item.samples or item.step == item.steps or time.monotonic() - last_yield > UPDATE_SECONDS:
                    last_yield = time.monotonic()
                    yield (pd.DataFrame({"step": steps, "loss": losses}), list(pictures),
                           texts["lora.progress"].format(step=item.step, steps=item.steps, loss=item.loss))
                continue
            kind, value = item
            if kind == "error":
                raise value
            key = "lora.cancelled" if cancel.is_set() else "lora.done"
            done = steps[-1] if steps else 0
            yield (pd.DataFrame({"step": steps, "loss": losses}), list(pictures),
                   texts[key].format(path=value, step=done, steps=request.steps))
            return
    finally:
        cancel.set()  # a page that went away stops the run too
        thread.join()
        studio.training.finish(key, cancel)
