"""The Extras tab (附加功能): A1111's Extras single image, upscaled by the engine's upscale (the function behind the
API's /sdapi/v1/extra-single-image and `huabu upscale`) with the studio engine's upscalers, to a scale or a size.
The result is saved in the outputs folder's `extras/` with the source's parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from huabu.ui.i18n import Key
from huabu.ui.jobs import readable_errors

MODES = (("extras.scale_by", "by"), ("extras.scale_to", "to"))
MAX_SCALE = 8  # as the API's upscaling_resize
MAX_SIZE = 8192


def build_extras(studio, labels, language, prefs) -> dict[str, Any]:
    names = studio.engine.upscalers.names()
    with gr.Row():
        with gr.Column():
            image = labels(gr.Image, label=Key("extras.image"), type="filepath", height=320, elem_id="extras-image")
            mode = labels(gr.Radio, choices=[(Key(key), value) for key, value in MODES], value="by",
                          label=Key("extras.resize_mode"), elem_id="extras-mode")
            scale = labels(gr.Slider, minimum=1, maximum=MAX_SCALE, step=0.05, value=2, label=Key("extras.scale"),
                           elem_id="extras-scale")
            with gr.Row():
                width = labels(gr.Number, value=512, precision=0, minimum=1, maximum=MAX_SIZE,
                               label=Key("extras.width"), elem_id="extras-width")
                height = labels(gr.Number, value=512, precision=0, minimum=1, maximum=MAX_SIZE,
                                label=Key("extras.height"), elem_id="extras-height")
                crop = labels(gr.Checkbox, value=True, label=Key("extras.crop"), elem_id="extras-crop")
            with gr.Row():
                first = labels(gr.Dropdown, choices=names, value="None", label=Key("extras.upscaler_1"),
                               elem_id="extras-upscaler-1")
                second = labels(gr.Dropdown, choices=names, value="None", label=Key("extras.upscaler_2"),
                                elem_id="extras-upscaler-2")
            visibility = labels(gr.Slider, minimum=0, maximum=1, step=0.01, value=0, label=Key("extras.visibility"),
                                elem_id="extras-visibility")
            run = labels(gr.Button, value=Key("extras.run"), variant="primary", elem_id="extras-run")
        with gr.Column():
            output = labels(gr.Image, label=Key("extras.output"), type="filepath", format="png", interactive=False,
                            elem_id="extras-output")
            status = gr.Markdown(elem_id="extras-status")

    def extras(image, mode, scale, width, height, crop, upscaler_1, upscaler_2, visibility, language, prefs):
        return upscale_image(studio, image, mode, scale, width, height, crop, upscaler_1, upscaler_2, visibility,
                             language, prefs)

    run.click(extras, [image, mode, scale, width, height, crop, first, second, visibility, language, prefs],
              [output, status], api_name="extras", concurrency_id="engine", concurrency_limit=1)
    return {"run": run}


def upscale_image(studio, image: str | None, mode: str, scale: float, width: float, height: float, crop: bool,
                  upscaler_1: str, upscaler_2: str | None, visibility: float, language: str, prefs: dict | None
                  ) -> tuple[Any, str]:
    """The Upscale button: (the saved result as the page shows it, a status line)."""
    from huabu.core.pnginfo import read_parameters, save_png_atomic
    from huabu.engine.grids import next_grid_path
    from huabu.engine.images import load_image
    from huabu.engine.upscalers import target_size, upscale

    texts = studio.texts[language]
    with readable_errors(texts):
        if not image:
            raise gr.Error(texts["error.no_image"], print_exception=False)
        source = load_image(str(image), "image")
        size = target_size(source, float(scale), (int(width), int(height)) if mode == "to" else None)
        if max(size) > MAX_SIZE:
            raise gr.Error(texts["extras.too_big"].format(width=size[0], height=size[1], most=MAX_SIZE),
                           print_exception=False)
        result = upscale(source, size, upscaler_1 or "None", studio.engine.upscalers, upscaler_2 or "None",
                         float(visibility or 0), bool(crop))
        folder = Path((prefs or {}).get("outputs_dir") or studio.settings.outputs_dir) / "extras"
        path = save_png_atomic(result, next_grid_path(folder, "extras"), read_parameters(str(image)))
        return studio.displayable(path), texts["extras.done"].format(width=result.width, height=result.height,
                                                                      path=path)
