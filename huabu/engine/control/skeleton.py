"""OpenPose body skeletons: the COCO-18 keypoint layout, the OpenPose JSON format, and the stick-figure renderer
whose look (limb colours, stick width, dimmed limbs under full-colour joints) the openpose ControlNet learned.

JSON is OpenPose's output format as sd-webui-controlnet's pose editor exports it:
`{"people": [{"pose_keypoints_2d": [x, y, c, ...]}], "canvas_width": W, "canvas_height": H}`, pixel coordinates,
c = 0 for a missing point. Normalised coordinates (all in [0, 1]) and OpenPose's BODY_25 layout are read too.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from huabu.core.errors import InvalidRequest

KEYPOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye", "left_eye",
    "right_ear", "left_ear",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# Limbs as (from, to) keypoint indices, in the order of the CMU model's part-affinity fields. The renderer draws
# the first 17; the last two (shoulder -> ear) only help the decoder tie heads to bodies.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)
DRAWN_LIMBS = 17

# One RGB colour per keypoint; limb i is drawn in colour i at LIMB_BRIGHTNESS.
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
STICK_WIDTH = 4
JOINT_RADIUS = 4
LIMB_BRIGHTNESS = 0.6

# OpenPose BODY_25 -> COCO-18 (BODY_25 adds a mid-hip at 8 and six foot points at the end).
_BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

Keypoint = tuple[float, float, float]  # x, y in pixels, confidence
Person = list  # NUM_KEYPOINTS entries, each a Keypoint or None


@dataclass(frozen=True)
class PoseCanvas:
    """People's keypoints on a canvas; width/height are None when the JSON did not say (OpenPose's own output)."""

    people: list[Person] = field(default_factory=list)
    width: int | None = None
    height: int | None = None


def keypoints_to_json(poses: PoseCanvas) -> str:
    """OpenPose JSON text for `poses` (pixel coordinates; missing points as 0, 0, 0)."""
    people = []
    for person in poses.people:
        flat: list[float] = []
        for point in person:
            flat.extend((float(point[0]), float(point[1]), float(point[2])) if point is not None else (0.0, 0.0, 0.0))
        people.append({"pose_keypoints_2d": flat})
    document: dict[str, object] = {"people": people}
    if poses.width is not None and poses.height is not None:
        document["canvas_width"], document["canvas_height"] = poses.width, poses.height
    return json.dumps(document, indent=2)


def _canvas_size(document: dict, key: str) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value) or not 0 < value <= 16384:
        raise InvalidRequest(f"keypoints JSON {key} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def _person(values: object, index: int) -> Person | None:
    if not values:
        return None
    if not isinstance(values, list) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise InvalidRequest(f"keypoints JSON person {index}: pose_keypoints_2d must be a list of numbers")
    if len(values) == 25 * 3:
        triples = [values[3 * i:3 * i + 3] for i in _BODY25_TO_COCO18]
    elif len(values) == NUM_KEYPOINTS * 3:
        triples = [values[3 * i:3 * i + 3] for i in range(NUM_KEYPOINTS)]
    else:
        raise InvalidRequest(f"keypoints JSON person {index}: pose_keypoints_2d has {len(values)} numbers; expected "
                             f"{NUM_KEYPOINTS * 3} (COCO-18 x, y, confidence) or 75 (BODY_25)")
    return [(float(x), float(y), float(c)) if c > 0 else None for x, y, c in triples]


def json_to_keypoints(source: str | bytes | dict | list) -> PoseCanvas:
    """Parse OpenPose JSON (text or already-decoded) into a PoseCanvas with pixel coordinates."""
    document = source
    if isinstance(source, (str, bytes)):
        try:
            document = json.loads(source)
        except ValueError as err:
            raise InvalidRequest(f"keypoints are not valid JSON: {err}") from None
    if isinstance(document, list) and len(document) == 1:  # some editors wrap the one frame in a list
        document = document[0]
    if not isinstance(document, dict) or not isinstance(document.get("people"), list):
        raise InvalidRequest('keypoints JSON must be an object with a "people" list (OpenPose format)')
    width, height = _canvas_size(document, "canvas_width"), _canvas_size(document, "canvas_height")
    people = []
    for index, entry in enumerate(document["people"]):
        if not isinstance(entry, dict):
            raise InvalidRequest(f"keypoints JSON person {index} is not an object")
        person = _person(entry.get("pose_keypoints_2d"), index)
        if person is not None and any(point is not None for point in person):
            people.append(person)
    present = [point for person in people for point in person if point is not None]
    if width and height and present and all(0 <= p[0] <= 1 and 0 <= p[1] <= 1 for p in present):
        people = [[(p[0] * width, p[1] * height, p[2]) if p is not None else None for p in person]
                  for person in people]
    return PoseCanvas(people=people, width=width, height=height)


def load_keypoints(path: str | os.PathLike) -> PoseCanvas:
    """Read an OpenPose JSON file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidRequest(f"keypoints file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise InvalidRequest(f"cannot read keypoints file {path} as UTF-8 text") from None
    return json_to_keypoints(text)


def draw_poses(poses: PoseCanvas, size: tuple[int, int] | None = None) -> Image.Image:
    """Render `poses` on black at `size` (width, height; default the canvas size), scaling from the canvas."""
    if size is None:
        if poses.width is None or poses.height is None:
            raise InvalidRequest("these keypoints carry no canvas_width/canvas_height; give an image or a size to "
                                 "draw them on")
        size = (poses.width, poses.height)
    width, height = size
    sx = width / poses.width if poses.width else 1.0
    sy = height / poses.height if poses.height else 1.0
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    scaled = [[(p[0] * sx, p[1] * sy) if p is not None else None for p in person] for person in poses.people]
    for person in scaled:
        for (a, b), color in zip(LIMBS[:DRAWN_LIMBS], COLORS):
            if person[a] is None or person[b] is None:
                continue
            (xa, ya), (xb, yb) = person[a], person[b]
            length = math.hypot(xb - xa, yb - ya)
            angle = math.degrees(math.atan2(yb - ya, xb - xa))
            polygon = cv2.ellipse2Poly((round((xa + xb) / 2), round((ya + yb) / 2)),
                                       (round(length / 2), STICK_WIDTH), round(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, tuple(int(c * LIMB_BRIGHTNESS) for c in color))
    for person in scaled:
        for point, color in zip(person, COLORS):
            if point is not None:
                cv2.circle(canvas, (round(point[0]), round(point[1])), JOINT_RADIUS, color, thickness=-1)
    return Image.fromarray(canvas, mode="RGB")
