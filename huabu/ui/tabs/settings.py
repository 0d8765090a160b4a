"""The settings tab: which model generates, the default sampler, where outputs go. Choices are kept per browser
session (a gr.State the generation handlers read), so one user's choice does not change another's. The memory
switches are the exception: they are set once per loaded model, so they apply to the whole studio."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from huabu.core.settings import DTYPES, OFFLOADS
from huabu.ui.i18n import Key
from huabu.ui.tabs.generate import SAMPLER_NAMES


@dataclass
class SettingsTab:
    model: Any
    refresh: Any
    sampler: Any
    outputs_dir: Any
    memory: tuple  # offload, vae_tiling, attention_slicing, dtype
    apply_memory: Any


def build_settings(studio, labels, language, prefs) -> SettingsTab:
    settings = studio.settings
    choices = studio.model_choices(labels.language)
    with gr.Row():
        model = labels.register(
            gr.Dropdown(choices=choices, value=studio.default_model, label=labels.text("settings.model"),
                        info=labels.text("settings.model_info", folder=settings.models_dir), scale=4,
                        elem_id="settings-model"),
            lambda lang: {"choices": studio.model_choices(lang), "label": labels.text("settings.model", lang),
                          "info": labels.text("settings.model_info", lang, folder=settings.models_dir)})
        refresh = labels(gr.Button, value=Key("settings.refresh"), scale=1, elem_id="settings-refresh")
    sampler = labels(gr.Dropdown, choices=SAMPLER_NAMES, value=studio.default_sampler,
                     label=Key("settings.sampler"), elem_id="settings-sampler")
    outputs_dir = labels(gr.Textbox, value=str(settings.outputs_dir), label=Key("settings.outputs_dir"),
                         info=Key("settings.outputs_info"), elem_id="settings-outputs")
    labels.register(
        gr.Markdown(labels.text("settings.folders", home=settings.home, loras=settings.loras_dir,
                                controlnet=settings.controlnet_dir), elem_id="settings-folders"),
        lambda lang: {"value": labels.text("settings.folders", lang, home=settings.home, loras=settings.loras_dir,
                                           controlnet=settings.controlnet_dir)})

    def choose_model(spec: str, prefs: dict) -> dict:
        return {**prefs, "model": spec, "checkpoint_config": None}

    def choose_outputs(folder: str, prefs: dict) -> dict:
        folder = (folder or "").strip()
        return {**prefs, "outputs_dir": str(Path(folder).expanduser()) if folder else str(settings.outputs_dir)}

    def rescan(language: str, current: str):
        found = studio.model_choices(language)
        values = [value for _, value in found]
        return gr.update(choices=found, value=current if current in values else studio.default_model)

    memory, apply_memory, memory_status = _memory_controls(studio, labels)

    def apply(offload: str, vae_tiling: bool, attention_slicing: bool, dtype: str, language: str) -> str:
        studio.set_memory(offload=offload, vae_tiling=vae_tiling, attention_slicing=attention_slicing, dtype=dtype)
        return labels.text("settings.memory_applied", language)

    model.change(choose_model, [model, prefs], prefs, queue=False, api_visibility="private")
    outputs_dir.change(choose_outputs, [outputs_dir, prefs], prefs, queue=False, api_visibility="private")
    refresh.click(rescan, [language, model], model, queue=False, api_visibility="private")
    apply_memory.click(apply, [*memory, language], memory_status, concurrency_id="engine",
                       api_visibility="private")
    return SettingsTab(model, refresh, sampler, outputs_dir, memory, apply_memory)


def _memory_controls(studio, labels) -> tuple[tuple, Any, Any]:
    settings = studio.settings
    with gr.Accordion(labels.text("settings.memory"), open=False, elem_id="settings-memory") as accordion:
        labels.register(accordion, lambda lang: {"label": labels.text("settings.memory", lang)})
        with gr.Row():
            offload = labels(gr.Dropdown, choices=list(OFFLOADS), value=settings.offload,
                             label=Key("settings.offload"), info=Key("settings.offload_info"),
                             elem_id="settings-offload")
            dtype = labels(gr.Dropdown, choices=list(DTYPES), value=settings.dtype, label=Key("settings.dtype"),
                           info=Key("settings.dtype_info"), elem_id="settings-dtype")
        with gr.Row():
            vae_tiling = labels(gr.Checkbox, value=settings.vae_tiling, label=Key("settings.vae_tiling"),
                                elem_id="settings-vae-tiling")
            slicing = labels(gr.Checkbox, value=settings.attention_slicing, label=Key("settings.attention_slicing"),
                             elem_id="settings-attention-slicing")
        apply_memory = labels(gr.Button, value=Key("settings.apply_memory"), elem_id="settings-apply-memory")
        status = gr.Markdown(elem_id="settings-memory-status")
    return (offload, vae_tiling, slicing, dtype), apply_memory, status
