"""The gallery tab: every past generation from the Gallery store with its parameters, PNG info of an uploaded
image, and "send to" txt2img / img2img (wired by the app, which knows the target tabs)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

import huabu
from huabu.core.pnginfo import create_infotext, read_parameters
from huabu.ui.i18n import Key
from huabu.ui.jobs import readable_errors

PAGE_SIZE = 60
KINDS = ("txt2img", "img2img", "inpaint", "video")


@dataclass
class GalleryTab:
    search: Any
    kind: Any
    refresh: Any
    items: Any
    ids: Any  # State: gallery ids in display order
    parameters: Any
    source: Any  # State: path of the image whose parameters are shown (for send to img2img)
    upload: Any
    send_txt2img: Any
    send_img2img: Any
    listing: Any  # (search, kind) -> (items, ids): refreshes the listing

    @property
    def listing_inputs(self) -> list:
        return [self.search, self.kind]

    @property
    def listing_outputs(self) -> list:
        return [self.items, self.ids]


def item_parameters(item) -> str:
    """An item's A1111 parameters: the text stored in its file, else rebuilt from the index row."""
    path = Path(item.path)
    if path.is_file():
        try:
            text = read_parameters(path)
        except huabu.core.errors.HuabuError:
            text = None
        if text:
            return text
    return create_infotext(item.prompt, item.negative_prompt, item.params, huabu.__version__)


def build_gallery(studio, labels, language) -> GalleryTab:
    with gr.Row():
        search = labels(gr.Textbox, value="", label=Key("gallery.search"), scale=3, elem_id="gallery-search")
        kind = labels(gr.Dropdown, choices=[(Key("gallery.all"), ""), *((k, k) for k in KINDS)], value="",
                      label=Key("gallery.kind"), scale=1, elem_id="gallery-kind")
        refresh = labels(gr.Button, value=Key("gallery.refresh"), scale=1, elem_id="gallery-refresh")
    with gr.Row():
        with gr.Column(scale=3):
            items = labels(gr.Gallery, label=Key("gallery.items"), columns=6, height=420, allow_preview=False,
                           fit_columns=False,
                           interactive=False, elem_id="gallery-items")
        with gr.Column(scale=2):
            parameters = labels(gr.Textbox, label=Key("gallery.parameters"), lines=6, elem_id="gallery-parameters")
            with gr.Row():
                send_txt2img = labels(gr.Button, value=Key("gallery.send_txt2img"), elem_id="gallery-send-txt2img")
                send_img2img = labels(gr.Button, value=Key("gallery.send_img2img"), elem_id="gallery-send-img2img")
            upload = labels(gr.Image, label=Key("gallery.png_info"), type="filepath", image_mode=None, height=200,
                            elem_id="gallery-upload")
    ids = gr.State([])
    source = gr.State(None)

    def listing(text: str, kind: str):
        with readable_errors(labels.texts[labels.language]):
            found = [item for item in studio.gallery.search(text or None, kind=kind or None, limit=PAGE_SIZE)
                     if Path(item.path).is_file()]
        return [(studio.displayable(item.path), _caption(item.prompt)) for item in found], [item.id for item in found]

    def select(ids: list[int], evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else -1
        item = studio.gallery.get(ids[index]) if 0 <= index < len(ids) else None
        if item is None:
            return "", None
        return item_parameters(item), item.path

    def png_info(path: str | None, language: str):
        if not path:
            return gr.update(), None
        with readable_errors(labels.texts[language]):
            text = read_parameters(path)
        return text or labels.texts[language]["gallery.no_parameters"], path

    refresh.click(listing, [search, kind], [items, ids], queue=False, api_name="gallery_search")
    for trigger in (search.submit, kind.change):
        trigger(listing, [search, kind], [items, ids], queue=False, api_visibility="private")
    items.select(select, ids, [parameters, source], queue=False, api_visibility="private")
    upload.upload(png_info, [upload, language], [parameters, source], queue=False, api_name="png_info")
    return GalleryTab(search, kind, refresh, items, ids, parameters, source, upload, send_txt2img, send_img2img,
                      listing)


def _caption(prompt: str, length: int = 60) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= length else prompt[: length - 1] + "…"
