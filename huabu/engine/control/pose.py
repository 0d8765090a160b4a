"""OpenPose body pose: the CMU two-branch network on user-supplied weights, keypoint decoding, and pose rendering.

The network (Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields", 2017) is a VGG-19
front (10 convs, three 2x pools) plus two "CPM" convs, then six stages of two branches: part-affinity fields (PAFs,
38 = 19 limbs x (dx, dy)) and part heatmaps (19 = 18 COCO keypoints + background). Stage 1 sees the features;
stages 2-6 see the features concatenated with the previous stage's PAFs and heatmaps. Output stride is 8.
No library ships it (controlnet-aux is out), so it is written here from the paper.

Our parameter names and the mapping from `body_pose_model.pth` (keys `<layer>.weight|bias`, possibly under a
module prefix such as `model0.`; `convert_body_pose_state_dict` applies it):

    ours                        body_pose_model.pth
    backbone.{i}.*              conv1_1 conv1_2 conv2_1 conv2_2 conv3_1..conv3_4 conv4_1 conv4_2 conv4_3_CPM
                                conv4_4_CPM  (i = 0..11 in that order)
    stages.0.pafs.{j}.*         conv5_{j+1}_CPM_L1        stages.0.heatmaps.{j}.*     conv5_{j+1}_CPM_L2
    stages.{t}.pafs.{j}.*       Mconv{j+1}_stage{t+1}_L1  stages.{t}.heatmaps.{j}.*   Mconv{j+1}_stage{t+1}_L2

Layer sizes are read from the weights' shapes, so the same code loads the real model and tiny test models.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from huabu.core.errors import InvalidRequest, ModelNotFound, first_line
from huabu.engine.control.images import fit_resolution, pad_to_multiple, rgb_array
from huabu.engine.control.skeleton import (
    DRAWN_LIMBS,
    LIMBS,
    NUM_KEYPOINTS,
    Person,
    PoseCanvas,
    draw_poses,
    json_to_keypoints,
    load_keypoints,
)
from huabu.engine.control.weights import read_weights

BACKBONE_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
                   "conv4_1", "conv4_2", "conv4_3_CPM", "conv4_4_CPM")
_POOL_AFTER = {1, 3, 7}  # 2x max-pool after conv1_2, conv2_2, conv3_4
NUM_PAFS = 2 * len(LIMBS)
NUM_HEATMAPS = NUM_KEYPOINTS + 1
STRIDE = 8

# The PAF channels (x, y) the CMU model uses for each limb in LIMBS (a fact of its training layout).
PAF_CHANNELS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
                (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))

# (in, out, kernel) per conv of the published model.
_CMU_BACKBONE = ((3, 64, 3), (64, 64, 3), (64, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 3), (256, 256, 3),
                 (256, 256, 3), (256, 512, 3), (512, 512, 3), (512, 256, 3), (256, 128, 3))


def _cmu_branch(stage: int, outputs: int) -> tuple[tuple[int, int, int], ...]:
    if stage == 0:
        return (128, 128, 3), (128, 128, 3), (128, 128, 3), (128, 512, 1), (512, outputs, 1)
    refine_in = 128 + NUM_PAFS + NUM_HEATMAPS
    return ((refine_in, 128, 7),) + ((128, 128, 7),) * 4 + ((128, 128, 1), (128, outputs, 1))


def _convs(specs: tuple[tuple[int, int, int], ...]) -> nn.ModuleList:
    return nn.ModuleList(nn.Conv2d(i, o, kernel_size=k, padding=k // 2) for i, o, k in specs)


class PoseStage(nn.Module):
    """One stage: a PAF branch and a heatmap branch, ReLU after every conv but each branch's last."""

    def __init__(self, pafs: tuple[tuple[int, int, int], ...], heatmaps: tuple[tuple[int, int, int], ...]) -> None:
        super().__init__()
        self.pafs = _convs(pafs)
        self.heatmaps = _convs(heatmaps)

    @staticmethod
    def _branch(convs: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for j, conv in enumerate(convs):
            x = conv(x)
            if j < len(convs) - 1:
                x = F.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._branch(self.pafs, x), self._branch(self.heatmaps, x)


class BodyPoseNetwork(nn.Module):
    """(B, 3, H, W) BGR scaled to [-0.5, 0.5) -> PAFs (B, 38, H/8, W/8) and heatmaps (B, 19, H/8, W/8)."""

    def __init__(self, backbone: tuple[tuple[int, int, int], ...] = _CMU_BACKBONE,
                 stages: tuple[tuple[tuple, tuple], ...] | None = None) -> None:
        super().__init__()
        if stages is None:
            stages = tuple((_cmu_branch(t, NUM_PAFS), _cmu_branch(t, NUM_HEATMAPS)) for t in range(6))
        self.backbone = _convs(backbone)
        self.stages = nn.ModuleList(PoseStage(pafs, heatmaps) for pafs, heatmaps in stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for i, conv in enumerate(self.backbone):
            x = F.relu(conv(x))
            if i in _POOL_AFTER:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
        features, h = x, x
        for stage in self.stages:
            pafs, heatmaps = stage(h)
            h = torch.cat([pafs, heatmaps, features], dim=1)
        return pafs, heatmaps

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> BodyPoseNetwork:
        """Build the network the (converted) state dict describes, layer sizes read from the weight shapes."""
        state = convert_body_pose_state_dict(state)

        def specs(prefix: str) -> tuple[tuple[int, int, int], ...]:
            found = []
            while f"{prefix}.{len(found)}.weight" in state:
                out, inp, k, _ = state[f"{prefix}.{len(found)}.weight"].shape
                found.append((inp, out, k))
            return tuple(found)

        backbone = specs("backbone")
        stages = []
        while specs(f"stages.{len(stages)}.pafs"):
            t = len(stages)
            stages.append((specs(f"stages.{t}.pafs"), specs(f"stages.{t}.heatmaps")))
        if len(backbone) != len(BACKBONE_LAYERS) or not stages:
            raise ModelNotFound("these weights are not an OpenPose body model (backbone or stages missing)")
        if stages[-1][0][-1][1] != NUM_PAFS or stages[-1][1][-1][1] != NUM_HEATMAPS:
            raise ModelNotFound(f"OpenPose body weights must output {NUM_PAFS} PAFs and {NUM_HEATMAPS} heatmaps")
        network = cls(backbone, tuple(stages))
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise ModelNotFound(f"OpenPose weights do not fit the body model: {first_line(err)}") from None
        return network.eval()


def convert_body_pose_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Our key layout from body_pose_model.pth's CMU layer names, or already ours (see the module docstring)."""
    state = {key: (value if isinstance(value, torch.Tensor) else torch.as_tensor(value)).float()
             for key, value in state.items()}
    if any(key.startswith(("backbone.", "stages.")) for key in state):
        return state
    converted = {}
    for key, value in state.items():
        layer, _, param = key.rpartition(".")
        layer = layer.rpartition(".")[2]
        if layer in BACKBONE_LAYERS:
            converted[f"backbone.{BACKBONE_LAYERS.index(layer)}.{param}"] = value
        elif match := re.fullmatch(r"conv5_(\d)_CPM_L([12])", layer):
            branch = "pafs" if match[2] == "1" else "heatmaps"
            converted[f"stages.0.{branch}.{int(match[1]) - 1}.{param}"] = value
        elif match := re.fullmatch(r"Mconv(\d)_stage(\d)_L([12])", layer):
            branch = "pafs" if match[3] == "1" else "heatmaps"
            converted[f"stages.{int(match[2]) - 1}.{branch}.{int(match[1]) - 1}.{param}"] = value
        else:
            raise ModelNotFound(f"unexpected key {key!r} in OpenPose body weights")
    return converted


def load_body_pose(weights: str | os.PathLike, allow_unsafe_pickle: bool = False) -> BodyPoseNetwork:
    """The body model from a .safetensors file (or, if allowed, a pickle .pth) in CMU or huabu key layout."""
    return BodyPoseNetwork.from_state_dict(read_weights(weights, "OpenPose body", allow_unsafe_pickle))


@torch.no_grad()
def pose_maps(network: BodyPoseNetwork, array: np.ndarray, device: str | torch.device = "cpu",
              box_size: int = 368, scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (H, W, 19) and PAFs (H, W, 38) at the size of the (H, W, 3) uint8 RGB array. As the CMU demo at
    one scale: the image is resized to a height of box_size * scale, fed as BGR / 256 - 0.5, padded to the stride
    with grey, and the stride-8 outputs are upsampled back (cubic)."""
    height, width = array.shape[:2]
    k = box_size * scale / height
    resized = cv2.resize(array, (max(1, round(width * k)), max(1, round(height * k))), interpolation=cv2.INTER_CUBIC)
    small_h, small_w = resized.shape[:2]
    bgr = pad_to_multiple(np.ascontiguousarray(resized[:, :, ::-1]), STRIDE, value=128)
    x = torch.from_numpy(bgr.astype(np.float32) / 256.0 - 0.5).permute(2, 0, 1)[None]
    network = network.to(device)
    pafs, heatmaps = network(x.to(device=device, dtype=next(network.parameters()).dtype))

    def to_image_size(maps: torch.Tensor) -> np.ndarray:
        grid = maps[0].float().permute(1, 2, 0).cpu().numpy()
        grid = cv2.resize(grid, None, fx=STRIDE, fy=STRIDE, interpolation=cv2.INTER_CUBIC)[:small_h, :small_w]
        return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)

    return to_image_size(heatmaps), to_image_size(pafs)


def find_peaks(heatmaps: np.ndarray, threshold: float = 0.1, sigma: float = 3.0) -> list[list[tuple[int, int, float]]]:
    """Per keypoint, the local maxima (x, y, heatmap value) of the Gaussian-smoothed heatmap above `threshold`."""
    peaks = []
    for part in range(NUM_KEYPOINTS):
        raw = np.ascontiguousarray(heatmaps[:, :, part], dtype=np.float32)
        smooth = np.pad(cv2.GaussianBlur(raw, (0, 0), sigma, borderType=cv2.BORDER_REFLECT), 1,
                        constant_values=-np.inf)
        centre = smooth[1:-1, 1:-1]
        is_peak = ((centre >= smooth[:-2, 1:-1]) & (centre >= smooth[2:, 1:-1]) & (centre >= smooth[1:-1, :-2])
                   & (centre >= smooth[1:-1, 2:]) & (centre > threshold))
        ys, xs = np.nonzero(is_peak)
        peaks.append([(int(x), int(y), float(raw[y, x])) for y, x in zip(ys, xs)])
    return peaks


def _limb_score(pafs: np.ndarray, channels: tuple[int, int], a: tuple, b: tuple, samples: int,
                paf_threshold: float) -> float | None:
    """Line integral of the limb's PAF along a -> b (mean of `samples` points), with the CMU prior that penalises
    limbs longer than half the image height; None when too few points agree with the direction."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    norm = max(math.hypot(dx, dy), 1e-3)
    xs = np.rint(np.linspace(a[0], b[0], samples)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], samples)).astype(int)
    dots = pafs[ys, xs, channels[0]] * (dx / norm) + pafs[ys, xs, channels[1]] * (dy / norm)
    score = float(dots.mean()) + min(0.5 * pafs.shape[0] / norm - 1.0, 0.0)
    if np.count_nonzero(dots > paf_threshold) > 0.8 * samples and score > 0:
        return score
    return None


def decode_poses(heatmaps: np.ndarray, pafs: np.ndarray, peak_threshold: float = 0.1, paf_threshold: float = 0.05,
                 samples: int = 10, min_parts: int = 4, min_mean_score: float = 0.4) -> list[Person]:
    """People from full-size heatmaps (H, W, >=18) and PAFs (H, W, 38): peaks, PAF-scored limb candidates matched
    greedily one-to-one per limb, then limbs joined into people through shared keypoints (CMU's greedy parsing).
    People with fewer than `min_parts` keypoints or a low mean score are dropped."""
    peaks = find_peaks(heatmaps, peak_threshold)
    candidates = [peak for part in peaks for peak in part]
    ids, start = [], 0
    for part in peaks:
        ids.append(list(range(start, start + len(part))))
        start += len(part)

    people: list[dict] = []
    for k, ((a, b), channels) in enumerate(zip(LIMBS, PAF_CHANNELS)):
        scored = []
        for ia in ids[a]:
            for ib in ids[b]:
                score = _limb_score(pafs, channels, candidates[ia], candidates[ib], samples, paf_threshold)
                if score is not None:
                    scored.append((score, ia, ib))
        scored.sort(key=lambda item: -item[0])
        used_a, used_b, chosen = set(), set(), []
        for score, ia, ib in scored:
            if ia in used_a or ib in used_b:
                continue
            used_a.add(ia)
            used_b.add(ib)
            chosen.append((score, ia, ib))
            if len(chosen) >= min(len(ids[a]), len(ids[b])):
                break
        for score, ia, ib in chosen:
            owners = [p for p in people if p["ids"][a] == ia or p["ids"][b] == ib]
            if len(owners) == 2 and not np.any((owners[0]["ids"] >= 0) & (owners[1]["ids"] >= 0)):
                first, second = owners
                first["ids"] = np.where(second["ids"] >= 0, second["ids"], first["ids"])
                first["count"] += second["count"]
                first["score"] += second["score"] + score
                people.remove(second)
            elif owners:
                person = owners[0]
                for index, candidate in ((a, ia), (b, ib)):
                    if person["ids"][index] < 0:
                        person["ids"][index] = candidate
                        person["count"] += 1
                        person["score"] += candidates[candidate][2] + score
            elif k < DRAWN_LIMBS:  # the shoulder-ear limbs only attach heads to people already found
                person_ids = np.full(NUM_KEYPOINTS, -1)
                person_ids[a], person_ids[b] = ia, ib
                people.append({"ids": person_ids, "count": 2,
                               "score": candidates[ia][2] + candidates[ib][2] + score})

    result = []
    for person in people:
        if person["count"] < min_parts or person["score"] / person["count"] < min_mean_score:
            continue
        result.append([(float(candidates[i][0]), float(candidates[i][1]), float(candidates[i][2])) if i >= 0 else None
                       for i in person["ids"]])
    return result


def detect_poses(image: Image.Image, weights: str | os.PathLike | BodyPoseNetwork, resolution: int | None = None,
                 allow_unsafe_pickle: bool = False, device: str | torch.device = "cpu") -> PoseCanvas:
    """Keypoints of the people in `image` (pixel coordinates on the image after `resolution`)."""
    array = fit_resolution(rgb_array(image, "pose"), resolution)
    network = weights if isinstance(weights, BodyPoseNetwork) else load_body_pose(weights, allow_unsafe_pickle)
    heatmaps, pafs = pose_maps(network, array, device)
    return PoseCanvas(people=decode_poses(heatmaps, pafs), width=array.shape[1], height=array.shape[0])


def _read_keypoints(keypoints: str | os.PathLike | dict | list | PoseCanvas) -> PoseCanvas:
    if isinstance(keypoints, PoseCanvas):
        return keypoints
    if isinstance(keypoints, (dict, list)):
        return json_to_keypoints(keypoints)
    if isinstance(keypoints, str) and keypoints.lstrip().startswith(("{", "[")):
        return json_to_keypoints(keypoints)
    return load_keypoints(keypoints)


def pose_json(image: Image.Image | None, keypoints: str | os.PathLike | dict | list | PoseCanvas,
              resolution: int | None = None) -> Image.Image:
    """Render OpenPose keypoints (a JSON file, JSON text, a decoded document or a PoseCanvas) on black: at the
    size of `image` if given, else at the JSON canvas size; `resolution` scales the short side either way."""
    poses = _read_keypoints(keypoints)
    if image is not None:
        height, width = fit_resolution(rgb_array(image, "pose_json"), resolution).shape[:2]
    elif poses.width and poses.height:
        height, width = fit_resolution(np.zeros((poses.height, poses.width, 1), np.uint8), resolution).shape[:2]
    else:
        raise InvalidRequest("these keypoints carry no canvas_width/canvas_height; pass an image to set the size")
    return draw_poses(poses, (width, height))


def pose(image: Image.Image | None, weights: str | os.PathLike | BodyPoseNetwork | None = None,
         keypoints: str | os.PathLike | dict | list | PoseCanvas | None = None, resolution: int | None = None,
         allow_unsafe_pickle: bool = False, device: str | torch.device = "cpu") -> Image.Image:
    """Pose skeleton image: detected by the body model (`weights`), or drawn from `keypoints` (OpenPose JSON)."""
    if weights is not None and keypoints is not None:
        raise InvalidRequest("pose takes either weights (detect from the image) or keypoints (draw a JSON pose), "
                             "not both")
    if keypoints is not None:
        return pose_json(image, keypoints, resolution=resolution)
    if weights is None:
        raise InvalidRequest("pose needs weights (OpenPose body_pose_model as .safetensors) or keypoints (an "
                             "OpenPose JSON file, e.g. from a pose editor)")
    poses = detect_poses(image, weights, resolution=resolution, allow_unsafe_pickle=allow_unsafe_pickle,
                         device=device)
    return draw_poses(poses)

