"""The course's applications as data: `AppRequest` (one request shape for replace, try-on, instant-id and portrait,
the same from argparse, a gradio form or an HTTP body) and how an app's inputs are named in an infotext.

An app output's infotext is the inpaint / txt2img infotext of the generation it ran plus `App: NAME` and the app's
own `App ...` fields (rows in huabu.core.fields). Input images are recorded by the hash of their pixels, never by
path: a path means nothing on another machine or after a file moves, and leaks folder names into every PNG shared,
while a pixel hash lets `huabu reproduce` check that the images it is given are the ones the output was made from
(a PNG re-saved or a data URL of the same picture still matches).

Import-light (no torch): the faces validate requests with it before anything heavy loads.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from huabu.core.requests import SamplingRequest

APPS = ("replace", "try-on", "instant-id", "portrait")
AppName = Literal["replace", "try-on", "instant-id", "portrait"]
Keep = Literal["subject", "background"]
# The apps whose one output a generation makes, so that `reproduce` can remake it from its infotext.
REPRODUCIBLE = ("replace", "try-on", "instant-id")
# The apps a native API job runs (portrait trains on a photos folder of the machine it runs on).
API_APPS = REPRODUCIBLE
HASH_LENGTH = 10  # as A1111's short hashes
_NUMBERS = re.compile(r"^\s*-?\d+(\s*,\s*-?\d+)*\s*$")


def parse_numbers(text: str, count: int, what: str) -> list[int]:
    """`X,Y` or `X0,Y0,X1,Y1` -> whole numbers, else ValueError naming the form wanted."""
    if not _NUMBERS.match(str(text)) or len(str(text).split(",")) != count:
        form = "X,Y" if count == 2 else "X0,Y0,X1,Y1"
        raise ValueError(f"{what} must be {form} in pixels (got {str(text)[:40]!r})")
    return [int(part) for part in str(text).split(",")]


def format_numbers(values: list[int] | tuple[int, ...]) -> str:
    return ",".join(str(int(value)) for value in values)


class AppRequest(SamplingRequest):
    """One app run. Images are file paths or `data:image/...;base64,` URLs.

    replace: `image` plus the subject as `point`, `box` or `mask` (white = subject); `keep` says which part stays
    pixel for pixel, the rest is repainted from the prompt. try-on: `image` (the target), the region as `mask`
    (white = the region) or `box`, and `reference` (the item) as the IP-Adapter image. instant-id: `reference` (the
    face or subject), txt2img from the prompt. portrait: `photos` (a folder) and `name` (the subject's trigger word),
    rendered in the prompt-book `styles` (all of them when empty) up to `count`."""

    app: AppName
    model: str | None = None
    image: str | None = None
    mask: str | None = None
    point: list[int] | None = None
    box: list[int] | None = None
    keep: Keep = "subject"
    sam: str | None = None  # a transformers SamModel folder (a name in ~/.huabu/sam, or a path); None: GrabCut
    reference: str | None = None
    ip_adapter_model: str = ""  # "": the IP-Adapter folder's only one
    ip_adapter_weight: float = Field(default=0.8, ge=0.0, le=2.0)
    controlnet: str | None = None  # try-on: a ControlNet for the region's shape; instant-id: "" picks one, None off
    denoising_strength: float = Field(default=1.0, gt=0.0, le=1.0)
    photos: str | None = None
    name: str | None = Field(default=None, max_length=40)
    count: int = Field(default=4, ge=1, le=64)  # portrait: how many styles to render
    train_steps: int = Field(default=400, ge=1, le=100_000)  # the hbdragon subject recipe's length
    rank: int = Field(default=8, ge=1, le=256)
    resume: bool = False
    # portrait: the fraction of the steps drawn from the subject's words alone before the style's join (A1111 prompt
    # editing, [subject:styled:when]); 0 styles every step. A small model that knows few of a style's words keeps
    # the subject only when its shape is set first.
    style_start: float = Field(default=0.0, ge=0.0, lt=1.0)

    @field_validator("point", mode="before")
    @classmethod
    def _point(cls, value: Any) -> Any:
        return parse_numbers(value, 2, "point") if isinstance(value, str) else value

    @field_validator("box", mode="before")
    @classmethod
    def _box(cls, value: Any) -> Any:
        return parse_numbers(value, 4, "box") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _inputs(self) -> AppRequest:
        if self.point is not None and len(self.point) != 2:
            raise ValueError("point must be X,Y in pixels")
        if self.box is not None and (len(self.box) != 4 or self.box[0] >= self.box[2] or self.box[1] >= self.box[3]):
            raise ValueError(f"box must be X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1 (got {self.box})")
        if self.app in ("replace", "try-on") and not self.image:
            raise ValueError(f"{self.app} needs an input image (image / --image)")
        if self.app == "replace" and sum(x is not None for x in (self.point, self.box, self.mask)) != 1:
            raise ValueError("replace needs the subject as exactly one of point (--point X,Y), box (--box "
                             "X0,Y0,X1,Y1) or mask (--mask M)")
        if self.app == "try-on" and (self.mask is None) == (self.box is None):
            raise ValueError("try-on needs the region to dress as exactly one of mask (--mask M) or box (--box "
                             "X0,Y0,X1,Y1)")
        if self.app in ("try-on", "instant-id") and not self.reference:
            raise ValueError(f"{self.app} needs a reference image (reference / --reference)")
        if self.app == "portrait" and (not self.photos or not self.name):
            raise ValueError("portrait needs a photos folder (photos / --photos) and the subject's name (--name)")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ValueError(f"name must be letters, digits, - or _ (it becomes the trigger word); got {self.name!r}")
        return self

    def to_data(self) -> dict[str, Any]:
        """JSON data without the fields left at None (an app's request stays short)."""
        return {key: value for key, value in super().to_data().items() if value is not None}


def app_infotext_fields(request: AppRequest, hashes: dict[str, str], control: str | None = None) -> dict[str, str]:
    """The `App ...` infotext fields of an app output: the app, its geometry and keep choice, the segmenter, and
    the pixel hashes of its input images (`hashes`: "image", "mask", "reference")."""
    fields = {"App": request.app}
    if request.app == "replace":
        fields["App keep"] = request.keep
        fields["App segmenter"] = "sam" if request.sam else "grabcut"
    if request.point is not None:
        fields["App point"] = format_numbers(request.point)
    if request.box is not None:
        fields["App box"] = format_numbers(request.box)
    for what in ("image", "mask", "reference"):
        if what in hashes:
            fields[f"App {what}"] = hashes[what]
    if control:
        fields["App control"] = control
    return fields
