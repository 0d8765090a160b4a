"""Stage 1 of huabu-tiny: a small CLIP (text encoder + vision tower) trained contrastively on scene captions.

The UNet later learns only what the frozen text embedding separates, and plain contrastive training squeezes out
attributes that cover few pixels or that the image tower finds hard. So besides the CLIP loss, linear heads ask the
pooled text and image embeddings to name every attribute (objects, background colour, positions, size); the heads
are training scaffolding and are not shipped. `retrieval_gate` checks, on held-out scenes, that the image picks its
own caption over captions with one attribute swapped: the UNet stage should not start before every attribute
passes 90%.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from huabu.tiny import scenes as S
from huabu.tiny.configs import ClipTrainConfig
from huabu.tiny.data import load_dataset
from huabu.training.checkpoint import load_latest, save_checkpoint

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
            return [S.pair_caption(o1, p1, o2, p2, c) for c in [a["background"]] + [c for c in S.COLOUR_NAMES if c != a["background"]]]
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


def lr_at(step: int, cfg: ClipTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: ClipTrainConfig) -> dict[str, float]:
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
    out = Path(cfg.out)
    state = load_latest(out / "checkpoints", {"clip": model, "heads": heads}, {"opt": opt})
    start = state["step"] if state else 0
    model, heads, opt = accelerator.prepare(model, heads, opt)
    labels_text = [attribute_labels(a, stated_only=True) for a in data.attrs]
    labels_image = [attribute_labels(a, stated_only=False) for a in data.attrs]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    log = open(out / "log.jsonl", "a")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="clip", disable=not accelerator.is_main_process)
    t0, seen = time.time(), 0
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])  # data order is a function of the step: resumes identically
        idx = np.sort(rng.choice(len(data), size=cfg.batch_size, replace=False))
        ids = tokenize(tok, [data.captions[i] for i in idx]).to(accelerator.device)
        px = pixels(data.images[idx]).to(accelerator.device)
        text = model.get_text_features(input_ids=ids).pooler_output  # projected, not yet normalised
        image = model.get_image_features(pixel_values=px).pooler_output
        loss = clip_loss(text, image, accelerator.unwrap_model(model).logit_scale)
        head_loss = 0.0
        for side, embeds, labels in (("text", text, labels_text), ("image", image, labels_image)):
            for name in HEADS:
                target = torch.tensor([labels[i][name] for i in idx], device=accelerator.device)
                head_loss = head_loss + F.cross_entropy(heads[f"{side}_{name}"](embeds), target)
        loss = loss + cfg.head_weight * head_loss / (2 * len(HEADS))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        seen += cfg.batch_size
        bar.set_postfix(loss=f"{loss.item():.3f}", ips=f"{seen / (time.time() - t0):.0f}")
        done = step + 1
        if done % 50 == 0:
            log.write(json.dumps({"step": done, "loss": loss.item(), "images_per_s": seen / (time.time() - t0)}) + "\n")
            log.flush()
        if done % cfg.eval_every == 0 or done == cfg.steps:
            gate = retrieval_gate(accelerator.unwrap_model(model), tok, accelerator.device)
            log.write(json.dumps({"step": done, "retrieval": gate}) + "\n")
            log.flush()
            tqdm.write(f"step {done} retrieval " + ", ".join(f"{k} {v:.1%}" for k, v in gate.items()))
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(out / "checkpoints", done, {"clip": accelerator.unwrap_model(model),
                                                       "heads": accelerator.unwrap_model(heads)}, {"opt": opt})
    final = accelerator.unwrap_model(model)
    final.save_pretrained(out / "final")
    tok.save_pretrained(out / "final")
    return retrieval_gate(final, tok, accelerator.device)
