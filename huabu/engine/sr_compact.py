"""Real-ESRGAN's compact super-resolution network (SRVGGNetCompact), in its own state-dict layout, so that its
weight files (huabu-tiny-2x among them) load here and in spandrel alike.

Written here because spandrel, which loads this family, imports torchvision at import time, and torchvision cannot
be installed beside huabu's pinned torch. The layout: `body.0` conv 3->F, `body.1` PReLU, then (conv F->F, PReLU)
pairs, and a last conv F->3*s*s followed by a pixel shuffle by s; the input, nearest-upscaled, is added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class CompactSR(nn.Module):
    def __init__(self, features: int = 32, convs: int = 8, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, features, 3, 1, 1), nn.PReLU(features)]
        for _ in range(convs):
            layers += [nn.Conv2d(features, features, 3, 1, 1), nn.PReLU(features)]
        layers.append(nn.Conv2d(features, 3 * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        base = nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")
        return self.upsampler(out) + base


def is_compact(state: Mapping[str, Any]) -> bool:
    """Whether a state dict has the compact network's layout."""
    first, second = state.get("body.0.weight"), state.get("body.1.weight")
    return first is not None and second is not None and first.dim() == 4 and second.dim() == 1


def compact_from_state(state: Mapping[str, Any]) -> CompactSR:
    """The network a state dict describes (features, conv count and scale read off its shapes), loaded."""
    indices = sorted({int(key.split(".")[1]) for key in state if key.startswith("body.")})
    features = state["body.0.weight"].shape[0]
    last = state[f"body.{indices[-1]}.weight"]
    scale = int(round((last.shape[0] / 3) ** 0.5))
    model = CompactSR(features, (len(indices) - 3) // 2, scale)
    model.load_state_dict({key: value.float() for key, value in state.items()})
    return model.eval()
