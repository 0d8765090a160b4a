"""ControlNet preprocessors, in the engine layer: turn a reference image into the conditioning image a ControlNet
expects. Also the ControlNet weight layouts (convert.py) and control fidelity measures (fidelity.py); running
ControlNets is huabu.engine.controlnets.

    preprocess("canny", image, low=100, high=200) -> PIL RGB image

Every preprocessor takes `resolution` (sd-webui-controlnet's processor_res: the short side is scaled to it before
processing; None keeps the input size) and returns an RGB PIL image. Networks (HED, OpenPose, depth) take their
weights as an option (`weights=`: a file, a depth model folder / hub id, or an already loaded model), never from
global state; `find_annotator_weights` looks in a folder such as `<huabu home>/controlnet/annotators`.
"""

from __future__ import annotations

import importlib

# Public names and the module holding each. They load on first use (PEP 562) so that importing
# huabu.cli.control to register `huabu preprocess` does not pull in OpenCV and torch.
_EXPORTS = {
    "ALIASES": "registry", "PREPROCESSORS": "registry", "Preprocessor": "registry", "get_preprocessor": "registry",
    "passthrough": "registry", "preprocess": "registry",
    "canny": "canny", "color": "color", "glyph": "glyph", "glyph_map": "glyph",
    "DepthEstimator": "depth", "depth": "depth", "load_depth_model": "depth",
    "HEDNetwork": "softedge", "gradient_edges": "softedge", "hed": "softedge", "load_hed": "softedge",
    "softedge": "softedge",
    "BodyPoseNetwork": "pose", "detect_poses": "pose", "load_body_pose": "pose", "pose": "pose",
    "pose_json": "pose",
    "PoseCanvas": "skeleton", "draw_poses": "skeleton", "json_to_keypoints": "skeleton",
    "keypoints_to_json": "skeleton", "load_keypoints": "skeleton",
    "find_annotator_weights": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
