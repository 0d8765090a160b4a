"""User-supplied annotator weights: read safely (safetensors, or pickle only when allowed) and found by name.

No pip wheel ships HED or OpenPose weights, so users download them (lllyasviel/Annotators on the hub) into
`<huabu home>/controlnet/annotators`; callers pass that folder to `find_annotator_weights`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huabu.core.errors import ModelNotFound
from huabu.engine.checkpoints import load_state_dict

# The public file names, safetensors conversions first (a pickle file is only used when the caller allows it).
ANNOTATOR_FILES: dict[str, tuple[str, ...]] = {
    "softedge_hed": ("ControlNetHED.safetensors", "ControlNetHED_Apache2.safetensors", "network-bsds500.safetensors",
                     "ControlNetHED.pth", "ControlNetHED_Apache2.pth", "network-bsds500.pth"),
    "pose": ("body_pose_model.safetensors", "body_pose_model.pth"),
}


def read_weights(weights: str | os.PathLike, what: str, allow_unsafe_pickle: bool = False) -> dict[str, Any]:
    """The state dict in `weights`; format judged by the bytes, pickle refused unless `allow_unsafe_pickle`."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"{what} weights not found: {path} (download them and pass the file's path)")
    return load_state_dict(path, allow_pickle=allow_unsafe_pickle)


def find_annotator_weights(folder: str | os.PathLike, name: str, allow_unsafe_pickle: bool = False) -> Path | None:
    """The first known weights file for preprocessor `name` ("softedge_hed", "pose") in `folder`, or None."""
    for filename in ANNOTATOR_FILES.get(name, ()):
        if filename.endswith(".pth") and not allow_unsafe_pickle:
            continue
        path = Path(folder).expanduser() / filename
        if path.is_file():
            return path
    return None
