"""The studio: a gradio Blocks app over the same Engine, Gallery and request objects as the CLI and the API.

`Studio(settings, language).launch(host, port)` serves it; `Studio.build()` returns the Blocks for tests. Every
generation runs in gradio's queue under one concurrency id, one at a time (the engine holds one model lock), while
page loads and the cheap unqueued events (prompt book, language, gallery) keep answering.
"""

import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from huabu.core.errors import HuabuError, ModelNotFound
from huabu.core.requests import GenerateRequest
from huabu.core.settings import Settings
from huabu.engine.generate import Engine, GenerationResult
from huabu.engine.models import ModelManager, builtin_has_weights
from huabu.engine.prompts.book import PromptBook
from huabu.ui.fields import GENERATION_FIELDS, fields_from_infotext
from huabu.ui.i18n import LANGUAGES, Key, check_language, load_texts
from huabu.ui.jobs import Interrupts, progress_reporter
from huabu.ui.labels import Labels
from huabu.ui.tabs.advanced import advanced_values

log = logging.getLogger(__name__)

LANGUAGE_CHOICES = [("中文", "zh"), ("English", "en")]
# Compact prompt-book chips; the rest is gradio's default theme.
CSS = """
.huabu-chips label { padding: 2px 8px !important; font-size: 0.9em; }
#language { max-width: 220px; margin-left: auto; }
"""


class Studio:
    """The studio's state: settings, the engine (and its model manager and gallery), the prompt book and the
    interrupt flags of running jobs. Nothing module-level; tests build one per app."""

    def __init__(self, settings: Settings, language: str = "zh", engine: Engine | None = None,
                 book: PromptBook | None = None, checkpoint_config: str | None = None) -> None:
        self.settings = settings
        self.checkpoint_config = checkpoint_config  # for the default model, when it is a single file
        self.language = check_language(language)
        self.engine = engine or Engine(settings, ModelManager(settings))
        self.gallery = self.engine.gallery
        self.book = book or self.engine.prompt_book(settings.default_model)  # the default model's own styles too
        self.texts = {lang: load_texts(lang) for lang in LANGUAGES}
        self.interrupts = Interrupts()  # running generations, by browser session
        self.training = Interrupts()  # running LoRA trainings (their cancel events), by browser session
        self._reads_chinese: dict[str, bool] = {}  # by model dropdown value: the prompt book's language
        self.labels: Labels | None = None
        self._scratch: Path | None = None

    # --- what the tabs call ------------------------------------------------------------------------------------

    @property
    def default_sampler(self) -> str:
        return GenerateRequest.model_fields["sampler"].default

    @property
    def default_model(self) -> str:
        """The settings' default model as the model dropdown names it."""
        try:
            ref = self.engine.models.resolve(None)
        except ModelNotFound:
            return self.settings.default_model
        return ref.spec if ref.kind == "builtin" else ref.location

    def reads_chinese(self, model: str) -> bool:
        """Whether the prompt book puts Chinese text in prompts for `model`; a model that cannot be read: no."""
        if model not in self._reads_chinese:
            try:
                self._reads_chinese[model] = self.engine.models.reads_chinese(model)
            except (HuabuError, OSError, ValueError):
                self._reads_chinese[model] = False
        return self._reads_chinese[model]

    def set_memory(self, **switches: Any) -> None:
        """New memory switches (offload, vae_tiling, attention_slicing, dtype) for the whole studio. They are set
        once per loaded pipeline, so the engine is replaced and the next generation loads its model with them; a
        generation still running finishes on the old one."""
        settings = replace(self.settings, **switches)
        if settings != self.settings:
            self.settings = settings
            self.engine = Engine(settings, ModelManager(settings, self.engine.models.hashes), self.gallery)

    def model_choices(self, language: str) -> list[tuple[str, str]]:
        """(label, value) pairs for the model dropdown: the built-in model and the models folder."""
        texts = self.texts[language]
        choices = []
        for ref in self.engine.models.list_models():
            if ref.kind == "builtin":
                label = ref.name if builtin_has_weights() else texts["settings.no_weights"].format(name=ref.name)
                choices.append((label, ref.spec))
            else:
                choices.append((f"{ref.name} ({ref.kind})", ref.location))
        default = self.default_model
        if default not in [value for _, value in choices]:
            choices.append((default, default))
        return choices

    def generate(self, request: GenerateRequest, language: str, prefs: dict | None, session: gr.Request | None,
                 progress) -> GenerationResult:
        """Run a request through the engine with progress and this session's interrupt flag; images are saved and
        indexed, and carry their infotext (so a downloaded PNG keeps its parameters)."""
        outdir = (prefs or {}).get("outputs_dir") or self.settings.outputs_dir
        key = _session_key(session)
        event = self.interrupts.start(key)
        try:
            result = self.engine.generate(request, progress=progress_reporter(progress, self.texts[language][
                "progress.images"]), interrupt=event.is_set, save=True, outdir=outdir)
        finally:
            self.interrupts.finish(key, event)
        for image, text in zip(result.images, result.infotexts):
            image.info["parameters"] = text
        return result

    def generate_video(self, request, language: str, prefs: dict | None, session: gr.Request | None, progress):
        outdir = (prefs or {}).get("outputs_dir") or self.settings.outputs_dir
        key = _session_key(session)
        event = self.interrupts.start(key)
        try:
            return self.engine.generate_video(request, progress=progress_reporter(progress, self.texts[language][
                "progress.frames"]), interrupt=event.is_set, save=True, output=outdir)
        finally:
            self.interrupts.finish(key, event)

    def run_app(self, request, language: str, prefs: dict | None, session: gr.Request | None,
                progress) -> GenerationResult:
        """An app (replace, try-on, instant-id) through huabu.engine.apps.run_app, with progress and this session's
        interrupt flag; the result is saved and indexed like any generation."""
        from huabu.engine.apps import run_app

        outdir = (prefs or {}).get("outputs_dir") or self.settings.outputs_dir
        key = _session_key(session)
        event = self.interrupts.start(key)
        try:
            return run_app(self.engine, request, progress=progress_reporter(progress, self.texts[language][
                "progress.images"]), interrupt=event.is_set, save=True, outdir=outdir)
        finally:
            self.interrupts.finish(key, event)

    def run_portrait(self, request, language: str, prefs: dict | None, session: gr.Request | None, progress):
        """The portrait app (huabu.training.portrait): crop, train, render; Interrupt stops it after the current
        step, and `resume` continues."""
        from huabu.training.portrait import run_portrait

        outputs = Path((prefs or {}).get("outputs_dir") or self.settings.outputs_dir)
        texts = self.texts[language]
        key = _session_key(session)
        event = self.interrupts.start(key)

        def report(stage: str, done: int, total: int) -> None:
            progress((done, total), desc=texts[f"apps.stage_{stage}"], unit="steps")

        try:
            return run_portrait(request, self.engine, report, event, outputs / "portraits" / request.name)
        finally:
            self.interrupts.finish(key, event)

    def interrupt(self, language: str, session: gr.Request) -> str:
        """The Interrupt button: stop this browser session's running job after its current step."""
        stopped = self.interrupts.interrupt(_session_key(session))
        return self.texts[language]["status.interrupting" if stopped else "status.nothing_running"]

    def cancel_training(self, language: str, session: gr.Request) -> str:
        """The LoRA tab's Cancel: stop this session's training after its current step (the LoRA so far is kept)."""
        stopped = self.training.interrupt(_session_key(session))
        return self.texts[language]["lora.cancelling" if stopped else "lora.nothing_training"]

    def displayable(self, path: str | os.PathLike) -> Any:
        """A file the page can show: its path when gradio may serve it (outputs folder, temp, working folder),
        otherwise an image loaded into memory, or a copy in a scratch folder for videos."""
        path = Path(path).resolve()
        roots = [Path(self.settings.outputs_dir).resolve(), Path(tempfile.gettempdir()).resolve(), Path.cwd()]
        if any(path.is_relative_to(root) for root in roots):
            return str(path)
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
            with Image.open(path) as image:
                image.load()
                return image
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="huabu-studio-"))
        copy = self._scratch / path.name
        shutil.copyfile(path, copy)
        return str(copy)

    # --- the page ----------------------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        """The Blocks app (not launched)."""
        from huabu.ui.tabs.apps import build_apps
        from huabu.ui.tabs.controlnet import build_controlnet
        from huabu.ui.tabs.extras import build_extras
        from huabu.ui.tabs.gallery import build_gallery
        from huabu.ui.tabs.generate import build_img2img, build_inpaint, build_txt2img
        from huabu.ui.tabs.lora import build_lora
        from huabu.ui.tabs.settings import build_settings
        from huabu.ui.tabs.tools import build_tools
        from huabu.ui.tabs.video import build_video

        labels = self.labels = Labels(self.language)
        with gr.Blocks(title="huabu 画布") as demo:
            with gr.Row(equal_height=True):
                labels(gr.Markdown, value=Key("app.heading"), elem_id="heading")
                language = gr.Radio(LANGUAGE_CHOICES, value=self.language, show_label=False, container=False,
                                    elem_id="language")
            prefs = gr.State({"model": self.default_model, "checkpoint_config": self.checkpoint_config,
                              "outputs_dir": str(self.settings.outputs_dir)})
            with gr.Tabs(selected="txt2img", elem_id="tabs") as tabs:
                with labels(gr.Tab, label=Key("tab.txt2img"), id="txt2img", elem_id="tab-txt2img"):
                    txt2img = build_txt2img(self, labels, language, prefs)
                with labels(gr.Tab, label=Key("tab.img2img"), id="img2img", elem_id="tab-img2img"):
                    img2img = build_img2img(self, labels, language, prefs)
                with labels(gr.Tab, label=Key("tab.inpaint"), id="inpaint", elem_id="tab-inpaint"):
                    inpaint = build_inpaint(self, labels, language, prefs)
                with labels(gr.Tab, label=Key("tab.controlnet"), id="controlnet", elem_id="tab-controlnet"):
                    controlnet = build_controlnet(self, labels, language, prefs)
                with labels(gr.Tab, label=Key("tab.lora"), id="lora", elem_id="tab-lora"):
                    build_lora(self, labels, language, prefs, txt2img, img2img)
                with labels(gr.Tab, label=Key("tab.video"), id="video", elem_id="tab-video"):
                    video = build_video(self, labels, language, prefs)
                with labels(gr.Tab, label=Key("tab.apps"), id="apps", elem_id="tab-apps"):
                    build_apps(self, labels, language, prefs)
                with labels(gr.Tab, label=Key("tab.extras"), id="extras", elem_id="tab-extras"):
                    build_extras(self, labels, language, prefs)
                with labels(gr.Tab, label=Key("tab.tools"), id="tools", elem_id="tab-tools"):
                    build_tools(self, labels, language, prefs)
                with labels(gr.Tab, label=Key("tab.gallery"), id="gallery", elem_id="tab-gallery"):
                    gallery = build_gallery(self, labels, language)
                with labels(gr.Tab, label=Key("tab.settings"), id="settings", elem_id="tab-settings"):
                    settings = build_settings(self, labels, language, prefs)

            forms = [txt2img, img2img, inpaint, controlnet]
            for event in [form.event for form in forms] + [video["event"]]:
                event.success(gallery.listing, gallery.listing_inputs, gallery.listing_outputs, queue=False,
                              api_visibility="private")
            demo.load(gallery.listing, gallery.listing_inputs, gallery.listing_outputs, queue=False,
                      api_visibility="private")
            _wire_send_to(gallery.send_txt2img, gallery, txt2img, tabs, with_image=False)
            _wire_send_to(gallery.send_img2img, gallery, img2img, tabs, with_image=True)
            samplers = [form.fields["sampler"] for form in forms] + [video["fields"]["sampler"]]
            settings.sampler.change(lambda name: [name] * len(samplers), settings.sampler, samplers, queue=False,
                                    api_visibility="private")
            language.change(labels.updates, language, labels.components, queue=False, api_name="set_language")
        return demo

    def launch(self, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False,
               auth: list[tuple[str, str]] | None = None):
        """Serve the studio; `block=False` returns at once (tests), leaving the server running in a thread. With
        `auth` (user, password) pairs, gradio's login guards the page, its API and its files. On a loopback bind only
        loopback Host names are answered (DNS rebinding; gradio itself answers any Host)."""
        from starlette.middleware import Middleware

        from huabu.core.atomic import sweep_temporaries
        from huabu.core.hosts import LoopbackHostGuard

        sweep_temporaries(self.settings.outputs_dir)
        demo = self.build()
        demo.queue(max_size=64)
        demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet, auth=auth,
                    allowed_paths=[str(self.settings.outputs_dir)], css=CSS, footer_links=["api"],
                    app_kwargs={"middleware": [Middleware(LoopbackHostGuard, bind_host=host)]})
        return demo


def _choice(component, value: Any) -> Any:
    """`value` for a dropdown that offers it, else the dropdown's default (a VAE or upscaler this studio lacks)."""
    if isinstance(component, gr.Dropdown) and value not in [offered for _, offered in component.choices]:
        return component.value  # gradio keeps a dropdown's choices as (label, value) pairs
    return value


def _session_key(session: gr.Request | None) -> str:
    return getattr(session, "session_hash", None) or "local"


def _wire_send_to(button, gallery, target, tabs, with_image: bool) -> None:
    """Fill `target`'s fields from the parameters shown in the gallery (an A1111 infotext) and switch to it. The
    advanced options the text does not state (no variation seed, no hires fix, the model's own shift) go back to
    their defaults, so the tab makes the same image again."""
    names = list(GENERATION_FIELDS)
    advanced = target.advanced or {}
    outputs = [target.fields[name] for name in names] + list(advanced.values()) + [target.area.styles]
    if with_image:
        outputs += [target.fields["init_image"], target.fields["denoising_strength"]]

    def send(text: str, source: str | None):
        if not (text or "").strip():
            return [gr.update()] * len(outputs) + [gr.update()]
        values = fields_from_infotext(text)
        updates = [gr.update(value=values[name]) if name in values else gr.update() for name in names]
        stated = advanced_values(list(advanced), values)
        updates += [gr.update(value=_choice(component, stated[name]) if name in stated else component.value)
                    for name, component in advanced.items()]
        updates.append(gr.update(value=[]))  # the prompt already holds the styles it was made with
        if with_image:
            updates.append(gr.update(value=source) if source else gr.update())
            strength = values.get("denoising_strength")
            updates.append(gr.update(value=strength) if strength is not None else gr.update())
        return [*updates, gr.Tabs(selected=target.mode)]

    button.click(send, [gallery.parameters, gallery.source], [*outputs, tabs], queue=False,
                 api_visibility="private")
