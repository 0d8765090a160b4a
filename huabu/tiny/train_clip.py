"""Stage 1 of huabu-tiny: a small CLIP (text encoder + vision tower) trained contrastively on scene captions.

The UNet later learns only what the frozen text embedding separates, and plain contrastive training squeezes out
attributes that cover few pixels or that the image tower finds hard. So besides the CLIP loss, linear heads ask the
pooled text and image embeddings to name every attribute (objects, background colour, positions, size); the heads
are training scaffolding and are not shipped. `retrieval_gate` checks, on held-out scenes, that the image picks its
own caption over captions with one attribute swapped: the UNet stage should not start before every attribute
passes 90%.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from huabu.tiny import scenes as S
from huabu.tiny.configs import ClipTrainConfig
from huabu.tiny.data import load_dataset
from huabu.training import loop
from huabu.training.loop import Plan, Recipe, Sampled, same_run
from huabu.training.schedules import Schedule

TOKENIZER_DIR = Path(__file__).parent / "huabu-tiny" / "tokenizer"


def build_clip(cfg: ClipTrainConfig) -> CLIPModel:
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    text = dict(vocab_size=len(tok), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_hidden * 4,
                num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=77,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                hidden_act="gelu", projection_dim=cfg.projection_dim)
    vision = dict(image_size=S.IMAGE_SIZE, patch_size=8, hidden_size=cfg.vision_hidden,
                  intermediate_size=cfg.vision_hidden * 4, num_hidden_layers=cfg.vision_layers,
                  num_attention_heads=4, hidden_act="gelu", projection_dim=cfg.projection_dim)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)
    return CLIPModel(config)


# Attribute heads: (name, number of classes). Index n_values means "not stated" (text) or "absent" (image).
HEADS = {"obj1": len(S.OBJECTS), "obj2": len(S.OBJECTS) + 1, "colour": len(S.COLOURS),
         "pos1": len(S.POSITIONS) + 1, "pos2": len(S.POSITIONS) + 1, "size": len(S.SIZES) + 1}


def attribute_labels(attrs: dict, stated_only: bool) -> dict[str, int]:
    objs, positions, sizes = attrs["objects"], attrs["positions"], attrs["sizes"]
    said = attrs["said"]
    pos_idx = [S.POSITION_NAMES.index(p) for p in positions]
    no_pos, no_size = len(S.POSITIONS), len(S.SIZES)
    size = S.SIZE_NAMES.index(sizes[0]) if sizes[0] else no_size
    return {
        "obj1": objs[0],
        "obj2": objs[1] if len(objs) > 1 else len(S.OBJECTS),
        "colour": S.COLOUR_NAMES.index(attrs["background"]),
        "pos1": pos_idx[0] if (said["position"] or not stated_only) else no_pos,
        "pos2": pos_idx[1] if len(pos_idx) > 1 else no_pos,
        "size": size if (said["size"] or not stated_only) else no_size,
    }


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (the normalisation the shipped preprocessor config states)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tokenize(tok: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the longest caption, not to 77: under CLIP's causal mask the states up to the first EOS
    (and so the pooled output) are exactly those of the 77-token input, at a third of the cost."""
    return tok(captions, padding="longest", max_length=77, truncation=True, return_tensors="pt").input_ids


def swapped_captions(scene: S.Scene, attribute: str) -> list[str] | None:
    """The scene's caption with one attribute replaced by every other value (true caption first)."""
    a = scene.attrs
    if len(a["objects"]) == 2:
        o1, o2 = a["objects"]
        p1, p2 = a["positions"]
        if attribute == "colour":
            return [
                S.pair_caption(o1, p1, o2, p2, c)
                for c in [a["background"]] + [c for c in S.COLOUR_NAMES if c != a["background"]]
            ]
        if attribute == "pair order":
            return [S.pair_caption(o1, p1, o2, p2, a["background"]), S.pair_caption(o2, p1, o1, p2, a["background"])]
        return None
    obj, colour, pos, size = a["objects"][0], a["background"], a["positions"][0], a["sizes"][0]
    values = {"object": (obj, range(len(S.OBJECTS))), "colour": (colour, S.COLOUR_NAMES),
              "position": (pos, S.POSITION_NAMES), "size": (size, S.SIZE_NAMES)}
    if attribute not in values:
        return None
    true, choices = values[attribute]
    caps = []
    for v in [true] + [v for v in choices if v != true]:
        args = {"object": obj, "colour": colour, "position": pos, "size": size, attribute: v}
        caps.append(S.single_caption(args["object"], args["colour"], args["position"], args["size"]))
    return caps


@torch.no_grad()
def retrieval_gate(model: CLIPModel, tok: CLIPTokenizer, device: torch.device) -> dict[str, float]:
    """Per-attribute image->caption retrieval on held-out scenes against one-attribute swaps."""
    model.eval()
    scenes = S.eval_single_scenes(200) + S.eval_pair_scenes(100)
    images = np.stack([S.render(s.background, s.objects) for s in scenes])
    img = F.normalize(model.get_image_features(pixel_values=pixels(images).to(device)).pooler_output, dim=-1)
    results = {}
    for attribute in ("object", "colour", "position", "size", "pair order"):
        hits = total = 0
        for i, scene in enumerate(scenes):
            caps = swapped_captions(scene, attribute)
            if caps is None:
                continue
            txt = F.normalize(model.get_text_features(input_ids=tokenize(tok, caps).to(device)).pooler_output, dim=-1)
            hits += int((txt @ img[i]).argmax().item() == 0)
            total += 1
        results[attribute] = hits / total
    model.train()
    return results


def clip_loss(text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the batch."""
    logits = logit_scale.exp() * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    target = torch.arange(len(text), device=text.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def setup(cfg: ClipTrainConfig) -> tuple[Recipe, CLIPModel, CLIPTokenizer]:
    """The CLIP model and its attribute heads, their optimizer, and the loss of a step."""
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    data = load_dataset(Path(cfg.data))
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    model = build_clip(cfg)
    # The heads read the projected (joint-space) embeddings, so the space retrieval and scoring use holds them all.
    heads = torch.nn.ModuleDict({f"{side}_{name}": torch.nn.Linear(cfg.projection_dim, n)
                                 for side in ("text", "image") for name, n in HEADS.items()})
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    checkpointed = {"clip": model, "heads": heads}
    prepared, prepared_heads, opt = accelerator.prepare(model, heads, opt)
    labels_text = [attribute_labels(a, stated_only=True) for a in data.attrs]
    labels_image = [attribute_labels(a, stated_only=False) for a in data.attrs]
    device = accelerator.device

    def step_loss(step: int) -> torch.Tensor:
        rng = np.random.default_rng([cfg.seed, step])  # data order is a function of the step: resumes identically
        idx = np.sort(rng.choice(len(data), size=cfg.batch_size, replace=False))
        ids = tokenize(tok, [data.captions[i] for i in idx]).to(device)
        px = pixels(data.images[idx]).to(device)
        text = prepared.get_text_features(input_ids=ids).pooler_output  # projected, not yet normalised
        image = prepared.get_image_features(pixel_values=px).pooler_output
        loss = clip_loss(text, image, model.logit_scale)
        head_loss = 0.0
        for side, embeds, labels in (("text", text, labels_text), ("image", image, labels_image)):
            for name in HEADS:
                target = torch.tensor([labels[i][name] for i in idx], device=device)
                head_loss = head_loss + F.cross_entropy(prepared_heads[f"{side}_{name}"](embeds), target)
        return loss + cfg.head_weight * head_loss / (2 * len(HEADS))

    def evaluate(done: int) -> Sampled:
        return Sampled(scores={"retrieval": retrieval_gate(model, tok, device)})

    recipe = Recipe(accelerator, opt, checkpointed, step_loss, params, sample=evaluate)
    return recipe, model, tok


def train(cfg: ClipTrainConfig, cancel: Callable[[], bool] | None = None) -> dict[str, float]:
    """Train (or resume) the CLIP stage; returns the held-out retrieval gate.
    `cancel()` turning true stops the run after a step, with a checkpoint to resume from."""
    recipe, model, tok = setup(cfg)
    plan = Plan(Path(cfg.out), cfg.steps, Schedule("cosine", cfg.warmup, cfg.steps, floor=0.1),
                same_run(cfg), cfg.batch_size * recipe.accelerator.num_processes, cfg.checkpoint_every,
                sample_every=cfg.eval_every, log_every=50, config=asdict(cfg), desc="clip")
    loop.train(recipe, plan, cancel=cancel)
    model.save_pretrained(Path(cfg.out) / "final")
    tok.save_pretrained(Path(cfg.out) / "final")
    return retrieval_gate(model, tok, recipe.accelerator.device)
