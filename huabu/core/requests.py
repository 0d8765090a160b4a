"""Request models shared by the CLI, the web UI and the HTTP API: a job is plain JSON data.

`GenerateRequest.model_validate(data)` raises pydantic's ValidationError (FastAPI turns it into a 422);
`GenerateRequest.create(**fields)` / `GenerateRequest.from_data(data)` raise InvalidRequest with one line naming the
field, its allowed range and the value given, which is what the CLI shows.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from huabu.core.control_units import control_mode_name, resize_mode_name
from huabu.core.errors import InvalidRequest
from huabu.core.ip_adapters import DEFAULT_MODULE, ip_adapter_module_name
from huabu.core.samplers import parse_sampler
from huabu.core.text_boxes import MAX_TEXT_BOXES, MAX_WORD_LENGTH, check_box, quoted_words

Mode = Literal["txt2img", "img2img", "inpaint"]

MAX_SEED = 2**32 - 1


class LoraSpec(BaseModel):
    """A LoRA to apply by name (a file in the LoRA folder), as `<lora:name:weight>` in a prompt would."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    weight: float = Field(default=1.0, ge=-10.0, le=10.0)
    te_weight: float | None = Field(default=None, ge=-10.0, le=10.0)


class ControlUnit(BaseModel):
    """One ControlNet unit, shaped like sd-webui-controlnet's API unit (see huabu.engine.controlnets).

    `image` is a path or data URL (raw base64 too); None uses the img2img/inpaint input image. `model` is a name in
    the ControlNet folder ("name [hash]" too), a path, or empty for the folder's model whose name holds the module's
    name. As in the extension, -1 for processor_res / thresholds and "None" for model mean "not set"."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    module: str = "none"
    model: str = ""
    image: str | None = None
    weight: float = Field(default=1.0, ge=0.0, le=2.0)
    resize_mode: str = "Crop and Resize"
    processor_res: int = Field(default=512, ge=64, le=4096)
    threshold_a: float | None = None
    threshold_b: float | None = None
    guidance_start: float = Field(default=0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(default=1.0, ge=0.0, le=1.0)
    control_mode: str = "Balanced"
    pixel_perfect: bool = False

    @field_validator("model", mode="before")
    @classmethod
    def _unset_model(cls, value: Any) -> Any:
        return "" if value is None or value == "None" else value

    @field_validator("processor_res", mode="before")
    @classmethod
    def _unset_resolution(cls, value: Any) -> Any:
        return 512 if isinstance(value, (int, float)) and value < 0 else value

    @field_validator("threshold_a", "threshold_b", mode="before")
    @classmethod
    def _unset_threshold(cls, value: Any) -> Any:
        return None if isinstance(value, (int, float)) and value < 0 else value

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_mode(cls, value: Any) -> str:
        return resize_mode_name(value)

    @field_validator("control_mode", mode="before")
    @classmethod
    def _control_mode(cls, value: Any) -> str:
        return control_mode_name(value)

    @model_validator(mode="after")
    def _guidance_window(self) -> ControlUnit:
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start ({self.guidance_start}) must not exceed guidance_end "
                             f"({self.guidance_end})")
        return self


class TextBox(BaseModel):
    """A word to draw and its box (x0, y0, x1, y1 in output pixels; huabu.core.text_boxes), for the glyph unit.
    A bare `[x0, y0, x1, y1]` is a box for the next word the prompt quotes; an empty text means the same."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(default="", max_length=MAX_WORD_LENGTH)
    box: list[int] | None = None  # None: laid out automatically

    @model_validator(mode="before")
    @classmethod
    def _bare_box(cls, value: Any) -> Any:
        return {"box": value} if isinstance(value, (list, tuple)) else value

    @field_validator("box", mode="before")
    @classmethod
    def _box(cls, value: Any) -> Any:
        return None if value is None else list(check_box(value))


class IPAdapterSpec(BaseModel):
    """One IP-Adapter image prompt (huabu.engine.ip_adapters): a reference image steering the picture at `weight`.

    `image` is a path or data URL (raw base64 too); None uses the img2img/inpaint input image. `model` is a weights
    file in the IP-Adapter folder ("name [hash]" too, as sd-webui-controlnet titles it), a path, or empty for the
    folder's only one. `module` is the extension's preprocessor name, kept for the infotext."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    weight: float = Field(default=1.0, ge=0.0, le=2.0)
    model: str = ""
    module: str = DEFAULT_MODULE

    @field_validator("model", mode="before")
    @classmethod
    def _unset_model(cls, value: Any) -> Any:
        return "" if value is None or value == "None" else value

    @field_validator("module", mode="before")
    @classmethod
    def _module(cls, value: Any) -> str:
        return ip_adapter_module_name(value)


class ScriptRequest(BaseModel):
    """An A1111 script that runs the generation several times with changed requests (huabu.engine.scripts): `name`
    as A1111 titles it ("x/y/z plot", "prompt matrix", "prompts from file or textbox", any case), `args` A1111's
    positional `script_args` or the same by name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    args: list[Any] | dict[str, Any] = Field(default_factory=dict)


class RequestModel(BaseModel):
    """A job as plain JSON data: unknown fields are refused, and bad input becomes one InvalidRequest line."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def create(cls, **fields: Any) -> RequestModel:
        """Validate keyword fields; bad input raises InvalidRequest with a one-line message."""
        return cls.from_data(fields)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> RequestModel:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise InvalidRequest(one_line(err)) from None

    def to_data(self) -> dict[str, Any]:
        """JSON-ready dict (what a job row, an API response or a test stores)."""
        return self.model_dump(mode="json")


def _check_sampler(sampler: str, schedule_type: str | None = None) -> None:
    """A sampler (and schedule type) parse_sampler knows, else ValueError for pydantic to report."""
    try:
        parse_sampler(sampler, schedule_type)
    except InvalidRequest as err:
        raise ValueError(str(err)) from None


def _check_steps_left(steps: int, strength: float) -> None:
    # diffusers runs int(steps * strength) steps of an img2img/inpaint schedule; zero would return nothing.
    if int(steps * strength) < 1:
        raise ValueError(f"denoising strength {strength} with {steps} steps leaves no step to run; raise the "
                         f"strength or the steps (steps x strength must be at least 1)")


class SamplingRequest(RequestModel):
    """The fields every generating request shares: the prompt, how it is sampled and the size. A request kind adds
    its own after these."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    steps: int = Field(default=20, ge=1, le=150)
    cfg_scale: float = Field(default=7.0, ge=0.0, le=30.0)
    sampler: str = "DPM++ 2M"
    schedule_type: str = "Automatic"
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    width: int | None = Field(default=None, ge=8, le=4096)
    height: int | None = Field(default=None, ge=8, le=4096)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        _check_sampler(value)
        return value

    @model_validator(mode="after")
    def _known_schedule(self) -> SamplingRequest:
        _check_sampler(self.sampler, self.schedule_type)  # unknown schedule types fail here
        return self


class GenerateRequest(SamplingRequest):
    """One txt2img / img2img / inpaint job. Images are file paths or `data:image/...;base64,` URLs."""

    mode: Mode = "txt2img"
    batch_size: int = Field(default=1, ge=1, le=16)
    n_iter: int = Field(default=1, ge=1, le=100)
    model: str | None = None
    # For single-file checkpoints whose kind cannot be detected: a bundled config name or a diffusers folder.
    checkpoint_config: str | None = None
    vae: str | None = None  # a VAE in the VAE folder or a path; None: the model's own (A1111's sd_vae)
    init_image: str | None = None
    mask: str | None = None
    denoising_strength: float = Field(default=0.75, ge=0.0, le=1.0)
    mask_blur: int = Field(default=4, ge=0, le=64)
    clip_skip: int = Field(default=1, ge=1, le=12)
    loras: list[LoraSpec] = Field(default_factory=list)
    controlnets: list[ControlUnit] = Field(default_factory=list)
    ip_adapters: list[IPAdapterSpec] = Field(default_factory=list, max_length=8)  # image prompts
    # Words the glyph unit draws: one per quoted word of the prompt, in order (huabu.core.text_boxes).
    text_boxes: list[TextBox] = Field(default_factory=list, max_length=MAX_TEXT_BOXES)
    # Inpainting as A1111 offers it: what the masked area starts from (0 fill, 1 original, 2 latent noise,
    # 3 latent nothing) and "only masked" (inpaint a crop around the mask, padded, at the generation size).
    inpainting_fill: int = Field(default=1, ge=0, le=3)
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = Field(default=32, ge=0, le=1024)
    # Outpainting (inpaint mode, no mask): the canvas grows by these many pixels and the new border is painted.
    outpaint_left: int = Field(default=0, ge=0, le=2048)
    outpaint_right: int = Field(default=0, ge=0, le=2048)
    outpaint_up: int = Field(default=0, ge=0, le=2048)
    outpaint_down: int = Field(default=0, ge=0, le=2048)
    # Variation seeds (A1111): the seed's noise slerped towards the subseed's; -1 picks a random subseed.
    subseed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(default=0.0, ge=0.0, le=1.0)
    # Draw the noise at this size and centre it in the output's (keeps a composition across sizes); <= 0: off.
    seed_resize_from_w: int = Field(default=0, ge=-1, le=4096)
    seed_resize_from_h: int = Field(default=0, ge=-1, le=4096)
    # A1111's ENSD: ancestral and SDE samplers draw their step noise from seed + this (start noise: the seed's).
    eta_noise_seed_delta: int = Field(default=0, ge=0, le=MAX_SEED)
    # Flow-matching models (SD3, FLUX): the sigma shift, as ComfyUI's ModelSamplingSD3 sets it; None: the model's
    # own (FLUX's grows with the image size). Higher values spend more steps at high noise, where layout is made.
    shift: float | None = Field(default=None, gt=0.0, le=100.0)
    # Hires fix (txt2img): upscale the first pass to hr_scale (or hr_resize_x/y) and repaint it with img2img at
    # denoising_strength for hr_second_pass_steps (0: steps).
    enable_hr: bool = False
    hr_scale: float = Field(default=2.0, ge=1.0, le=8.0)
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = Field(default=0, ge=0, le=150)
    hr_resize_x: int = Field(default=0, ge=0, le=8192)
    hr_resize_y: int = Field(default=0, ge=0, le=8192)
    hr_sampler: str | None = None  # None: the first pass's sampler
    hr_prompt: str = ""  # "": the prompt
    hr_negative_prompt: str = ""
    script: ScriptRequest | None = None

    @field_validator("hr_sampler")
    @classmethod
    def _known_hr_sampler(cls, value: str | None) -> str | None:
        if value is not None:
            _check_sampler(value)
        return value

    @property
    def outpaint(self) -> tuple[int, int, int, int] | None:
        """(left, right, up, down) pixels to grow the canvas by, when outpainting."""
        sides = (self.outpaint_left, self.outpaint_right, self.outpaint_up, self.outpaint_down)
        return sides if any(sides) else None

    @property
    def seed_resize(self) -> tuple[int, int] | None:
        """(width, height) the noise is drawn at, when seed_resize_from_w/h are both set."""
        if self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0:
            return self.seed_resize_from_w, self.seed_resize_from_h
        return None

    def to_data(self) -> dict[str, Any]:
        data = super().to_data()
        if data.get("script") is None:  # requests without a script keep the JSON they always had
            data.pop("script", None)
        if not data.get("ip_adapters"):  # nor do requests without image prompts
            data.pop("ip_adapters", None)
        if not data.get("text_boxes"):  # nor those without text boxes
            data.pop("text_boxes", None)
        return data

    @model_validator(mode="after")
    def _words(self) -> GenerateRequest:
        """Text boxes without their word take the prompt's quoted words in order."""
        words = quoted_words(self.prompt)
        for index, box in enumerate(self.text_boxes):
            if not box.text:
                if index >= len(words):
                    raise ValueError(f"text box {index + 1} has no word: the prompt quotes {len(words)} "
                                     f"(write the words in quotes, one box per quoted word)")
                box.text = words[index]
        return self

    @model_validator(mode="after")
    def _mode_inputs(self) -> GenerateRequest:
        if self.mode in ("img2img", "inpaint") and not self.init_image:
            raise ValueError(f"{self.mode} needs an input image (init_image / --image)")
        if self.outpaint and (self.mode != "inpaint" or self.mask):
            raise ValueError("outpainting is inpaint mode without a mask: the new border is the mask")
        if self.mode == "inpaint" and not self.mask and not self.outpaint:
            raise ValueError("inpaint needs a mask image (mask / --mask): white = repaint, black = keep")
        if self.mode == "txt2img" and (self.init_image or self.mask):
            raise ValueError("txt2img takes no input image or mask; use mode img2img or inpaint")
        if self.mode == "txt2img" and any(spec.image is None for spec in self.ip_adapters):
            raise ValueError("an IP-Adapter image prompt needs an image in txt2img (ip_adapters[].image / "
                             "--ip-adapter IMAGE); only img2img/inpaint ones may use the input image")
        if self.mode != "txt2img":
            _check_steps_left(self.steps, self.denoising_strength)
        if self.enable_hr:
            if self.mode != "txt2img":
                raise ValueError(f"the hires fix (enable_hr) is a txt2img option; {self.mode} takes the size you ask "
                                 f"for directly")
            if self.denoising_strength <= 0:
                raise ValueError("the hires fix needs a denoising strength above 0 (0 would leave the upscale as is)")
        return self


VideoFormat = Literal["mp4", "gif", "webm"]


class VideoRequest(SamplingRequest):
    """One video: text-to-video, or image-to-video when `init_image` is given (its first frame stays close to the
    image). Runs an AnimateDiff motion module on an SD 1.x-shaped model, or a ModelScope / I2VGen-XL video model
    when `model` is one; prompt syntax, samplers, seeds and LoRAs work as for stills."""

    frames: int = Field(default=16, ge=2, le=128)
    fps: int = Field(default=8, ge=1, le=60)
    model: str | None = None
    checkpoint_config: str | None = None
    # A name in the motion folder, a diffusers MotionAdapter folder, a .safetensors file or a hub id; None = the
    # model folder's own `motion_adapter/`, else the only module in the motion folder.
    motion_module: str | None = None
    init_image: str | None = None
    denoising_strength: float = Field(default=0.8, ge=0.0, le=1.0)  # how far frames may move from init_image
    anchor_first_frame: bool = True  # re-inject the image's latents into frame 0 at every step
    sparse_control: str | None = None  # a SparseCtrl RGB model (folder, name in the ControlNet folder, hub id)
    sparse_control_scale: float = Field(default=1.0, ge=0.0, le=2.0)
    clip_skip: int = Field(default=1, ge=1, le=12)
    loras: list[LoraSpec] = Field(default_factory=list)
    controlnets: list[ControlUnit] = Field(default_factory=list)
    format: VideoFormat = "mp4"

    @model_validator(mode="after")
    def _inputs(self) -> VideoRequest:
        if self.sparse_control and not self.init_image:
            raise ValueError("sparse_control (SparseCtrl RGB) animates an image: give init_image / --image too")
        if self.init_image and not self.sparse_control:
            _check_steps_left(self.steps, self.denoising_strength)
        return self


_RANGE_WORDS = {"greater_than_equal": "at least {ge}", "less_than_equal": "at most {le}",
                "greater_than": "more than {gt}", "less_than": "less than {lt}"}


def one_line(err: ValidationError) -> str:
    """First validation problem as `field must be ... (got X)`; `value_error`s keep their own message."""
    first = err.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"]) or "request"
    kind, ctx, given = first["type"], first.get("ctx") or {}, first.get("input")
    if kind == "value_error":
        message = str(ctx.get("error", first["msg"]))
        last = first["loc"][-1] if first["loc"] else None
        named = last is None or (isinstance(last, str) and last.replace("_", " ") in message.lower())
        return message if named else f"{field}: {message}"
    if kind in _RANGE_WORDS:
        bounds = _field_bounds(err.title, first["loc"])
        if bounds:
            return f"{field} must be between {bounds[0]} and {bounds[1]} (got {given})"
        return f"{field} must be {_RANGE_WORDS[kind].format(**ctx)} (got {given})"
    if kind == "extra_forbidden":
        return f"unknown field {field!r}"
    if kind == "literal_error":
        return f"{field} must be {ctx.get('expected')} (got {given!r})"
    return f"{field}: {first['msg'].lower()} (got {given!r})"


_MODELS = {"GenerateRequest": GenerateRequest, "VideoRequest": VideoRequest, "ControlUnit": ControlUnit,
           "LoraSpec": LoraSpec}


def _field_bounds(title: str, loc: tuple) -> tuple[Any, Any] | None:
    """(ge, le) of the field at `loc` when both are set, to say "between a and b" rather than one side."""
    model = _MODELS.get(title)
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            if isinstance(part, int):
                continue
            return None
        info = model.model_fields[part]
        nested = {"controlnets": ControlUnit, "loras": LoraSpec}.get(part)
        if nested is not None and part != loc[-1]:
            model = nested
            continue
        ge = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
        le = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
        return (ge, le) if ge is not None and le is not None else None
    return None
