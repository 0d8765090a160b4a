"""The Tools tab: A1111's checkpoint merger (huabu.engine.merge) and textual inversion training
(huabu.training.embedding), each the CLI's own function with the studio's models and folders."""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from huabu.core.errors import InvalidRequest
from huabu.ui.i18n import Key
from huabu.ui.jobs import readable_errors
from huabu.ui.tabs.lora import PLAIN_NAME, collect_training_data

METHODS = (("tools.weighted_sum", "weighted-sum"), ("tools.add_difference", "add-difference"),
           ("tools.no_interpolation", "no-interpolation"))


def build_tools(studio, labels, language, prefs) -> dict[str, Any]:
    choices = studio.model_choices(studio.language)
    labels(gr.Markdown, value=Key("tools.merge_heading"))
    with gr.Row():
        primary = labels(gr.Dropdown, choices=choices, value=studio.default_model, label=Key("tools.model_a"),
                         elem_id="merge-a")
        secondary = labels(gr.Dropdown, choices=choices, value=None, label=Key("tools.model_b"), elem_id="merge-b")
        tertiary = labels(gr.Dropdown, choices=choices, value=None, label=Key("tools.model_c"), elem_id="merge-c")
    with gr.Row():
        method = labels(gr.Radio, choices=[(Key(key), value) for key, value in METHODS], value="weighted-sum",
                        label=Key("tools.method"), elem_id="merge-method")
        alpha = labels(gr.Slider, minimum=0, maximum=1, step=0.05, value=0.3, label=Key("tools.alpha"),
                       elem_id="merge-alpha")
    with gr.Row():
        name = labels(gr.Textbox, value="", label=Key("tools.merge_name"), elem_id="merge-name")
        fp16 = labels(gr.Checkbox, value=True, label=Key("tools.fp16"), elem_id="merge-fp16")
    merge = labels(gr.Button, value=Key("tools.merge"), variant="primary", elem_id="merge-run")
    merge_status = gr.Markdown(elem_id="merge-status")

    def run_merge(a, b, c, method, alpha, name, fp16, language):
        from huabu.engine.merge import MergeRecipe, merge_checkpoints

        texts = studio.texts[language]
        with readable_errors(texts):
            if not PLAIN_NAME.fullmatch((name or "").strip()):
                raise InvalidRequest(texts["tools.no_name"])
            out = studio.settings.models_dir / f"{name.strip()}.safetensors"
            if out.exists():
                raise InvalidRequest(texts["tools.exists"].format(name=out.name))
            recipe = MergeRecipe(primary=a, secondary=b or None, tertiary=c or None, method=method,
                                 alpha=float(alpha), fp16=bool(fp16))
            path = merge_checkpoints(recipe, studio.settings.with_(device="cpu", dtype="fp32"), out)
            return texts["tools.merged"].format(path=path)

    merge.click(run_merge, [primary, secondary, tertiary, method, alpha, name, fp16, language], merge_status,
                api_name="merge", concurrency_id="train", concurrency_limit=1)

    labels(gr.Markdown, value=Key("tools.embedding_heading"))
    with gr.Row():
        files = labels(gr.File, file_count="multiple", label=Key("lora.folder"), elem_id="ti-files")
        archive = labels(gr.File, file_types=[".zip"], label=Key("lora.zip"), elem_id="ti-zip")
    with gr.Row():
        token = labels(gr.Textbox, value="", label=Key("tools.token"), info=Key("tools.token_info"), elem_id="ti-token")
        init_word = labels(gr.Textbox, value="*", label=Key("tools.init_word"), elem_id="ti-init")
        vectors = labels(gr.Slider, minimum=1, maximum=16, step=1, value=1, label=Key("tools.vectors"),
                         elem_id="ti-vectors")
        steps = labels(gr.Number, value=500, precision=0, minimum=1, label=Key("lora.steps"), elem_id="ti-steps")
    train = labels(gr.Button, value=Key("tools.train_embedding"), variant="primary", elem_id="ti-train")
    train_status = gr.Markdown(elem_id="ti-status")

    def run_training(files, archive, token, init_word, vectors, steps, language, prefs, session: gr.Request,
                     progress=gr.Progress()):
        from huabu.training.embedding import train as train_embedding
        from huabu.training.embedding_config import EmbeddingTrainConfig

        texts = studio.texts[language]
        with readable_errors(texts):
            target = studio.settings.embeddings_dir / f"{(token or '').strip()}.safetensors"
            if target.exists():
                raise InvalidRequest(texts["tools.exists"].format(name=target.name))
            if not files and not archive:
                raise InvalidRequest(texts["lora.no_data"])
            work = Path(tempfile.mkdtemp(prefix="huabu-embedding-"))
            try:
                collect_training_data(files, archive, work / "data")
                model = (prefs or {}).get("model") or studio.default_model
                config = EmbeddingTrainConfig(data=str(work / "data"), token=(token or "").strip(),
                                              init_word=init_word or "*", vectors=int(vectors), steps=int(steps),
                                              model=model, out=str(work / "run"))
                path = _train_in_thread(studio, train_embedding, config, session, progress, texts)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            return texts["tools.trained"].format(path=target)

    train.click(run_training, [files, archive, token, init_word, vectors, steps, language, prefs], train_status,
                api_name="train_embedding", concurrency_id="train", concurrency_limit=1)
    return {"merge": merge, "train": train}


def _train_in_thread(studio, train, config, session, progress, texts) -> Path:
    """Run `train` in a thread, reporting its steps to the page; the LoRA tab's Cancel stops it too."""
    from huabu.training.loop import TrainProgress

    updates: queue.Queue = queue.Queue()
    key = getattr(session, "session_hash", None) or "local"
    cancel = studio.training.start(key)

    def work() -> None:
        try:
            updates.put(("done", train(config, progress=updates.put, cancel=cancel.is_set)))
        except BaseException as err:  # handed to the page's thread, which turns it into one line
            updates.put(("error", err))

    thread = threading.Thread(target=work, name="huabu-embedding-train", daemon=True)
    thread.start()
    try:
        while True:
            item = updates.get()
            if isinstance(item, TrainProgress):
                progress((item.step, item.steps), desc=texts["lora.progress"].format(
                    step=item.step, steps=item.steps, loss=item.loss), unit="steps")
                continue
            kind, value = item
            if kind == "error":
                raise value
            return value
    finally:
        cancel.set()
        thread.join()
        studio.training.finish(key, cancel)
