"""Soft edges: the HED network on user-supplied weights, and a weight-free multi-scale gradient fallback.

HED (Xie & Tu, "Holistically-Nested Edge Detection", 2015) is VGG-16's five conv stages (2, 2, 3, 3, 3 convs of
64, 128, 256, 512, 512 channels, 2x max-pool before stages 2-5). Each stage ends in a 1x1 "side output" conv
giving edge logits at its scale; those are upsampled bilinearly to the input size and fused by a 1x1 conv, then a
sigmoid. No library ships it (torchvision/timm are out), so it is written here from the paper.

Our parameter names and the mapping from the two public checkpoints (`convert_hed_state_dict` applies it):

    ours                            ControlNetHED_Apache2.pth       network-bsds500.pth (sniklaus/pytorch-hed)
    input_mean  (1,3,1,1), RGB       norm                            (fixed Caffe BGR mean 104.007/116.669/122.679)
    stages.{s}.convs.{j}.*          block{s+1}.convs.{j}.*          moduleVgg{One..Fiv}.{i}.*  i = 2j (s=0),
                                                                                               i = 2j+1 (s>0)
    stages.{s}.side.*               block{s+1}.projection.*         moduleScore{One..Fiv}.*
    fuse.*  (1,5,1,1)               none: that model averages the   moduleCombine.0.*
                                    side logits -> weight 1/5, bias 0

The network takes RGB in 0..255 minus `input_mean`. network-bsds500 was trained on BGR input, so its first conv's
input channels are reversed on conversion and its BGR mean becomes our RGB mean; "module" may also appear as "net".
"""

from __future__ import annotations

import os
import re
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from huabu.core.errors import ModelNotFound, first_line
from huabu.engine.control.images import fit_resolution, pad_to_multiple, rgb_array, unit_to_rgb
from huabu.engine.control.weights import read_weights

HED_WIDTHS = (64, 128, 256, 512, 512)
HED_DEPTHS = (2, 2, 3, 3, 3)
CAFFE_MEAN_RGB = (122.67891434, 116.66876762, 104.00698793)
_BSDS_STAGES = ("One", "Two", "Thr", "Fou", "Fiv")


class HEDStage(nn.Module):
    """3x3 conv + ReLU layers (after a 2x max-pool unless first), then a 1x1 side-output conv to one logit map."""

    def __init__(self, in_channels: int, width: int, depth: int, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if j == 0 else width, width, kernel_size=3, padding=1) for j in range(depth))
        self.side = nn.Conv2d(width, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.side(x)


class HEDNetwork(nn.Module):
    """HED: (B, 3, H, W) RGB in 0..255 -> (B, 1, H, W) edge probability. Widths/depths default to the paper's."""

    def __init__(self, widths: tuple[int, ...] = HED_WIDTHS, depths: tuple[int, ...] = HED_DEPTHS) -> None:
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError("HED needs one depth per stage width")
        self.register_buffer("input_mean", torch.zeros(1, 3, 1, 1))
        channels = (3, *widths)
        self.stages = nn.ModuleList(
            HEDStage(channels[s], widths[s], depths[s], pool=s > 0) for s in range(len(widths)))
        self.fuse = nn.Conv2d(len(widths), 1, kernel_size=1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        size = rgb.shape[-2:]
        h = rgb - self.input_mean
        sides = []
        for stage in self.stages:
            h, side = stage(h)
            sides.append(F.interpolate(side, size=size, mode="bilinear", align_corners=False))
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> HEDNetwork:
        """Build the network the (converted) state dict describes, widths and depths read from its shapes."""
        state = convert_hed_state_dict(state)
        widths, depths = [], []
        while f"stages.{len(widths)}.side.weight" in state:
            s = len(widths)
            widths.append(state[f"stages.{s}.side.weight"].shape[1])
            depths.append(sum(1 for key in state if re.fullmatch(rf"stages\.{s}\.convs\.\d+\.weight", key)))
        if not widths:
            raise ModelNotFound("these weights are not a HED network (no side-output layers found)")
        network = cls(tuple(widths), tuple(depths))
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise ModelNotFound(f"HED weights do not fit the HED architecture: {first_line(err)}") from None
        return network.eval()


def _tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def convert_hed_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Our key layout from ControlNetHED_Apache2, network-bsds500, or already ours (see the module docstring)."""
    state = {key: _tensor(value).float() for key, value in state.items()}
    if "block1.projection.weight" in state:
        if "norm" not in state:
            raise ModelNotFound("ControlNetHED weights without their input mean ('norm'); is the file complete?")
        converted = {"input_mean": state.pop("norm").reshape(1, 3, 1, 1)}
        for key, value in state.items():
            match = re.fullmatch(r"block(\d)\.(convs\.\d+|projection)\.(weight|bias)", key)
            if not match:
                raise ModelNotFound(f"unexpected key {key!r} in ControlNetHED weights")
            part = "side" if match[2] == "projection" else match[2]
            converted[f"stages.{int(match[1]) - 1}.{part}.{match[3]}"] = value
        stages = sum(1 for key in converted if key.endswith(".side.weight"))
        converted["fuse.weight"] = torch.full((1, stages, 1, 1), 1.0 / stages)
        converted["fuse.bias"] = torch.zeros(1)
        return converted
    if any("VggOne" in key for key in state):
        converted = {"input_mean": torch.tensor(CAFFE_MEAN_RGB).reshape(1, 3, 1, 1)}
        for key, value in state.items():
            match = re.fullmatch(r"(?:module|net)(Vgg|Score)(One|Two|Thr|Fou|Fiv)(?:\.(\d+))?\.(weight|bias)", key)
            if match:
                s = _BSDS_STAGES.index(match[2])
                if match[1] == "Score":
                    converted[f"stages.{s}.side.{match[4]}"] = value
                    continue
                index = int(match[3])
                j = index // 2 if s == 0 else (index - 1) // 2
                converted[f"stages.{s}.convs.{j}.{match[4]}"] = value
            elif (match := re.fullmatch(r"(?:module|net)Combine\.0\.(weight|bias)", key)):
                converted[f"fuse.{match[1]}"] = value
            else:
                raise ModelNotFound(f"unexpected key {key!r} in network-bsds500 weights")
        if "stages.0.convs.0.weight" in converted:  # BGR-trained first layer -> RGB input
            converted["stages.0.convs.0.weight"] = converted["stages.0.convs.0.weight"].flip(1)
        return converted
    return state


def load_hed(weights: str | os.PathLike, allow_unsafe_pickle: bool = False) -> HEDNetwork:
    """A HED network from a .safetensors file (or, if allowed, a pickle .pth) in any of the supported layouts."""
    return HEDNetwork.from_state_dict(read_weights(weights, "HED", allow_unsafe_pickle))


def safe_quantise(edges: np.ndarray, steps: int = 2) -> np.ndarray:
    """"Safe" soft edges (HED-safe / PiDiNet-safe): values in [0, 1] snapped down to `steps` levels above zero, so
    faint texture becomes 0 and lines become flat strokes instead of carrying image detail."""
    return np.clip(np.floor(edges * (steps + 1)) / steps, 0.0, 1.0)


@torch.no_grad()
def hed_edge_map(network: HEDNetwork, array: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Edge probabilities in [0, 1], shape (H, W), for an (H, W, 3) uint8 RGB array."""
    height, width = array.shape[:2]
    # Pad to a multiple of 16 so the four 2x pools divide evenly and the upsampled side outputs stay aligned.
    padded = pad_to_multiple(array, 16)
    parameter = next(network.parameters())
    rgb = torch.from_numpy(np.array(padded, dtype=np.float32)).permute(2, 0, 1)[None]
    network = network.to(device)
    edges = network(rgb.to(device=device, dtype=parameter.dtype))
    return edges[0, 0, :height, :width].float().cpu().numpy()


def hed(image: Image.Image, weights: str | os.PathLike | HEDNetwork, safe: bool = False,
        resolution: int | None = None, allow_unsafe_pickle: bool = False,
        device: str | torch.device = "cpu") -> Image.Image:
    """HED soft edges (white on black). `weights`: a weights file or an already loaded HEDNetwork."""
    array = fit_resolution(rgb_array(image, "softedge_hed"), resolution)
    network = weights if isinstance(weights, HEDNetwork) else load_hed(weights, allow_unsafe_pickle)
    edges = hed_edge_map(network, array, device)
    return unit_to_rgb(safe_quantise(edges) if safe else edges)


def gradient_edge_map(array: np.ndarray) -> np.ndarray:
    """Weight-free soft edges in [0, 1]: the Scharr gradient magnitude of the Gaussian-blurred image at three
    scales (sigma 1, 2, 4 at 512px, scaled with the image), strongest colour channel per pixel (so a red/blue edge
    of equal brightness still shows), each scale normalised by its maximum, then averaged and renormalised.
    Flat areas give exactly 0; fine texture fades because only the finest scale sees it."""
    image = array.astype(np.float32) / 255.0
    scale = max(min(image.shape[:2]) / 512.0, 0.5)
    total = np.zeros(image.shape[:2], np.float32)
    for sigma in (1.0 * scale, 2.0 * scale, 4.0 * scale):
        blurred = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        gx = cv2.Scharr(blurred, cv2.CV_32F, 1, 0, borderType=cv2.BORDER_REFLECT)
        gy = cv2.Scharr(blurred, cv2.CV_32F, 0, 1, borderType=cv2.BORDER_REFLECT)
        magnitude = np.hypot(gx, gy).max(axis=2)
        peak = float(magnitude.max())
        if peak > 1e-6:
            total += magnitude / peak
    peak = float(total.max())
    return total / peak if peak > 1e-6 else total


def gradient_edges(image: Image.Image, safe: bool = False, resolution: int | None = None) -> Image.Image:
    """Soft edges without any weights (see `gradient_edge_map`), white on black."""
    array = fit_resolution(rgb_array(image, "softedge_gradient"), resolution)
    edges = gradient_edge_map(array)
    return unit_to_rgb(safe_quantise(edges) if safe else edges)


def softedge(image: Image.Image, weights: str | os.PathLike | HEDNetwork | None = None, safe: bool = False,
             resolution: int | None = None, allow_unsafe_pickle: bool = False,
             device: str | torch.device = "cpu") -> Image.Image:
    """HED when `weights` are given, else the gradient fallback."""
    if weights is None:
        return gradient_edges(image, safe=safe, resolution=resolution)
    return hed(image, weights, safe=safe, resolution=resolution, allow_unsafe_pickle=allow_unsafe_pickle,
               device=device)
