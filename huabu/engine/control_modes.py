"""sd-webui-controlnet's control modes on diffusers ControlNets, per unit.

The extension turns "My prompt is more important" into soft injection (each residual scaled by
weight * 0.825 ** (12 - i), deepest strongest) and "ControlNet is more important" into soft injection plus CFG
injection (the control reaches only the prompt half of the classifier-free-guidance batch). diffusers offers both
only as one pipeline-wide switch, `guess_mode`; inside `ControlNetModel.forward` the same flag scales the residuals
by logspace(0.1 .. 1), which for SD's 13 residuals differs from the extension's curve by under 1% (SDXL's 10
residuals run 0.1 .. 1 where the extension uses 0.1 .. 0.56). `ModeControlNet` wraps one ControlNet so that each
unit gets its own mode inside diffusers' MultiControlNetModel, which calls every net through the public forward.
"""

from __future__ import annotations

import torch


class ModeControlNet(torch.nn.Module):
    """A ControlNetModel run with soft residual weights (`soft`) and/or only for the prompt half of a CFG batch
    (`prompt_half_only`, meaningful only when the pipeline runs CFG, i.e. the batch is [negative, positive])."""

    def __init__(self, net: torch.nn.Module, soft: bool, prompt_half_only: bool) -> None:
        super().__init__()
        self.net = net
        self.soft = soft
        self.prompt_half_only = prompt_half_only

    @property
    def config(self):
        return self.net.config  # the pipelines read e.g. global_pool_conditions from nets[0].config

    def forward(self, *args, **kwargs):
        kwargs["guess_mode"] = self.soft or bool(kwargs.get("guess_mode", False))
        kwargs["return_dict"] = False
        down, mid = self.net(*args, **kwargs)
        if self.prompt_half_only:
            half = mid.shape[0] // 2
            keep = torch.ones(mid.shape[0], 1, 1, 1, device=mid.device, dtype=mid.dtype)
            keep[:half] = 0
            down = [sample * keep for sample in down]
            mid = mid * keep
        return down, mid
