"""txt2img, img2img and inpainting tabs: a prompt area, the sampling fields, and a run that goes through
Engine.generate (the CLI's and the API's path) with progress and an Interrupt button."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from huabu.core.requests import GenerateRequest
from huabu.core.samplers import SAMPLERS, SCHEDULES
from huabu.ui.fields import data_url, field_bounds, mask_from_editor, size_or_default
from huabu.ui.i18n import Key
from huabu.ui.jobs import readable_errors
from huabu.ui.prompt_area import PromptArea, build_prompt_area
from huabu.ui.scripts import build_script_area, script_request
from huabu.ui.tabs.advanced import advanced_fields, build_hires, build_inpaint_options, build_outpaint, build_variation

SAMPLER_NAMES = [s.name for s in SAMPLERS]
SCHEDULE_LABELS = [s.label for s in SCHEDULES]


@dataclass
class GenerationForm:
    """The components of one generation tab. `fields` maps GENERATION_FIELDS names (plus mode extras such as
    init_image, denoising_strength, mask_blur) to components, for "send to" and the settings tab."""

    mode: str
    area: PromptArea
    fields: dict[str, Any]
    generate: Any
    interrupt: Any
    gallery: Any
    parameters: Any
    status: Any
    reuse_seed: Any
    event: Any = None  # the generate click's dependency, for chaining
    advanced: dict[str, Any] | None = None  # ui.tabs.advanced components by request field name
    script_inputs: list = field(default_factory=list)  # the Script dropdown and its fields (huabu.ui.scripts)

    def advanced_inputs(self) -> list:
        return list((self.advanced or {}).values())

    def advanced_request(self, values: tuple) -> dict[str, Any]:
        return advanced_fields(list(self.advanced or {}), list(values))


def build_sampling_fields(labels, prefix: str, default_sampler: str,
                          batch: bool = True) -> tuple[dict[str, Any], Any]:
    """Sampler, schedule, steps, CFG, seed (with a random button), size, batch (unless `batch` is False) and clip
    skip by request field name, and the "last seed" button (wired by the caller, which keeps the last seed)."""
    steps_min, steps_max = field_bounds("steps")
    cfg_min, cfg_max = field_bounds("cfg_scale")
    size_max = field_bounds("width")[1]
    batch_max, count_max = field_bounds("batch_size")[1], field_bounds("n_iter")[1]
    with gr.Row():
        sampler = labels(gr.Dropdown, choices=SAMPLER_NAMES, value=default_sampler, label=Key("gen.sampler"),
                         elem_id=f"{prefix}-sampler")
        schedule = labels(gr.Dropdown, choices=SCHEDULE_LABELS, value=SCHEDULE_LABELS[0], label=Key("gen.schedule"),
                          elem_id=f"{prefix}-schedule")
    with gr.Row():
        steps = labels(gr.Slider, minimum=steps_min, maximum=steps_max, step=1, value=20, label=Key("gen.steps"),
                       elem_id=f"{prefix}-steps")
        cfg = labels(gr.Slider, minimum=cfg_min, maximum=cfg_max, step=0.5, value=7.0, label=Key("gen.cfg"),
                     elem_id=f"{prefix}-cfg")
    with gr.Row():
        width = labels(gr.Slider, minimum=0, maximum=size_max, step=8, value=0, label=Key("gen.width"),
                       info=Key("gen.size_info"), elem_id=f"{prefix}-width")
        height = labels(gr.Slider, minimum=0, maximum=size_max, step=8, value=0, label=Key("gen.height"),
                        info=Key("gen.size_info"), elem_id=f"{prefix}-height")
    batches = {}
    if batch:
        with gr.Row():
            batches["batch_size"] = labels(gr.Slider, minimum=1, maximum=batch_max, step=1, value=1,
                                           label=Key("gen.batch_size"), elem_id=f"{prefix}-batch-size")
            batches["n_iter"] = labels(gr.Slider, minimum=1, maximum=count_max, step=1, value=1,
                                       label=Key("gen.n_iter"), elem_id=f"{prefix}-n-iter")
    with gr.Row():
        seed = labels(gr.Number, value=-1, precision=0, minimum=-1, maximum=field_bounds("seed")[1],
                      label=Key("gen.seed"), info=Key("gen.seed_info"), scale=2, elem_id=f"{prefix}-seed")
        with gr.Column(scale=1, min_width=120):
            random_seed = labels(gr.Button, value=Key("gen.random_seed"), size="sm", elem_id=f"{prefix}-random-seed")
            reuse_seed = labels(gr.Button, value=Key("gen.reuse_seed"), size="sm", elem_id=f"{prefix}-reuse-seed")
        clip_skip = labels(gr.Slider, minimum=1, maximum=field_bounds("clip_skip")[1], step=1, value=1,
                           label=Key("gen.clip_skip"), scale=2, elem_id=f"{prefix}-clip-skip")
    random_seed.click(lambda: -1, None, seed, queue=False, api_visibility="private")
    fields = dict(sampler=sampler, schedule_type=schedule, steps=steps, cfg_scale=cfg, seed=seed, width=width,
                  height=height, clip_skip=clip_skip, **batches)
    return fields, reuse_seed


def build_results(labels, prefix: str) -> dict[str, Any]:
    """Generate/Interrupt buttons and the output gallery, parameters and status line."""
    with gr.Row():
        generate = labels(gr.Button, value=Key("gen.generate"), variant="primary", scale=3,
                          elem_id=f"{prefix}-generate")
        interrupt = labels(gr.Button, value=Key("gen.interrupt"), variant="stop", scale=1,
                           elem_id=f"{prefix}-interrupt")
    gallery = labels(gr.Gallery, label=Key("gen.output"), format="png", columns=2, height=360, interactive=False,
                     elem_id=f"{prefix}-output")
    parameters = labels(gr.Textbox, label=Key("gen.parameters"), lines=3, interactive=False,
                        elem_id=f"{prefix}-parameters")
    status = gr.Markdown(elem_id=f"{prefix}-status")
    return dict(generate=generate, interrupt=interrupt, gallery=gallery, parameters=parameters, status=status)


def common_request_fields(prompt, negative_prompt, styles, sampler, schedule_type, steps, cfg_scale, seed, width,
                          height, batch_size, n_iter, clip_skip, prefs) -> dict[str, Any]:
    """GenerateRequest fields from the values every generation tab has (sliders give floats)."""
    return dict(prompt=prompt or "", negative_prompt=negative_prompt or "", styles=list(styles or []),
                sampler=sampler, schedule_type=schedule_type, steps=int(steps), cfg_scale=float(cfg_scale),
                seed=int(seed if seed is not None else -1), width=size_or_default(width),
                height=size_or_default(height), batch_size=int(batch_size), n_iter=int(n_iter),
                clip_skip=int(clip_skip), model=(prefs or {}).get("model") or None,
                checkpoint_config=(prefs or {}).get("checkpoint_config"))


def wire_generation(studio, form: GenerationForm, run: Callable, inputs: list, language, prefs) -> None:
    """Generate (queued, one engine job at a time across all users), Interrupt (unqueued), seed reuse and the
    parameters of a clicked output image."""
    last_seed = gr.State(None)
    infotexts = gr.State([])
    outputs = [form.gallery, form.parameters, form.status, last_seed, infotexts]
    form.event = form.generate.click(run, [*inputs, language, prefs], outputs, api_name=form.mode,
                                     concurrency_id="engine", concurrency_limit=1, show_progress_on=[form.gallery])
    form.interrupt.click(studio.interrupt, language, form.status, queue=False, api_name=f"{form.mode}_interrupt")
    form.reuse_seed.click(reuse_last_seed, [form.fields["seed"], last_seed], form.fields["seed"], queue=False,
                          api_visibility="private")
    form.gallery.select(_selected_infotext, infotexts, form.parameters, queue=False, api_visibility="private")


def reuse_last_seed(seed: int, last: int | None) -> int:
    return seed if last is None else last


def _selected_infotext(texts: list[str], evt: gr.SelectData) -> str:
    index = evt.index if isinstance(evt.index, int) else 0
    return texts[index] if 0 <= index < len(texts) else ""


def generation_outputs(studio, request: GenerateRequest, language: str, prefs: dict, session: gr.Request,
                       progress) -> tuple:
    """Run `request` and return the values of the outputs wire_generation lists."""
    result = studio.generate(request, language, prefs, session, progress)
    texts = studio.texts[language]
    key = "status.interrupted" if result.interrupted else "status.done"
    status = texts[key].format(count=len(result.images), seed=result.seeds[0] if result.seeds else "-")
    first = result.infotexts[0] if result.infotexts else ""
    last_seed = result.request_used.seed
    return list(zip(result.images, [str(s) for s in result.seeds])), first, status, last_seed, result.infotexts


def build_txt2img(studio, labels, language, prefs) -> GenerationForm:
    form = layout(studio, labels, prefs, "txt2img", None)

    def txt2img(prompt, negative_prompt, styles, sampler, schedule_type, steps, cfg_scale, seed, width, height,
                batch_size, n_iter, clip_skip, subseed, subseed_strength, seed_resize_w, seed_resize_h, vae, shift,
                enable_hr, hr_upscaler, hr_scale, hr_steps, hr_denoising, script, x_type, x_values, y_type,
                y_values, z_type, z_values, legend, keep_seed, at_start, different, lines, iterate, language, prefs,
                session: gr.Request, progress=gr.Progress()):
        with readable_errors(labels.texts[language]):
            fields = common_request_fields(prompt, negative_prompt, styles, sampler, schedule_type, steps,
                                           cfg_scale, seed, width, height, batch_size, n_iter, clip_skip, prefs)
            fields.update(form.advanced_request((subseed, subseed_strength, seed_resize_w, seed_resize_h, vae, shift,
                                                 enable_hr, hr_upscaler, hr_scale, hr_steps, hr_denoising)))
            scripted = script_request(script, x_type, x_values, y_type, y_values, z_type, z_values, legend,
                                      keep_seed, at_start, different, lines, iterate)
            request = GenerateRequest.create(mode="txt2img", script=scripted, **fields)
            return generation_outputs(studio, request, language, prefs, session, progress)

    wire_generation(studio, form, txt2img, [*common_inputs(form), *form.advanced_inputs(), *form.script_inputs],
                    language, prefs)
    return form


BATCH_FIELDS = ("batch_mode", "input_dir", "output_dir", "mask_dir")  # the img2img tab's Batch sub-tab


def build_img2img(studio, labels, language, prefs) -> GenerationForm:
    def extra() -> dict[str, Any]:
        batch_mode = gr.State(False)  # which sub-tab is shown: A1111 runs the one in view
        with gr.Tabs(elem_id="img2img-source"):
            with labels(gr.Tab, label=Key("gen.single_image"), id="single", elem_id="img2img-single") as single:
                image = labels(gr.Image, label=Key("gen.init_image"), type="filepath", image_mode=None, height=280,
                               elem_id="img2img-image")
            with labels(gr.Tab, label=Key("batch.tab"), id="batch", elem_id="img2img-batch") as batch:
                input_dir = labels(gr.Textbox, value="", label=Key("batch.input_dir"), info=Key("batch.input_info"),
                                   elem_id="img2img-batch-input")
                output_dir = labels(gr.Textbox, value="", label=Key("batch.output_dir"),
                                    info=Key("batch.output_info"), elem_id="img2img-batch-output")
                mask_dir = labels(gr.Textbox, value="", label=Key("batch.mask_dir"), info=Key("batch.mask_info"),
                                  elem_id="img2img-batch-masks")
        for tab, shown in ((single, False), (batch, True)):
            tab.select(lambda shown=shown: shown, None, batch_mode, queue=False, api_visibility="private")
        return {"init_image": image, "batch_mode": batch_mode, "input_dir": input_dir, "output_dir": output_dir,
                "mask_dir": mask_dir}

    form = layout(studio, labels, prefs, "img2img", extra)

    def img2img(prompt, negative_prompt, styles, sampler, schedule_type, steps, cfg_scale, seed, width, height,
                batch_size, n_iter, clip_skip, init_image, denoising_strength, batch_mode, input_dir, output_dir,
                mask_dir, subseed, subseed_strength, seed_resize_w, seed_resize_h, vae, shift, left, right, up, down,
                script, x_type, x_values, y_type, y_values, z_type, z_values, legend, keep_seed, at_start, different,
                lines, iterate, language, prefs, session: gr.Request, progress=gr.Progress()):
        with readable_errors(labels.texts[language]):
            fields = common_request_fields(prompt, negative_prompt, styles, sampler, schedule_type, steps,
                                           cfg_scale, seed, width, height, batch_size, n_iter, clip_skip, prefs)
            fields.update(form.advanced_request((subseed, subseed_strength, seed_resize_w, seed_resize_h, vae, shift,
                                                 left, right, up, down)))
            scripted = script_request(script, x_type, x_values, y_type, y_values, z_type, z_values, legend,
                                      keep_seed, at_start, different, lines, iterate)
            if batch_mode or (input_dir and not init_image):  # the Batch sub-tab (an API caller has no tabs)
                if scripted is not None:
                    raise gr.Error(labels.texts[language]["error.batch_script"], print_exception=False)
                request, outdir = batch_request(fields, float(denoising_strength), input_dir, output_dir, mask_dir,
                                                labels.texts[language])
                prefs = {**(prefs or {}), "outputs_dir": outdir or (prefs or {}).get("outputs_dir")}
                return generation_outputs(studio, request, language, prefs, session, progress)
            if not init_image:
                raise gr.Error(labels.texts[language]["error.no_image"], print_exception=False)
            outpaint = any(fields[f"outpaint_{side}"] for side in ("left", "right", "up", "down"))
            if outpaint:  # the canvas is the input grown by the sides: its own size, not the sliders'
                fields.update(width=None, height=None, inpainting_fill=0)
            request = GenerateRequest.create(mode="inpaint" if outpaint else "img2img", init_image=str(init_image),
                                             denoising_strength=float(denoising_strength),
                                             script=scripted, **fields)
            return generation_outputs(studio, request, language, prefs, session, progress)

    inputs = [*common_inputs(form), form.fields["init_image"], form.fields["denoising_strength"],
              *(form.fields[name] for name in BATCH_FIELDS), *form.advanced_inputs(), *form.script_inputs]
    wire_generation(studio, form, img2img, inputs, language, prefs)
    return form


def batch_request(fields: dict[str, Any], denoising_strength: float, input_dir: str | None, output_dir: str | None,
                  mask_dir: str | None, texts: dict[str, str]) -> tuple[GenerateRequest, str | None]:
    """A1111's img2img Batch tab: the request running the engine's img2img batch script over the input folder's
    images (inpainting with the mask folder's masks of the same names), and the folder the results go to (None:
    the outputs folder). The tab's other fields apply to every image."""
    from pathlib import Path

    from huabu.engine.scripts.batch import folder_script

    if not (input_dir or "").strip():
        raise gr.Error(texts["error.no_folder"], print_exception=False)
    images, script = folder_script(Path(input_dir.strip()), Path(mask_dir.strip()) if (mask_dir or "").strip()
                                   else None)
    request = GenerateRequest.create(mode="img2img", init_image=str(images[0]), denoising_strength=denoising_strength,
                                     script=script, **fields)
    return request, (output_dir or "").strip() or None


def build_inpaint(studio, labels, language, prefs) -> GenerationForm:
    def extra() -> dict[str, Any]:
        editor = labels(gr.ImageMask, label=Key("gen.mask_editor"), type="pil", height=360, format="png",
                        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), elem_id="inpaint-editor")
        blur = labels(gr.Slider, minimum=0, maximum=field_bounds("mask_blur")[1], step=1, value=4,
                      label=Key("gen.mask_blur"), elem_id="inpaint-mask-blur")
        return {"editor": editor, "mask_blur": blur}

    form = layout(studio, labels, prefs, "inpaint", extra)

    def inpaint(prompt, negative_prompt, styles, sampler, schedule_type, steps, cfg_scale, seed, width, height,
                batch_size, n_iter, clip_skip, editor, mask_blur, denoising_strength, subseed, subseed_strength,
                seed_resize_w, seed_resize_h, vae, shift, fill, only_masked, padding, script, x_type, x_values, y_type,
                y_values, z_type, z_values, legend, keep_seed, at_start, different, lines, iterate, language, prefs,
                session: gr.Request, progress=gr.Progress()):
        with readable_errors(labels.texts[language]):
            fields = common_request_fields(prompt, negative_prompt, styles, sampler, schedule_type, steps,
                                           cfg_scale, seed, width, height, batch_size, n_iter, clip_skip, prefs)
            fields.update(form.advanced_request((subseed, subseed_strength, seed_resize_w, seed_resize_h, vae, shift,
                                                 fill, only_masked, padding)))
            image, mask = mask_from_editor(editor)
            scripted = script_request(script, x_type, x_values, y_type, y_values, z_type, z_values, legend,
                                      keep_seed, at_start, different, lines, iterate)
            request = GenerateRequest.create(mode="inpaint", init_image=data_url(image), mask=data_url(mask),
                                             mask_blur=int(mask_blur), denoising_strength=float(denoising_strength),
                                             script=scripted, **fields)
            return generation_outputs(studio, request, language, prefs, session, progress)

    inputs = [*common_inputs(form), form.fields["editor"], form.fields["mask_blur"],
              form.fields["denoising_strength"], *form.advanced_inputs(), *form.script_inputs]
    wire_generation(studio, form, inpaint, inputs, language, prefs)
    return form


# The sampling inputs of every generation handler, after prompt, negative prompt and styles.
SAMPLING_INPUTS = ("sampler", "schedule_type", "steps", "cfg_scale", "seed", "width", "height", "batch_size", "n_iter",
                   "clip_skip")


def common_inputs(form: GenerationForm) -> list:
    return [form.area.prompt, form.area.negative, form.area.styles, *(form.fields[n] for n in SAMPLING_INPUTS)]


def layout(studio, labels, prefs, mode: str, extra: Callable[[], dict[str, Any]] | None) -> GenerationForm:
    """Two columns: inputs (mode extras, prompt area, sampling fields) and results."""
    with gr.Row():
        with gr.Column(scale=3):
            extras = extra() if extra else {}
            area = build_prompt_area(labels, studio.book, mode, prefs, studio.reads_chinese)
            fields, reuse_seed = build_sampling_fields(labels, mode, studio.default_sampler)
            if mode in ("img2img", "inpaint"):
                fields["denoising_strength"] = labels(gr.Slider, minimum=0, maximum=1, step=0.01, value=0.75,
                                                      label=Key("gen.denoising"), elem_id=f"{mode}-denoising")
            mode_options = {"txt2img": lambda labels: build_hires(labels, studio.engine.upscalers.names()),
                            "inpaint": build_inpaint_options, "img2img": build_outpaint}
            advanced = None
            if mode in mode_options:
                advanced = {**build_variation(labels, mode, studio.settings.vae_dir), **mode_options[mode](labels)}
            # the three A1111 generation tabs have its Script dropdown; the ControlNet tab wires its own inputs
            scripts = build_script_area(labels, mode) if mode in ("txt2img", "img2img", "inpaint") else None
        with gr.Column(scale=2):
            results = build_results(labels, mode)
    fields.update(prompt=area.prompt, negative_prompt=area.negative, **extras)
    return GenerationForm(mode, area, fields, results["generate"], results["interrupt"], results["gallery"],
                          results["parameters"], results["status"], reuse_seed, advanced=advanced,
                          script_inputs=[scripts.script, *scripts.inputs] if scripts else [])
