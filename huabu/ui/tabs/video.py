"""The video tab: text-to-video, or image-to-video when an image is given, through Engine.generate_video, with
progress, Interrupt and playback of the result."""

from typing import Any

import gradio as gr

from huabu.core.requests import VideoRequest
from huabu.ui.fields import field_bounds, size_or_default
from huabu.ui.i18n import Key
from huabu.ui.jobs import readable_errors
from huabu.ui.prompt_area import build_prompt_area
from huabu.ui.tabs.generate import build_sampling_fields, reuse_last_seed

FORMATS = ("mp4", "webm")  # what a browser's <video> plays; the CLI also writes GIFs


def motion_choices(studio, language: str) -> list[tuple[str, str]]:
    from huabu.engine.motion_modules import list_motion_modules

    auto = (studio.texts[language]["video.motion_auto"], "")
    return [auto, *((ref.name, ref.name) for ref in list_motion_modules(studio.settings.motion_dir))]


def build_video(studio, labels, language, prefs) -> dict[str, Any]:
    frames_min, frames_max = field_bounds("frames", VideoRequest)
    fps_min, fps_max = field_bounds("fps", VideoRequest)
    with gr.Row():
        with gr.Column(scale=3):
            image = labels(gr.Image, label=Key("video.init_image"), type="filepath", image_mode=None, height=220,
                           elem_id="video-image")
            area = build_prompt_area(labels, studio.book, "video", prefs, studio.reads_chinese)
            fields, reuse_seed = build_sampling_fields(labels, "video", studio.default_sampler, batch=False)
            with gr.Row():
                frames = labels(gr.Slider, minimum=frames_min, maximum=frames_max, step=1, value=16,
                                label=Key("video.frames"), elem_id="video-frames")
                fps = labels(gr.Slider, minimum=fps_min, maximum=fps_max, step=1, value=8, label=Key("video.fps"),
                             elem_id="video-fps")
            with gr.Row():
                motion = labels.register(
                    gr.Dropdown(choices=motion_choices(studio, labels.language), value="",
                                label=labels.text("video.motion"), elem_id="video-motion"),
                    lambda lang: {"choices": motion_choices(studio, lang), "label": labels.text("video.motion", lang)})
                fmt = labels(gr.Dropdown, choices=list(FORMATS), value=FORMATS[0], label=Key("video.format"),
                             elem_id="video-format")
                denoising = labels(gr.Slider, minimum=0, maximum=1, step=0.01, value=0.8, label=Key("video.strength"),
                                   elem_id="video-denoising")
        with gr.Column(scale=2):
            with gr.Row():
                generate = labels(gr.Button, value=Key("video.generate"), variant="primary", scale=3,
                                  elem_id="video-generate")
                interrupt = labels(gr.Button, value=Key("gen.interrupt"), variant="stop", scale=1,
                                   elem_id="video-interrupt")
            video = labels(gr.Video, label=Key("video.output"), autoplay=True, loop=True, interactive=False,
                           elem_id="video-output")
            parameters = labels(gr.Textbox, label=Key("gen.parameters"), lines=3, interactive=False,
                                elem_id="video-parameters")
            status = gr.Markdown(elem_id="video-status")
    last_seed = gr.State(None)

    def make_video(prompt, negative_prompt, styles, sampler, schedule_type, steps, cfg_scale, seed, width, height,
                   clip_skip, init_image, frames, fps, motion_module, video_format, denoising_strength, language, prefs,
                   session: gr.Request, progress=gr.Progress()):
        texts = labels.texts[language]
        with readable_errors(texts):
            request = VideoRequest.create(
                prompt=prompt or "", negative_prompt=negative_prompt or "", styles=list(styles or []),
                sampler=sampler, schedule_type=schedule_type, steps=int(steps), cfg_scale=float(cfg_scale),
                seed=int(seed if seed is not None else -1), width=size_or_default(width),
                height=size_or_default(height), clip_skip=int(clip_skip), frames=int(frames), fps=int(fps),
                motion_module=motion_module or None, format=video_format,
                init_image=str(init_image) if init_image else None, denoising_strength=float(denoising_strength),
                model=(prefs or {}).get("model") or None, checkpoint_config=(prefs or {}).get("checkpoint_config"))
            result = studio.generate_video(request, language, prefs, session, progress)
        key = "status.video_interrupted" if result.interrupted else "status.video_done"
        shown = studio.displayable(result.path) if result.path else None
        return shown, result.infotext, texts[key].format(frames=len(result.frames), seed=result.seed), result.seed

    inputs = [area.prompt, area.negative, area.styles, *(fields[n] for n in (
        "sampler", "schedule_type", "steps", "cfg_scale", "seed", "width", "height", "clip_skip")),
        image, frames, fps, motion, fmt, denoising, language, prefs]
    event = generate.click(make_video, inputs, [video, parameters, status, last_seed], api_name="video",
                           concurrency_id="engine", concurrency_limit=1, show_progress_on=[video])
    interrupt.click(studio.interrupt, language, status, queue=False, api_name="video_interrupt")
    reuse_seed.click(reuse_last_seed, [fields["seed"], last_seed], fields["seed"], queue=False,
                     api_visibility="private")
    return {"area": area, "fields": fields, "event": event, "generate": generate}
