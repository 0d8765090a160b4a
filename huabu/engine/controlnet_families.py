"""Which ControlNet class steers which model family, and how a transformer ControlNet is checked against its model.

UNet models (SD 1.x / 2.x / SDXL) take diffusers' `ControlNetModel`; SD3 / SD3.5 take `SD3ControlNetModel` and FLUX
`FluxControlNetModel` (InstantX / Shakker-Labs / XLabs-style folders in diffusers' format). Each class has its own
multi-ControlNet container and its own pipelines: diffusers builds SD3 ControlNet pipelines for txt2img only (its
SD3 ControlNet inpainting pipeline serves inpainting ControlNets that take a mask, not ordinary ones), FLUX's for
txt2img, img2img and inpaint. PixArt and other transformers have no ControlNet in diffusers.
"""

from __future__ import annotations

from typing import Any

UNET_CONTROLNET = "ControlNetModel"
CLASS_FOR_FAMILY = {"sd": UNET_CONTROLNET, "sdxl": UNET_CONTROLNET, "sd3": "SD3ControlNetModel",
                    "flux": "FluxControlNetModel"}
CONTROLNET_CLASSES = frozenset(CLASS_FOR_FAMILY.values())
MULTI_CLASS = {UNET_CONTROLNET: "MultiControlNetModel", "SD3ControlNetModel": "SD3MultiControlNetModel",
               "FluxControlNetModel": "FluxMultiControlNetModel"}
FAMILIES_FOR_CLASS = {UNET_CONTROLNET: "SD / SDXL", "SD3ControlNetModel": "SD3", "FluxControlNetModel": "FLUX"}
# The modes diffusers has ControlNet pipelines for, per transformer family (UNet families: all three).
TRANSFORMER_MODES = {"sd3": ("txt2img",), "flux": ("txt2img", "img2img", "inpaint")}


def controls_family(family: str) -> bool:
    """Whether ControlNets steer models of this family at all."""
    return family in CLASS_FOR_FAMILY


def controlnet_class(family: str) -> Any:
    """The diffusers ControlNet class for models of `family`."""
    import diffusers

    return getattr(diffusers, CLASS_FOR_FAMILY[family])


def multi_controlnet(family: str, nets: list[Any]) -> Any:
    """The nets in the multi-ControlNet container the family's pipelines expect."""
    import diffusers

    return getattr(diffusers, MULTI_CLASS[CLASS_FOR_FAMILY[family]])(nets)


def class_problem(name: str, class_name: str | None, family: str, label: str) -> str | None:
    """Why a ControlNet of class `class_name` cannot steer a model of `family` (shown as `label`), or None."""
    wanted = CLASS_FOR_FAMILY[family]
    if (class_name or UNET_CONTROLNET) == wanted:
        return None
    made_for = FAMILIES_FOR_CLASS.get(class_name or "", "another model family")
    return (f"ControlNet {name} is a {class_name} (for {made_for} models); this {label} model needs a {wanted} "
            f"trained for it")


def transformer_fit_problem(name: str, config: Any, transformer_config: Any, label: str) -> str | None:
    """Why a transformer ControlNet config does not fit this transformer (latent channels, text width), or None."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if get("in_channels") != transformer_config.in_channels:
        return (f"ControlNet {name} works on {get('in_channels')} latent channels, this {label} model on "
                f"{transformer_config.in_channels} (a ControlNet for another model?)")
    width = get("joint_attention_dim")  # None: SD3.5's official ControlNets read no text
    if width is not None and width != transformer_config.joint_attention_dim:
        return (f"ControlNet {name} was made for text width {width}, this {label} model has "
                f"{transformer_config.joint_attention_dim} (a ControlNet for another model?)")
    return None
