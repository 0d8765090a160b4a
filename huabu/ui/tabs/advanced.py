"""The A1111 options beside the sampling fields: variation seeds, VAE and flow shift (every tab), the hires fix
(txt2img), masked content and "only masked" (inpaint) and outpainting (img2img). Each builder returns its components by
request field name; `advanced_fields` turns their values into GenerateRequest fields, `advanced_values` back."""

from __future__ import annotations

from typing import Any

import gradio as gr

from huabu.core.fields import FILL_NAMES
from huabu.core.upscalers import LATENT_UPSCALE_MODES
from huabu.engine.vaes import list_vaes
from huabu.ui.fields import field_bounds
from huabu.ui.i18n import Key

AUTOMATIC_VAE = "Automatic"


def build_variation(labels, prefix: str, vae_dir) -> dict[str, Any]:
    """Variation seed, its strength, the seed-resize size, the VAE and a flow model's shift, in a closed
    accordion."""
    with labels(gr.Accordion, label=Key("adv.variation"), open=False, elem_id=f"{prefix}-variation"):
        with gr.Row():
            subseed = labels(gr.Number, value=-1, precision=0, minimum=-1, maximum=field_bounds("subseed")[1],
                             label=Key("adv.subseed"), elem_id=f"{prefix}-subseed")
            strength = labels(gr.Slider, minimum=0, maximum=1, step=0.01, value=0, label=Key("adv.subseed_strength"),
                              elem_id=f"{prefix}-subseed-strength")
        with gr.Row():
            resize_w = labels(gr.Slider, minimum=0, maximum=2048, step=8, value=0, label=Key("adv.resize_w"),
                              elem_id=f"{prefix}-seed-resize-w")
            resize_h = labels(gr.Slider, minimum=0, maximum=2048, step=8, value=0, label=Key("adv.resize_h"),
                              elem_id=f"{prefix}-seed-resize-h")
        with gr.Row():
            vae = labels(gr.Dropdown, choices=[AUTOMATIC_VAE, *(ref.name for ref in list_vaes(vae_dir))],
                         value=AUTOMATIC_VAE, label=Key("adv.vae"), elem_id=f"{prefix}-vae")
            shift = labels(gr.Number, value=0, minimum=0, maximum=field_bounds("shift")[1], step=0.1,
                           label=Key("adv.shift"), info=Key("adv.shift_info"), elem_id=f"{prefix}-shift")
    return dict(subseed=subseed, subseed_strength=strength, seed_resize_from_w=resize_w, seed_resize_from_h=resize_h,
                vae=vae, shift=shift)


def build_hires(labels, upscalers: list[str]) -> dict[str, Any]:
    with labels(gr.Accordion, label=Key("adv.hires"), open=False, elem_id="txt2img-hires"):
        enable = labels(gr.Checkbox, value=False, label=Key("adv.hires_enable"), elem_id="txt2img-hires-enable")
        with gr.Row():
            upscaler = labels(gr.Dropdown, choices=[*LATENT_UPSCALE_MODES, *upscalers], value="Latent",
                              label=Key("adv.upscaler"), elem_id="txt2img-hires-upscaler")
            scale = labels(gr.Slider, minimum=1, maximum=4, step=0.05, value=2, label=Key("adv.hires_scale"),
                           elem_id="txt2img-hires-scale")
        with gr.Row():
            steps = labels(gr.Slider, minimum=0, maximum=field_bounds("hr_second_pass_steps")[1], step=1, value=0,
                           label=Key("adv.hires_steps"), elem_id="txt2img-hires-steps")
            denoise = labels(gr.Slider, minimum=0.01, maximum=1, step=0.01, value=0.7, label=Key("gen.denoising"),
                             elem_id="txt2img-hires-denoising")
    return dict(enable_hr=enable, hr_upscaler=upscaler, hr_scale=scale, hr_second_pass_steps=steps,
                denoising_strength=denoise)


def build_inpaint_options(labels) -> dict[str, Any]:
    with gr.Row():
        fill = labels(gr.Dropdown, choices=list(FILL_NAMES), value="original", label=Key("adv.masked_content"),
                      elem_id="inpaint-fill")
        only_masked = labels(gr.Checkbox, value=False, label=Key("adv.only_masked"), elem_id="inpaint-only-masked")
        padding = labels(gr.Slider, minimum=0, maximum=256, step=4, value=32, label=Key("adv.padding"),
                         elem_id="inpaint-padding")
    return dict(inpainting_fill=fill, inpaint_full_res=only_masked, inpaint_full_res_padding=padding)


def build_outpaint(labels) -> dict[str, Any]:
    with labels(gr.Accordion, label=Key("adv.outpaint"), open=False, elem_id="img2img-outpaint"):
        with gr.Row():
            sides = {side: labels(gr.Slider, minimum=0, maximum=512, step=8, value=0, label=Key(f"adv.{side}"),
                                  elem_id=f"img2img-outpaint-{side}") for side in ("left", "right", "up", "down")}
    return {f"outpaint_{side}": slider for side, slider in sides.items()}


def advanced_fields(names: list[str], values: list[Any]) -> dict[str, Any]:
    """GenerateRequest fields from the components' values (sliders give floats, the VAE dropdown a name)."""
    fields: dict[str, Any] = {}
    for name, value in zip(names, values):
        if name == "vae":
            fields["vae"] = None if value in (None, AUTOMATIC_VAE) else value
        elif name == "inpainting_fill":
            fields[name] = FILL_NAMES.index(value)
        elif name == "shift":  # 0: the model's own
            fields[name] = float(value) if value else None
        elif name == "hr_upscaler":
            fields[name] = value
        elif name in ("enable_hr", "inpaint_full_res"):
            fields[name] = bool(value)
        elif name in ("subseed_strength", "hr_scale", "denoising_strength"):
            fields[name] = float(value)
        else:
            fields[name] = int(value if value is not None else 0)
    if not fields.get("enable_hr", True):
        for name in ("enable_hr", "hr_upscaler", "hr_scale", "hr_second_pass_steps", "denoising_strength"):
            fields.pop(name, None)
    return fields


def advanced_values(names: list[str], fields: dict[str, Any]) -> dict[str, Any]:
    """The components' values for GenerateRequest fields (an infotext's): `advanced_fields` reversed, for the names
    `fields` states."""
    values: dict[str, Any] = {}
    for name in (name for name in names if name in fields):
        value = fields[name]
        if name == "vae":
            values[name] = value or AUTOMATIC_VAE
        elif name == "inpainting_fill":
            values[name] = FILL_NAMES[value]
        elif name == "shift":
            values[name] = value or 0
        else:
            values[name] = value
    return values
