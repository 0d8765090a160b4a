"""The Apps tab (应用): the course's applications, one sub-tab each: ReplaceAnything (with a preview of the kept
part before anything is generated), try-on, InstantID and portraits (FaceChain), with progress and Interrupt.
Each builds an AppRequest (huabu.core.apps) and runs it through the studio's engine."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from huabu.core.apps import AppRequest
from huabu.ui.i18n import Key
from huabu.ui.jobs import readable_errors

KEEP = (("apps.keep_subject", "subject"), ("apps.keep_background", "background"))


def _common(labels, prefix: str, prompt_key: str = "apps.prompt") -> dict[str, Any]:
    """Prompt, negative prompt, steps, CFG and seed of one app."""
    fields = {"prompt": labels(gr.Textbox, label=Key(prompt_key), lines=2, elem_id=f"{prefix}-prompt"),
              "negative": labels(gr.Textbox, label=Key("apps.negative"), lines=1, elem_id=f"{prefix}-negative")}
    with gr.Row():
        fields["steps"] = labels(gr.Slider, minimum=1, maximum=150, step=1, value=20, label=Key("gen.steps"),
                                 elem_id=f"{prefix}-steps")
        fields["cfg"] = labels(gr.Slider, minimum=0, maximum=30, step=0.5, value=7.0, label=Key("gen.cfg"),
                               elem_id=f"{prefix}-cfg")
        fields["seed"] = labels(gr.Number, value=-1, precision=0, label=Key("gen.seed"), elem_id=f"{prefix}-seed")
    return fields


def _outputs(labels, prefix: str) -> tuple[Any, Any, Any, Any, Any]:
    """Run and Interrupt buttons, the result, its parameters and a status line."""
    with gr.Row():
        run = labels(gr.Button, value=Key("apps.run"), variant="primary", scale=3, elem_id=f"{prefix}-run")
        stop = labels(gr.Button, value=Key("gen.interrupt"), variant="stop", scale=1, elem_id=f"{prefix}-interrupt")
    output = labels(gr.Image, label=Key("apps.output"), type="filepath", format="png", interactive=False,
                    elem_id=f"{prefix}-output")
    parameters = labels(gr.Textbox, label=Key("gen.parameters"), lines=3, interactive=False,
                        elem_id=f"{prefix}-parameters")
    return run, stop, output, parameters, gr.Markdown(elem_id=f"{prefix}-status")


def _text(value: Any) -> str | None:
    return str(value).strip() or None if value else None


def app_request(app: str, prompt: str, negative: str, steps: float, cfg: float, seed: float, prefs: dict | None,
                **fields: Any) -> AppRequest:
    """The AppRequest of one sub-tab's fields (empty fields left out)."""
    data = {name: value for name, value in fields.items() if value not in (None, "")}
    return AppRequest.create(app=app, prompt=prompt or "", negative_prompt=negative or "", steps=int(steps),
                             cfg_scale=float(cfg), seed=int(seed if seed is not None else -1),
                             model=(prefs or {}).get("model") or None, **data)


def finish(studio, result, texts: dict[str, str]) -> tuple[Any, str, str]:
    """(the saved image as the page shows it, its infotext, the status line) of an app run."""
    key = "status.interrupted" if result.interrupted else "status.done"
    shown = studio.displayable(result.paths[0]) if result.paths else (result.images[0] if result.images else None)
    infotext = result.infotexts[0] if result.infotexts else ""
    return shown, infotext, texts[key].format(count=len(result.images), seed=result.seeds[0] if result.seeds else "")


def kept_preview(request: AppRequest, studio) -> Image.Image:
    """The replace app's kept part over a dimmed input: what will stay pixel for pixel."""
    from huabu.engine.apps import sam_folder
    from huabu.engine.apps.replace import replace_plan
    from huabu.engine.images import load_image

    _, _, kept = replace_plan(request, sam_folder(studio.engine, request.sam))
    image = np.asarray(load_image(request.image, "image").convert("RGB"))[:kept.shape[0], :kept.shape[1]]
    shown = np.where(kept[..., None], image, (image * 0.3).astype(np.uint8))
    return Image.fromarray(shown.astype(np.uint8))


def build_apps(studio, labels, language, prefs) -> dict[str, Any]:
    buttons = {}
    with gr.Tabs(elem_id="apps-tabs"):
        with labels(gr.Tab, label=Key("apps.replace"), id="apps-replace", elem_id="apps-tab-replace"):
            buttons["replace"] = _build_replace(studio, labels, language, prefs)
        with labels(gr.Tab, label=Key("apps.try_on"), id="apps-try-on", elem_id="apps-tab-try-on"):
            buttons["try-on"] = _build_try_on(studio, labels, language, prefs)
        with labels(gr.Tab, label=Key("apps.instant_id"), id="apps-instant-id", elem_id="apps-tab-instant-id"):
            buttons["instant-id"] = _build_instant_id(studio, labels, language, prefs)
        with labels(gr.Tab, label=Key("apps.portrait"), id="apps-portrait", elem_id="apps-tab-portrait"):
            buttons["portrait"] = _build_portrait(studio, labels, language, prefs)
    return buttons


def _build_replace(studio, labels, language, prefs):
    with gr.Row():
        with gr.Column():
            image = labels(gr.Image, label=Key("apps.image"), type="filepath", height=260, elem_id="replace-image")
            with gr.Row():
                point = labels(gr.Textbox, label=Key("apps.point"), placeholder="X,Y", elem_id="replace-point")
                box = labels(gr.Textbox, label=Key("apps.box"), placeholder="X0,Y0,X1,Y1", elem_id="replace-box")
            mask = labels(gr.Image, label=Key("apps.subject_mask"), type="filepath", height=160,
                          elem_id="replace-mask")
            with gr.Row():
                keep = labels(gr.Radio, choices=[(Key(k), v) for k, v in KEEP], value="subject",
                              label=Key("apps.keep"), elem_id="replace-keep")
                sam = labels(gr.Textbox, label=Key("apps.sam"), elem_id="replace-sam")
            fields = _common(labels, "replace")
            preview_button = labels(gr.Button, value=Key("apps.preview"), elem_id="replace-preview-button")
        with gr.Column():
            preview = labels(gr.Image, label=Key("apps.preview_output"), type="pil", interactive=False, height=160,
                             elem_id="replace-preview")
            run, stop, output, parameters, status = _outputs(labels, "replace")

    def request(image, point, box, mask, keep, sam, prompt, negative, steps, cfg, seed, prefs):
        return app_request("replace", prompt, negative, steps, cfg, seed, prefs, image=_text(image),
                           point=_text(point), box=_text(box), mask=_text(mask), keep=keep, sam=_text(sam))

    inputs = [image, point, box, mask, keep, sam, *fields.values(), prefs]

    def show_kept(*values):
        *values, language = values
        with readable_errors(studio.texts[language]):
            return kept_preview(request(*values), studio)

    def run_replace(*values, session: gr.Request, progress=gr.Progress()):
        *values, language = values
        texts = studio.texts[language]
        with readable_errors(texts):
            result = studio.run_app(request(*values), language, values[-1], session, progress)
        return finish(studio, result, texts)

    preview_button.click(show_kept, [*inputs, language], preview, api_name="apps_replace_preview")
    run.click(run_replace, [*inputs, language], [output, parameters, status], api_name="apps_replace",
              concurrency_id="engine", concurrency_limit=1)
    stop.click(studio.interrupt, language, status, queue=False, api_visibility="private")
    return run


def _build_try_on(studio, labels, language, prefs):
    with gr.Row():
        with gr.Column():
            with gr.Row():
                reference = labels(gr.Image, label=Key("apps.item"), type="filepath", height=220,
                                   elem_id="try-on-reference")
                image = labels(gr.Image, label=Key("apps.target"), type="filepath", height=220,
                               elem_id="try-on-image")
            with gr.Row():
                box = labels(gr.Textbox, label=Key("apps.region_box"), placeholder="X0,Y0,X1,Y1",
                             elem_id="try-on-box")
                controlnet = labels(gr.Textbox, label=Key("apps.controlnet"), elem_id="try-on-controlnet")
            mask = labels(gr.Image, label=Key("apps.region_mask"), type="filepath", height=160, elem_id="try-on-mask")
            weight = labels(gr.Slider, minimum=0, maximum=2, step=0.05, value=0.8, label=Key("apps.ip_weight"),
                            elem_id="try-on-ip-weight")
            fields = _common(labels, "try-on")
        with gr.Column():
            run, stop, output, parameters, status = _outputs(labels, "try-on")

    def run_try_on(reference, image, box, controlnet, mask, weight, prompt, negative, steps, cfg, seed, prefs,
                   language, session: gr.Request, progress=gr.Progress()):
        texts = studio.texts[language]
        with readable_errors(texts):
            request = app_request("try-on", prompt, negative, steps, cfg, seed, prefs, reference=_text(reference),
                                  image=_text(image), box=_text(box), mask=_text(mask),
                                  controlnet=_text(controlnet), ip_adapter_weight=float(weight))
            result = studio.run_app(request, language, prefs, session, progress)
        return finish(studio, result, texts)

    run.click(run_try_on, [reference, image, box, controlnet, mask, weight, *fields.values(), prefs, language],
              [output, parameters, status], api_name="apps_try_on", concurrency_id="engine", concurrency_limit=1)
    stop.click(studio.interrupt, language, status, queue=False, api_visibility="private")
    return run


def _build_instant_id(studio, labels, language, prefs):
    with gr.Row():
        with gr.Column():
            reference = labels(gr.Image, label=Key("apps.reference"), type="filepath", height=220,
                               elem_id="instant-id-reference")
            with gr.Row():
                controlnet = labels(gr.Textbox, label=Key("apps.layout_controlnet"), elem_id="instant-id-controlnet")
                weight = labels(gr.Slider, minimum=0, maximum=2, step=0.05, value=0.8, label=Key("apps.ip_weight"),
                                elem_id="instant-id-ip-weight")
            fields = _common(labels, "instant-id")
        with gr.Column():
            run, stop, output, parameters, status = _outputs(labels, "instant-id")

    def run_instant(reference, controlnet, weight, prompt, negative, steps, cfg, seed, prefs, language,
                    session: gr.Request, progress=gr.Progress()):
        texts = studio.texts[language]
        with readable_errors(texts):
            request = app_request("instant-id", prompt, negative, steps, cfg, seed, prefs,
                                  reference=_text(reference), controlnet=_text(controlnet),
                                  ip_adapter_weight=float(weight))
            result = studio.run_app(request, language, prefs, session, progress)
        return finish(studio, result, texts)

    run.click(run_instant, [reference, controlnet, weight, *fields.values(), prefs, language],
              [output, parameters, status], api_name="apps_instant_id", concurrency_id="engine", concurrency_limit=1)
    stop.click(studio.interrupt, language, status, queue=False, api_visibility="private")
    return run


def _build_portrait(studio, labels, language, prefs):
    styles = [(f"{style.name_zh} / {style.name_en}", name) for name, style in studio.book.styles.items()]
    with gr.Row():
        with gr.Column():
            with gr.Row():
                photos = labels(gr.Textbox, label=Key("apps.photos"), elem_id="portrait-photos")
                name = labels(gr.Textbox, label=Key("apps.name"), elem_id="portrait-name")
            chosen = labels(gr.Dropdown, choices=styles, multiselect=True, label=Key("apps.styles"),
                            elem_id="portrait-styles")
            with gr.Row():
                count = labels(gr.Slider, minimum=1, maximum=16, step=1, value=4, label=Key("apps.count"),
                               elem_id="portrait-count")
                train_steps = labels(gr.Slider, minimum=10, maximum=4000, step=10, value=400,
                                     label=Key("apps.train_steps"), elem_id="portrait-train-steps")
                resume = labels(gr.Checkbox, value=False, label=Key("apps.resume"), elem_id="portrait-resume")
            fields = _common(labels, "portrait", "apps.portrait_prompt")
        with gr.Column():
            run, stop, output, parameters, status = _outputs(labels, "portrait")

    def run_portrait(photos, name, chosen, count, train_steps, resume, prompt, negative, steps, cfg, seed, prefs,
                     language, session: gr.Request, progress=gr.Progress()):
        texts = studio.texts[language]
        with readable_errors(texts):
            request = app_request("portrait", prompt, negative, steps, cfg, seed, prefs, photos=_text(photos),
                                  name=_text(name), styles=list(chosen or []), count=int(count),
                                  train_steps=int(train_steps), resume=bool(resume))
            result = studio.run_portrait(request, language, prefs, session, progress)
        if result.interrupted:
            return None, "", texts["apps.portrait_interrupted"]
        return (studio.displayable(result.sheet), result.infotexts[0] if result.infotexts else "",
                texts["apps.portrait_done"].format(count=len(result.renders), path=result.sheet))

    run.click(run_portrait, [photos, name, chosen, count, train_steps, resume, *fields.values(), prefs, language],
              [output, parameters, status], api_name="apps_portrait", concurrency_id="engine", concurrency_limit=1)
    stop.click(studio.interrupt, language, status, queue=False, api_visibility="private")
    return run
