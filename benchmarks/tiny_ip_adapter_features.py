"""Which features of huabu-tiny-scorer's vision tower carry a world object's identity across renders? The question
behind huabu-tiny's IP-Adapter (plain: the projected image embedding; Plus: the penultimate layer's tokens).

Each trial renders every one of the first N objects twice, as the IP-Adapter stage pairs them
(huabu.tiny.ip_adapter_scenes): a one-object scene and a reference of the same object elsewhere, at another size, on
another background, in another colour where it takes one. Top-1 is how often a reference's nearest scene (cosine,
features centred over the trial) is its own object's, among the N. "Probe" is a ridge classifier fitted on other
trials' renders (both kinds), then scored on this one: what a learned linear read-out of the feature could reach.
`--readouts` also trains, on the same renders as 64-way classifiers, the plain adapter's kind of read-out (a linear
layer on the projected embedding) and Plus' (the stage's Resampler on the penultimate tokens, its queries averaged).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiny_ip_adapter_features.py [--objects 64] [--trials 4] [--fit 16]
        [--readouts] [--encoder RUN/final/image_encoder]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from huabu.tiny import ip_adapter_scenes as IS
from huabu.tiny import scenes as S
from huabu.tiny import train_ip_adapter as T
from huabu.tiny import world as W
from huabu.tiny.eval import SCORER_DIR

Features = Callable[[object], torch.Tensor]
FEATURES: dict[str, Features] = {
    "projected image_embeds (plain IP-Adapter)": lambda out: out.image_embeds,
    "last layer CLS (pre-LN)": lambda out: out.last_hidden_state[:, 0],
    "penultimate CLS": lambda out: out.hidden_states[-2][:, 0],
    "penultimate patch-token mean": lambda out: out.hidden_states[-2][:, 1:].mean(1),
    "penultimate patch-token max": lambda out: out.hidden_states[-2][:, 1:].amax(1),
    "penultimate object-token mean": lambda out: salient_mean(out.hidden_states[-2][:, 1:]),
    "penultimate tokens flattened (Plus' input)": lambda out: out.hidden_states[-2].flatten(1),
    "last layer tokens flattened": lambda out: out.last_hidden_state.flatten(1),
    "embeddings (layer 0) tokens flattened": lambda out: out.hidden_states[0].flatten(1),
}


def salient_mean(tokens: torch.Tensor, k: int = 8) -> torch.Tensor:
    """The mean of the `k` patch tokens farthest from the image's median token: the object's, as a resampler's
    attention could pick them out of a plain background."""
    far = (tokens - tokens.median(1, keepdim=True).values).norm(dim=-1).topk(k, dim=1).indices
    return tokens.gather(1, far[..., None].expand(-1, -1, tokens.shape[-1])).mean(1)


def pairs(rng: np.random.Generator, objects: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One scene and one reference render of each of the first `objects` objects."""
    scenes, refs = [], []
    for obj in range(objects):
        background = S.COLOUR_NAMES[int(rng.integers(len(S.COLOUR_NAMES)))]
        position = S.POSITION_NAMES[int(rng.integers(len(S.POSITION_NAMES)))]
        scene = W.single(rng, "position", obj, background, position, S.SIZE_NAMES[int(rng.integers(2))])
        scenes.append(W.render(scene))
        refs.append(IS.reference_image(rng, obj, position, background))
    return scenes, refs


def encode(encoder: CLIPVisionModelWithProjection, processor: CLIPImageProcessor,
           images: list[np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = encoder(processor(images=images, return_tensors="pt").pixel_values, output_hidden_states=True)
    return {name: pick(out).double().numpy() for name, pick in FEATURES.items()}


def nearest_top1(scenes: np.ndarray, refs: np.ndarray) -> float:
    both = np.concatenate([scenes, refs])
    unit = both - both.mean(0)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    n = len(scenes)
    return float(((unit[n:] @ unit[:n].T).argmax(1) == np.arange(n)).mean())


def probe_top1(train: np.ndarray, labels: np.ndarray, test: np.ndarray, ridge: float = 1.0) -> float:
    """A ridge classifier (standardised features, one-hot targets, dual form) fitted on `train`, top-1 on `test`,
    whose rows are objects 0..N-1 in order."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    x, t = (train - mean) / std, (test - mean) / std
    targets = np.eye(labels.max() + 1)[labels]
    alpha = np.linalg.solve(x @ x.T + ridge * len(x) * np.eye(len(x)), targets)
    return float(((t @ (x.T @ alpha)).argmax(1) == np.arange(len(t)) % targets.shape[1]).mean())


class ResamplerReadout(torch.nn.Module):
    """The Plus stage's Resampler over flattened penultimate tokens, its query tokens averaged into class scores."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.width = width
        self.resampler = IPAdapterPlusImageProjection(
            embed_dims=width, output_dims=width, hidden_dims=T.PLUS_WIDTH, depth=T.PLUS_DEPTH, dim_head=T.HEAD_DIM,
            heads=T.PLUS_WIDTH // T.HEAD_DIM, num_queries=T.PLUS_QUERIES)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.head(self.resampler(flat.view(len(flat), -1, self.width)).mean(1))


def readout_top1(module: torch.nn.Module, train: np.ndarray, labels: np.ndarray, test: np.ndarray,
                 steps: int) -> float:
    """`module` trained as a classifier (cross-entropy, AdamW at 1e-3, batch 128) on `train`, top-1 on `test`,
    whose rows are objects 0..N-1 in order."""
    torch.manual_seed(0)
    x, y, t = torch.from_numpy(train).float(), torch.from_numpy(labels), torch.from_numpy(test).float()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(steps):
        pick = torch.randint(0, len(x), (128,))
        loss = F.cross_entropy(module(x[pick]), y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((module(t).argmax(1) == torch.arange(len(t)) % (labels.max() + 1)).float().mean())


def readouts(fit: list[dict[str, np.ndarray]], labels: np.ndarray, refs: list[dict[str, np.ndarray]]) -> None:
    plain, plus = "projected image_embeds (plain IP-Adapter)", "penultimate tokens flattened (Plus' input)"
    classes, width = int(labels.max()) + 1, fit[0][plain].shape[1]
    for name, module, key, steps in (("linear on the projected embedding", torch.nn.Linear(width, classes), plain,
                                      600),
                                     ("Plus' Resampler on the penultimate tokens",
                                      ResamplerReadout(width, classes), plus, 300)):
        top1 = readout_top1(module, np.concatenate([f[key] for f in fit]), labels,
                            np.concatenate([r[key] for r in refs]), steps)
        print(f"  trained read-out: {name:<42} {top1:>4.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=64)
    parser.add_argument("--trials", type=int, default=4, help="scored trials")
    parser.add_argument("--fit", type=int, default=16, help="trials the probe is fitted on")
    parser.add_argument("--readouts", action="store_true", help="also train the adapters' read-outs (2 minutes)")
    parser.add_argument("--encoder", default=str(SCORER_DIR),
                        help="a vision tower folder (a tuned run's final/image_encoder); default: huabu-tiny-scorer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = CLIPVisionModelWithProjection.from_pretrained(args.encoder, dtype=torch.float32).eval()
    size = encoder.config.image_size
    processor = CLIPImageProcessor(size=size, crop_size=size)  # as the IP-Adapter stage and diffusers feed it
    rng = np.random.default_rng(0)
    fit = [encode(encoder, processor, sum(pairs(rng, args.objects), [])) for _ in range(args.fit)]
    labels = np.tile(np.arange(args.objects), 2 * args.fit)
    nearest, probe = {name: [] for name in FEATURES}, {name: [] for name in FEATURES}
    scored = []
    for _ in range(args.trials):
        scenes, refs = pairs(rng, args.objects)
        got_scenes, got_refs = encode(encoder, processor, scenes), encode(encoder, processor, refs)
        scored.append(got_refs)
        for name in FEATURES:
            nearest[name].append(nearest_top1(got_scenes[name], got_refs[name]))
            train = np.concatenate([f[name] for f in fit])
            probe[name].append(probe_top1(train, labels, got_refs[name]))
    print(f"identity top-1 among {args.objects} objects, {args.trials} trials ({args.fit} fitted for the probe)")
    print(f"  {'feature':<44} {'dims':>6} {'nearest':>8} {'probe':>6}")
    for name in FEATURES:
        print(f"  {name:<44} {got_refs[name].shape[1]:>6} {np.mean(nearest[name]):>8.0%} {np.mean(probe[name]):>6.0%}")
    if args.readouts:
        readouts(fit, labels, scored)


if __name__ == "__main__":
    main()
