"""The ControlNet tab: upload a reference, pick a preprocessor, preview its control map, then generate with a
ControlNet unit (the request's `controlnets`, run by the engine like any other request).

The glyph module takes words instead of a reference: typed (else the prompt's quoted words), each in a box typed as
X0,Y0,X1,Y1 or drawn on a canvas (else laid out automatically); they travel as the request's `text_boxes`, as
`huabu generate --control glyph --text-box ...` sends them, so the PNG records `Text boxes`."""

from typing import Any

import gradio as gr
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.core.text_boxes import GLYPH
from huabu.engine.control.glyph import glyph_map
from huabu.engine.control.registry import get_preprocessor, preprocess
from huabu.engine.controlnets import ANNOTATORS, NEEDS_WEIGHTS, annotator_weights, check_units, with_words
from huabu.engine.images import load_image
from huabu.ui.fields import drawn_boxes, size_or_default, text_boxes_field
from huabu.ui.i18n import Key
from huabu.ui.jobs import readable_errors
from huabu.ui.tabs.generate import (
    GenerationForm,
    common_inputs,
    common_request_fields,
    generation_outputs,
    layout,
    wire_generation,
)

# Preprocessors that work from an uploaded picture alone (depth and pose also take maps or keypoint files, which
# the CLI offers); "none" passes a ready control map through.
MODULES = ("canny", "softedge", "softedge_gradient", "softedge_hed", "depth", "pose", "color", "none", GLYPH)


def preview_control_map(studio, reference: str | None, module: str, low: float, high: float, resolution: int):
    """The control map the unit will use: the preprocessor run on the reference with the tab's options."""
    takes = get_preprocessor(module).options
    image = load_image(reference, "reference image") if reference else None
    options: dict[str, Any] = {"resolution": int(resolution)} if "resolution" in takes else {}
    if "low" in takes:
        options.update(low=float(low), high=float(high))
    annotators = studio.settings.controlnet_dir / ANNOTATORS
    weights = annotator_weights(module, annotators, studio.settings.allow_unsafe_pickle)
    if weights is not None:
        options["weights"] = weights
    elif module in NEEDS_WEIGHTS:  # the tab cannot take a depth map or keypoints
        raise InvalidRequest(f"{NEEDS_WEIGHTS[module].format(annotators)}, or upload a ready map with module none")
    if "allow_unsafe_pickle" in takes:
        options["allow_unsafe_pickle"] = studio.settings.allow_unsafe_pickle
    return preprocess(module, image, **options)


def reference_request(fields: dict[str, Any], reference: str, module: str, model: str, low: float, high: float,
                      resolution: int, weight: float, start: float, end: float) -> GenerateRequest:
    """A txt2img request with one unit on the uploaded reference (canny with the tab's thresholds)."""
    thresholds = dict(threshold_a=float(low), threshold_b=float(high)) if module == "canny" else {}
    unit = dict(module=module, model=model or "", image=str(reference), weight=float(weight),
                processor_res=int(resolution), guidance_start=float(start), guidance_end=float(end), **thresholds)
    return GenerateRequest.create(mode="txt2img", controlnets=[unit], **fields)


def glyph_request(fields: dict[str, Any], words: str | None, boxes: str | None, canvas: dict[str, Any] | None,
                  model: str = "", weight: float = 1.0, start: float = 0.0, end: float = 1.0) -> GenerateRequest:
    """A txt2img request with one glyph unit and the tab's words and boxes as `text_boxes`: the unit and list
    that `huabu generate --control glyph[:WEIGHT:START:END] --text-box ...` sends."""
    # pixel perfect, as the CLI's units without --control-res: the map is drawn at the output's size
    unit = dict(module=GLYPH, model=model or "", weight=float(weight), guidance_start=float(start),
                guidance_end=float(end), pixel_perfect=True)
    drawn = drawn_boxes(canvas, fields.get("width"), fields.get("height"))
    return GenerateRequest.create(mode="txt2img", controlnets=[unit], text_boxes=text_boxes_field(words, boxes, drawn),
                                  **fields)


def preview_glyph_map(request: GenerateRequest) -> Image.Image:
    """The glyph map the engine draws for `request` at its width x height: the words placed by the engine's
    with_words and drawn by glyph_map, as a generation does."""
    units, _ = with_words(check_units(request.controlnets), request, request.width, request.height)
    return glyph_map(units[0].words, *units[0].canvas)


def controlnet_choices(studio, language: str) -> list[tuple[str, str]]:
    auto = (studio.texts[language]["controlnet.model_auto"], "")
    manager = getattr(studio.engine, "controlnets", None)
    found = manager.list_controlnets() if manager is not None else []
    return [auto, *((ref.title, ref.name) for ref in found)]


def build_glyph_fields(labels) -> dict[str, Any]:
    """The glyph module's words, typed boxes, box canvas and buttons, in a group shown while glyph is picked."""
    with gr.Group(visible=False) as group:
        with gr.Row():
            # empty values (not None) keep these fields optional for API clients of the other modules
            words = labels(gr.Textbox, value="", label=Key("controlnet.words"), info=Key("controlnet.words_info"),
                           lines=3, elem_id="controlnet-words")
            boxes = labels(gr.Textbox, value="", label=Key("controlnet.boxes"), info=Key("controlnet.boxes_info"),
                           lines=3, placeholder="16,40,112,88", elem_id="controlnet-boxes")
        canvas = labels(gr.ImageEditor, value=dict(background=None, layers=[], composite=None), type="pil",
                        image_mode="RGBA", format="png", height=360, canvas_size=(512, 512), transforms=(),
                        sources=("upload",), label=Key("controlnet.box_canvas"),
                        brush=gr.Brush(colors=["#ff4040"], color_mode="fixed"), elem_id="controlnet-box-canvas")
        with gr.Row():
            new_canvas = labels(gr.Button, value=Key("controlnet.new_canvas"), elem_id="controlnet-new-canvas")
            glyph_preview = labels(gr.Button, value=Key("controlnet.glyph_preview"), elem_id="controlnet-glyph-preview")
    return dict(glyph_group=group, words=words, boxes=boxes, box_canvas=canvas, new_canvas=new_canvas,
                glyph_preview=glyph_preview)


def wire_glyph(labels, f: dict[str, Any], language) -> None:
    """Picking glyph shows its fields (and hides the reference's preview); a blank canvas at the output size to draw
    boxes on; the glyph map preview."""
    def check_size(width, height, language) -> None:
        if not (size_or_default(width) and size_or_default(height)):
            raise gr.Error(labels.texts[language]["error.glyph_size"], print_exception=False)

    def blank(width, height, language):
        check_size(width, height, language)
        return Image.new("RGB", (int(width), int(height)), "black")

    def glyph_preview(prompt, words, boxes, canvas, width, height, language):
        check_size(width, height, language)
        with readable_errors(labels.texts[language]):
            fields = dict(prompt=prompt or "", width=int(width), height=int(height))
            return preview_glyph_map(glyph_request(fields, words, boxes, canvas))

    f["module"].change(lambda m: (gr.update(visible=m == GLYPH), gr.update(visible=m != GLYPH)), f["module"],
                       [f["glyph_group"], f["preview"]], queue=False, api_visibility="private")
    f["new_canvas"].click(blank, [f["width"], f["height"], language], f["box_canvas"], queue=False,
                          api_visibility="private")
    f["glyph_preview"].click(glyph_preview, [f["prompt"], f["words"], f["boxes"], f["box_canvas"], f["width"],
                                             f["height"], language], f["control_map"],
                             api_name="controlnet_glyph_preview", concurrency_id="preprocess", concurrency_limit=2)


def build_controlnet(studio, labels, language, prefs) -> GenerationForm:
    def extra() -> dict[str, Any]:
        with gr.Row():
            reference = labels(gr.Image, label=Key("controlnet.reference"), type="filepath", image_mode=None,
                               height=260, elem_id="controlnet-reference")
            control_map = labels(gr.Image, label=Key("controlnet.control_map"), type="pil", format="png",
                                 interactive=False, height=260, elem_id="controlnet-map")
        with gr.Row():
            module = labels(gr.Dropdown, choices=[(Key(f"controlnet.module.{m}"), m) for m in MODULES],
                            value="canny", label=Key("controlnet.preprocessor"), elem_id="controlnet-module")
            model = labels.register(
                gr.Dropdown(choices=controlnet_choices(studio, labels.language), value="",
                            label=labels.text("controlnet.model"), elem_id="controlnet-model"),
                lambda lang: {"choices": controlnet_choices(studio, lang), "label": labels.text("controlnet.model",
                                                                                                 lang)})
            preview = labels(gr.Button, value=Key("controlnet.preview"), elem_id="controlnet-preview")
        with gr.Row():
            low = labels(gr.Slider, minimum=0, maximum=255, step=1, value=100, label=Key("controlnet.low"),
                         elem_id="controlnet-low")
            high = labels(gr.Slider, minimum=0, maximum=255, step=1, value=200, label=Key("controlnet.high"),
                          elem_id="controlnet-high")
            resolution = labels(gr.Slider, minimum=64, maximum=2048, step=8, value=512,
                                label=Key("controlnet.resolution"), elem_id="controlnet-resolution")
        with gr.Row():
            weight = labels(gr.Slider, minimum=0, maximum=2, step=0.05, value=1.0, label=Key("controlnet.weight"),
                            elem_id="controlnet-weight")
            start = labels(gr.Slider, minimum=0, maximum=1, step=0.01, value=0.0, label=Key("controlnet.start"),
                           elem_id="controlnet-start")
            end = labels(gr.Slider, minimum=0, maximum=1, step=0.01, value=1.0, label=Key("controlnet.end"),
                         elem_id="controlnet-end")
        return dict(reference=reference, control_map=control_map, module=module, controlnet_model=model,
                    preview=preview, low=low, high=high, resolution=resolution, weight=weight, start=start, end=end,
                    **build_glyph_fields(labels))

    form = layout(studio, labels, prefs, "controlnet", extra)
    f = form.fields

    def control_preview(reference, module, low, high, resolution, language):
        with readable_errors(labels.texts[language]):
            if not reference and get_preprocessor(module).needs_image:
                raise gr.Error(labels.texts[language]["error.no_reference"], print_exception=False)
            return preview_control_map(studio, reference, module, low, high, resolution)

    f["preview"].click(control_preview, [f["reference"], f["module"], f["low"], f["high"], f["resolution"], language],
                       f["control_map"], api_name="controlnet_preview", concurrency_id="preprocess",
                       concurrency_limit=2)

    wire_glyph(labels, f, language)

    def controlnet(prompt, negative_prompt, styles, sampler, schedule_type, steps, cfg_scale, seed, width, height,
                   batch_size, n_iter, clip_skip, reference, module, controlnet_model, low, high, resolution, weight,
                   guidance_start, guidance_end, words, boxes, box_canvas, language, prefs, session: gr.Request,
                   progress=gr.Progress()):
        with readable_errors(labels.texts[language]):
            fields = common_request_fields(prompt, negative_prompt, styles, sampler, schedule_type, steps,
                                           cfg_scale, seed, width, height, batch_size, n_iter, clip_skip, prefs)
            if module == GLYPH:
                request = glyph_request(fields, words, boxes, box_canvas, controlnet_model, weight, guidance_start,
                                        guidance_end)
            elif not reference:
                raise gr.Error(labels.texts[language]["error.no_reference"], print_exception=False)
            else:
                request = reference_request(fields, reference, module, controlnet_model, low, high, resolution, weight,
                                            guidance_start, guidance_end)
            return generation_outputs(studio, request, language, prefs, session, progress)

    inputs = [*common_inputs(form), f["reference"], f["module"], f["controlnet_model"], f["low"], f["high"],
              f["resolution"], f["weight"], f["start"], f["end"], f["words"], f["boxes"], f["box_canvas"]]
    wire_generation(studio, form, controlnet, inputs, language, prefs)
    return form
