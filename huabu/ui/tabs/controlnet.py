"""The ControlNet tab: upload a reference, pick a preprocessor, preview its control map, then generate with a
ControlNet unit (the request's `controlnets`, run by the engine like any other request)."""

from typing import Any

import gradio as gr

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.engine.control.registry import get_preprocessor, preprocess
from huabu.engine.controlnets import ANNOTATORS, NEEDS_WEIGHTS, annotator_weights
from huabu.engine.images import load_image
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
MODULES = ("canny", "softedge", "softedge_gradient", "softedge_hed", "depth", "pose", "color", "none")


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


def controlnet_choices(studio, language: str) -> list[tuple[str, str]]:
    auto = (studio.texts[language]["controlnet.model_auto"], "")
    manager = getattr(studio.engine, "controlnets", None)
    found = manager.list_controlnets() if manager is not None else []
    return [auto, *((ref.title, ref.name) for ref in found)]


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
                    preview=preview, low=low, high=high, resolution=resolution, weight=weight, start=start, end=end)

    form = layout(studio, labels, "controlnet", extra)
    f = form.fields

    def control_preview(reference, module, low, high, resolution, language):
        with readable_errors(labels.texts[language]):
            if not reference and get_preprocessor(module).needs_image:
                raise gr.Error(labels.texts[language]["error.no_reference"], print_exception=False)
            return preview_control_map(studio, reference, module, low, high, resolution)

    f["preview"].click(control_preview, [f["reference"], f["module"], f["low"], f["high"], f["resolution"], language],
                       f["control_map"], api_name="controlnet_preview", concurrency_id="preprocess",
                       concurrency_limit=2)

    def controlnet(prompt, negative_prompt, styles, sampler, schedule_type, steps, cfg_scale, seed, width, height,
                   batch_size, n_iter, clip_skip, reference, module, controlnet_model, low, high, resolution, weight,
                   guidance_start, guidance_end, language, prefs, session: gr.Request, progress=gr.Progress()):
        with readable_errors(labels.texts[language]):
            if not reference:
                raise gr.Error(labels.texts[language]["error.no_reference"], print_exception=False)
            fields = common_request_fields(prompt, negative_prompt, styles, sampler, schedule_type, steps,
                                           cfg_scale, seed, width, height, batch_size, n_iter, clip_skip, prefs)
            thresholds = dict(threshold_a=float(low), threshold_b=float(high)) if module == "canny" else {}
            unit = dict(module=module, model=controlnet_model or "", image=str(reference), weight=float(weight),
                        processor_res=int(resolution), guidance_start=float(guidance_start),
                        guidance_end=float(guidance_end), **thresholds)
            request = GenerateRequest.create(mode="txt2img", controlnets=[unit], **fields)
            return generation_outputs(studio, request, language, prefs, session, progress)

    inputs = [*common_inputs(form), f["reference"], f["module"], f["controlnet_model"], f["low"], f["high"],
              f["resolution"], f["weight"], f["start"], f["end"]]
    wire_generation(studio, form, controlnet, inputs, language, prefs)
    return form
