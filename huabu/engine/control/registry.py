"""The preprocessor registry: names -> functions, option checking, sd-webui-controlnet aliases."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.engine.control.canny import canny
from huabu.engine.control.color import color
from huabu.engine.control.depth import depth
from huabu.engine.control.glyph import glyph
from huabu.engine.control.images import fit_resolution, rgb_array
from huabu.engine.control.pose import pose, pose_json
from huabu.engine.control.softedge import gradient_edges, hed, softedge


def passthrough(image: Image.Image, resolution: int | None = None) -> Image.Image:
    """The image itself as RGB (already a control image), optionally scaled to `resolution`."""
    return Image.fromarray(fit_resolution(rgb_array(image, "none"), resolution), mode="RGB")


@dataclass(frozen=True)
class Preprocessor:
    """A named preprocessor: `function(image, **options)`; `needs_image` is False when options alone suffice."""

    name: str
    function: Callable[..., Image.Image]
    summary: str
    needs_image: bool = True

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(list(inspect.signature(self.function).parameters)[1:])


PREPROCESSORS: Mapping[str, Preprocessor] = MappingProxyType({p.name: p for p in (
    Preprocessor("canny", canny, "Canny edges (low/high thresholds)"),
    Preprocessor("softedge", softedge, "soft edges: HED with weights, else multi-scale gradients"),
    Preprocessor("softedge_hed", hed, "HED soft edges (needs weights)"),
    Preprocessor("softedge_gradient", gradient_edges, "weight-free multi-scale gradient soft edges"),
    Preprocessor("depth", depth, "depth (near = bright) from a transformers model or your own depth map",
                 needs_image=False),
    Preprocessor("pose", pose, "OpenPose skeleton: detected with body-model weights, or drawn from keypoints",
                 needs_image=False),
    Preprocessor("pose_json", pose_json, "draw an OpenPose keypoints JSON", needs_image=False),
    Preprocessor("color", color, "T2I-Adapter colour grid (or blur)"),
    Preprocessor("glyph", glyph, "words drawn white on black in a CJK font at their boxes (AnyText's glyph map)",
                 needs_image=False),
    Preprocessor("none", passthrough, "the image unchanged"),
)})

# sd-webui-controlnet module names that mean the same as ours (its HTTP API sends these).
ALIASES: Mapping[str, str] = MappingProxyType({
    "openpose": "pose", "depth_midas": "depth", "depth_anything": "depth", "depth_zoe": "depth",
    "t2ia_color_grid": "color",
})


def get_preprocessor(name: str) -> Preprocessor:
    """The preprocessor called `name` (or an sd-webui-controlnet alias); unknown names list the valid ones."""
    key = ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in PREPROCESSORS:
        raise InvalidRequest(f"unknown preprocessor {name!r}; choose one of: {', '.join(PREPROCESSORS)}")
    return PREPROCESSORS[key]


def preprocess(name: str, image: Image.Image | None, **options) -> Image.Image:
    """Run preprocessor `name` on `image` with its options; unknown options and bad values are one-line errors."""
    preprocessor = get_preprocessor(name)
    unknown = sorted(set(options) - set(preprocessor.options))
    if unknown:
        raise InvalidRequest(f"{preprocessor.name} does not take option(s) {', '.join(unknown)}; it takes: "
                             f"{', '.join(preprocessor.options)}")
    if image is None and preprocessor.needs_image:
        raise InvalidRequest(f"{preprocessor.name} needs an input image")
    return preprocessor.function(image, **options)

