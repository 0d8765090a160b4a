"""A1111's initial noise for variation seeds and seed resize (modules/rng.py's ImageRNG, in diffusers terms).

Written by hand because diffusers draws each image's noise from its generator and knows neither: a variation is
the seed's noise slerped towards the subseed's by `subseed_strength`, and "seed resize from" draws the noise at
another size and centres it in the output's, so a composition survives a change of size. Plain requests never
come here, so their images stay exactly what they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from huabu.core.requests import MAX_SEED, GenerateRequest
from huabu.core.samplers import uses_eta_noise


def step_seed_delta(request: GenerateRequest, sampler: str) -> int:
    """What A1111's ENSD adds to each seed for the step noise of `sampler` (0 for deterministic samplers)."""
    return request.eta_noise_seed_delta if request.eta_noise_seed_delta and uses_eta_noise(sampler) else 0


def generators(seeds: list[int], delta: int) -> list[Any]:
    """One CPU generator per image, seeded with seed + delta (wrapping past MAX_SEED)."""
    import torch

    return [torch.Generator("cpu").manual_seed((seed + delta) % (MAX_SEED + 1)) for seed in seeds]


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """torch's global generator seeded with `seed` for the block, and as it was afterwards: for what diffusers'
    pipelines draw without the call's generator (the stochastic flow Euler's step noise, SD3 ControlNets' control
    latents), so that a request makes the same picture each time."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed % (MAX_SEED + 1))
        yield


def wants_noise(request: GenerateRequest) -> bool:
    """Whether the request's noise differs from diffusers' own draw per seed."""
    return request.subseed_strength > 0 or request.seed_resize is not None


def batch_seeds(request: GenerateRequest, iteration: int) -> tuple[list[int], list[int]]:
    """(seeds, subseeds) of one pipeline call. As in A1111, a variation batch shares its seed and steps its subseed;
    past MAX_SEED the numbering wraps to 0, so every recorded seed is one a request can ask for again."""
    first = iteration * request.batch_size
    step = [(first + i) for i in range(request.batch_size)]
    if request.subseed_strength > 0:
        return ([request.seed] * request.batch_size,
                [(request.subseed + k) % (MAX_SEED + 1) for k in step])
    return [(request.seed + k) % (MAX_SEED + 1) for k in step], []


def slerp(value: float, low: Any, high: Any) -> Any:
    """A1111's slerp of two (C, H, W) noises: angles per column of dim 1, linear (with A1111's swapped weights)
    when the two are nearly parallel, so that variation images match A1111's."""
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * value + high * (1 - value)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    low_weight = (torch.sin((1.0 - value) * omega) / so).unsqueeze(1)
    return low_weight * low + (torch.sin(value * omega) / so).unsqueeze(1) * high


def _randn(seed: int, shape: tuple[int, ...], dtype: Any) -> Any:
    import torch

    # The same draw as diffusers' randn_tensor with one CPU generator per image.
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=dtype)


def image_noise(seed: int, subseed: int | None, strength: float, shape: tuple[int, int, int],
                resize_shape: tuple[int, int, int] | None, dtype: Any) -> Any:
    """One image's (C, H, W) initial noise."""
    import torch

    noise_shape = resize_shape or shape
    noise = _randn(seed, noise_shape, torch.float32)
    if subseed is not None and strength > 0:
        noise = slerp(strength, noise, _randn(subseed, noise_shape, torch.float32))
    if noise_shape != shape:
        noise = _centred(noise, _randn(seed, shape, torch.float32))
    return noise.to(dtype)


def _centred(noise: Any, canvas: Any) -> Any:
    """`noise` pasted centred into `canvas` (the seed's noise at the output size), cropped where it is larger."""
    (_, height, width), (_, out_h, out_w) = noise.shape, canvas.shape
    dx, dy = (out_w - width) // 2, (out_h - height) // 2
    w = width if dx >= 0 else width + 2 * dx
    h = height if dy >= 0 else height + 2 * dy
    canvas[:, max(dy, 0):max(dy, 0) + h, max(dx, 0):max(dx, 0) + w] = noise[:, max(-dy, 0):max(-dy, 0) + h,
                                                                            max(-dx, 0):max(-dx, 0) + w]
    return canvas


def batch_noise(request: GenerateRequest, seeds: list[int], subseeds: list[int], channels: int, latent_size:
                tuple[int, int], factor: int, dtype: Any) -> Any:
    """The (B, C, H, W) noise of one pipeline call at `latent_size` (width, height in latent pixels)."""
    import torch

    shape = (channels, latent_size[1], latent_size[0])
    resize = request.seed_resize
    resize_shape = (channels, resize[1] // factor, resize[0] // factor) if resize else None
    subs = subseeds or [None] * len(seeds)
    return torch.stack([image_noise(seed, sub, request.subseed_strength, shape, resize_shape, dtype)
                        for seed, sub in zip(seeds, subs)])


def seed_noise(seeds: list[int], shape: tuple[int, int, int], dtype: Any) -> Any:
    """(B, C, H, W): each seed's own first draw at `shape`, as diffusers would draw it."""
    import torch

    return torch.stack([_randn(seed, shape, dtype) for seed in seeds])


def use_noise_in_add_noise(scheduler: Any, noise: Any) -> None:
    """Make an img2img pipeline noise its start latents with `noise`: diffusers' img2img and inpaint pipelines draw
    their noise inside prepare_latents and take no noise argument; scheduler.add_noise is where it enters."""
    original = scheduler.add_noise

    def add_noise(samples, _drawn, timesteps):
        return original(samples, noise.to(samples.device, samples.dtype), timesteps)

    scheduler.add_noise = add_noise
