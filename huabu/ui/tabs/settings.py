"""The settings tab: which model generates, the default sampler, where outputs go. Choices are kept per browser
session (a gr.State the generation handlers read), so one user's choice does not change another's."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from huabu.ui.i18n import Key
from huabu.ui.tabs.generate import SAMPLER_NAMES


@dataclass
class SettingsTab:
    model: Any
    refresh: Any
    sampler: Any
    outputs_dir: Any


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

    model.change(choose_model, [model, prefs], prefs, queue=False, api_visibility="private")
    outputs_dir.change(choose_outputs, [outputs_dir, prefs], prefs, queue=False, api_visibility="private")
    refresh.click(rescan, [language, model], model, queue=False, api_visibility="private")
    return SettingsTab(model, refresh, sampler, outputs_dir)
