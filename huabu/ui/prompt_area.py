"""The prompt area every generation tab shares: prompt, negative prompt, style templates and the prompt book
(咒语书): one chip group per category whose chips put their text into the prompt (or the negative prompt) when
clicked on and take it out when clicked off: English, or Chinese when the model picked in `prefs` reads Chinese."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from huabu.engine.prompts.book import PromptBook
from huabu.ui.fields import styled_preview, toggle_part
from huabu.ui.i18n import Key
from huabu.ui.labels import Labels

NEGATIVE_CATEGORY = "negative"


@dataclass
class PromptArea:
    prompt: Any
    negative: Any
    styles: Any  # multiselect dropdown of style names (passed to the request, applied by the engine)
    chips: dict[str, Any]  # category id -> CheckboxGroup
    styled: Any  # read-only preview of the prompts after the styles
    examples: Any  # example images of the picked styles


def build_prompt_area(labels: Labels, book: PromptBook, prefix: str, prefs: Any,
                      reads_chinese: Callable[[str], bool]) -> PromptArea:
    """Create the components (inside the current gradio context) and wire their cheap, unqueued events. `prefs` is
    the studio's preferences state ({"model": ...}); `reads_chinese(model)` picks the language chips insert."""
    prompt = labels(gr.Textbox, value="", label=Key("prompt.prompt"), placeholder=Key("prompt.placeholder"), lines=3,
                    elem_id=f"{prefix}-prompt")
    negative = labels(gr.Textbox, value="", label=Key("prompt.negative"), lines=2, elem_id=f"{prefix}-negative")
    styles = labels.register(gr.Dropdown(
        choices=_style_choices(book, labels.language), value=[], multiselect=True,
        label=labels.text("prompt.styles"), info=labels.text("prompt.styles_info"), elem_id=f"{prefix}-styles"),
        lambda lang: {"choices": _style_choices(book, lang), "label": labels.text("prompt.styles", lang),
                      "info": labels.text("prompt.styles_info", lang)})
    chips: dict[str, Any] = {}
    with labels(gr.Accordion, label=Key("prompt.book"), open=False, elem_id=f"{prefix}-book"):
        with gr.Tabs():
            for category, names in book.categories.items():
                with labels.register(gr.Tab(names[labels.language], elem_id=f"{prefix}-book-{category}"),
                                     lambda lang, names=names: {"label": names[lang]}):
                    chips[category] = labels.register(
                        gr.CheckboxGroup(choices=_part_choices(book, category, labels.language), show_label=False,
                                         interactive=True,
                                         elem_id=f"{prefix}-chips-{category}", elem_classes=["huabu-chips"]),
                        lambda lang, category=category: {"choices": _part_choices(book, category, lang)})
            with labels(gr.Tab, label=Key("prompt.style_preview"), elem_id=f"{prefix}-book-styles"):
                styled = labels(gr.Textbox, label=Key("prompt.styled"), lines=3, interactive=False,
                                elem_id=f"{prefix}-styled")
                examples = labels(gr.Gallery, label=Key("prompt.examples"), columns=6, height=160, visible=False,
                                  elem_id=f"{prefix}-examples")
        clear = labels(gr.Button, value=Key("prompt.clear"), size="sm", elem_id=f"{prefix}-clear")

    parts = {(p.category, p.en): p for p in book.parts}
    for category, group in chips.items():
        target = negative if category == NEGATIVE_CATEGORY else prompt

        def on_chip(text: str, chosen: dict, evt: gr.SelectData, category: str = category) -> str:
            part = parts.get((category, evt.value))
            if part is None:
                return text
            return toggle_part(text or "", part, bool(evt.selected), reads_chinese((chosen or {}).get("model", "")))

        group.select(on_chip, [target, prefs], target, queue=False, api_visibility="private")

    def preview(text: str, negative_text: str, names: list[str]):
        shown = styled_preview(text, negative_text, names or [], book)
        pictures = [(book.styles[n].example, n) for n in names or [] if book.styles[n].example]
        return shown, gr.update(value=pictures, visible=bool(pictures))

    for trigger in (styles.change, prompt.blur, negative.blur):
        trigger(preview, [prompt, negative, styles], [styled, examples], queue=False, api_visibility="private")
    clear.click(lambda: ("", "", [], *([[]] * len(chips))), None, [prompt, negative, styles, *chips.values()],
                queue=False, api_visibility="private")
    return PromptArea(prompt, negative, styles, chips, styled, examples)


def _part_choices(book: PromptBook, category: str, language: str) -> list[tuple[str, str]]:
    return [(getattr(part, language), part.en) for part in book.parts if part.category == category]


def _style_choices(book: PromptBook, language: str) -> list[tuple[str, str]]:
    return [(style.name_zh if language == "zh" else style.name_en, name) for name, style in book.styles.items()]
