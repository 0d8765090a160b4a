"""The Script dropdown of the generation tabs (A1111's scripts, run by huabu.engine.scripts): none, X/Y/Z plot,
prompt matrix, or prompts from a textbox, with each script's fields shown only when it is picked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from huabu.engine.scripts.xyz import AXES
from huabu.ui.i18n import Key

NONE = "none"
SCRIPTS = (("script.none", NONE), ("script.xyz", "x/y/z plot"), ("script.matrix", "prompt matrix"),
           ("script.lines", "prompts from file or textbox"))
# The X/Y/Z axes huabu runs, in A1111's order.
AXIS_LABELS = tuple(axis.label for axis in AXES.values())


@dataclass
class ScriptArea:
    script: Any
    inputs: list[Any]  # in script_request's order, after `script`


def build_script_area(labels, prefix: str) -> ScriptArea:
    script = labels(gr.Dropdown, choices=[(Key(key), value) for key, value in SCRIPTS], value=NONE,
                    label=Key("script.label"), elem_id=f"{prefix}-script")
    with gr.Group(visible=False) as xyz:
        axes = []
        for axis, default in (("x", "Steps"), ("y", "Nothing"), ("z", "Nothing")):
            with gr.Row():
                axes.append(labels(gr.Dropdown, choices=list(AXIS_LABELS), value=default,
                                   label=Key(f"script.{axis}_type"), elem_id=f"{prefix}-{axis}-type"))
                axes.append(labels(gr.Textbox, value="", label=Key(f"script.{axis}_values"),
                                   info=Key("script.values_info"), elem_id=f"{prefix}-{axis}-values"))
        with gr.Row():
            legend = labels(gr.Checkbox, value=True, label=Key("script.legend"), elem_id=f"{prefix}-xyz-legend")
            keep_seed = labels(gr.Checkbox, value=False, label=Key("script.keep_seed"), elem_id=f"{prefix}-xyz-keep")
    with gr.Group(visible=False) as matrix:
        with gr.Row():
            at_start = labels(gr.Checkbox, value=False, label=Key("script.at_start"), elem_id=f"{prefix}-pm-start")
            different = labels(gr.Checkbox, value=False, label=Key("script.different_seeds"),
                               elem_id=f"{prefix}-pm-seeds")
    with gr.Group(visible=False) as lines:
        text = labels(gr.Textbox, value="", lines=4, label=Key("script.lines_text"), info=Key("script.lines_info"),
                      elem_id=f"{prefix}-lines")
        iterate = labels(gr.Checkbox, value=False, label=Key("script.iterate_seed"), elem_id=f"{prefix}-lines-iter")
    script.change(lambda name: [gr.Group(visible=name == value) for value in ("x/y/z plot", "prompt matrix",
                                                                              "prompts from file or textbox")],
                  script, [xyz, matrix, lines], queue=False, api_visibility="private")
    return ScriptArea(script, [*axes, legend, keep_seed, at_start, different, text, iterate])


def script_request(name: str, x_type: str, x_values: str, y_type: str, y_values: str, z_type: str, z_values: str,
                   legend: bool, keep_seed: bool, at_start: bool, different: bool, text: str, iterate: bool
                   ) -> dict[str, Any] | None:
    """GenerateRequest.script for the picked script and its fields (None: no script)."""
    if name == "x/y/z plot":
        return {"name": name, "args": {"x_type": x_type, "x_values": x_values or "", "y_type": y_type,
                                       "y_values": y_values or "", "z_type": z_type, "z_values": z_values or "",
                                       "draw_legend": bool(legend), "no_fixed_seeds": bool(keep_seed),
                                       "include_lone_images": True}}
    if name == "prompt matrix":
        return {"name": name, "args": {"put_at_start": bool(at_start), "different_seeds": bool(different)}}
    if name == "prompts from file or textbox":
        return {"name": name, "args": {"text": text or "", "iterate_seed": bool(iterate)}}
    return None
