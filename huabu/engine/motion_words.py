"""Motion words: layers that let the caption steer each AnimateDiff motion module.

AnimateDiff's temporal layers attend across frames only, and diffusers' UNetMotionModel calls them without the text,
so the words can only choose a motion through the image model's features. When that model never learned the motion
words (huabu-tiny's still captions have no "moving up"), the words barely change those features, and a motion module
trained on clips of every direction learns no direction at all (the README's motion paragraph has the figures).

Each motion module outside the innermost level gets a MotionWords layer that warps what the module adds, frame by
frame, along a path the caption chooses. The layers are added with PyTorch forward hooks on the model's own motion
modules, so diffusers' classes stay as they are and the MotionAdapter's weights keep their layout; they live in their
own file beside the adapter (huabu.engine.motion_modules.MOTION_WORDS_FILE).

The layers can only read what the text encoder gives them. Words it never learned (huabu-tiny's CLIP saw no "up",
"down", "growing" or "shrinking") keep their random initial embeddings, and its output barely tells them apart, so
the same file can hold WordRows: trained input embeddings for those words, used only while video prompts are
encoded.

No library has this piece: diffusers' AnimateDiffTransformer3D can take text (`cross_attention_dim`), but no
diffusers UNet passes text to it. The pooling attention is diffusers' `Attention`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import get_timestep_embedding
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from huabu.core.atomic import atomic_path
from huabu.core.errors import HuabuError, first_line


class MotionWords(nn.Module):
    """Moves each frame of a motion module's residual [B*F, C, H, W] along a path the caption chooses: a warp by a
    velocity and a zoom rate that the words and the timestep give, times the frame's offset from the clip's middle.

    A learned query pools the caption's tokens [B*F, L, D] (attention lets it single out the motion word); a small
    MLP turns that and the timestep into (dx, dy, log zoom) per frame of offset, in grid_sample's [-1, 1]
    coordinates. The motion module makes the frames alike; the warp places what it adds along the path. That is
    three numbers to learn per caption, not a content-dependent shift, so the gradient reaches them at once. The
    MLP's last layer starts at zero: an identity warp.
    """

    def __init__(self, text_dim: int, heads: int, hidden: int = 128, time_dim: int = 64,
                 max_rate: float = 0.25) -> None:
        super().__init__()
        self.time_dim, self.max_rate = time_dim, max_rate
        self.query = nn.Parameter(torch.randn(1, 1, text_dim) * text_dim ** -0.5)
        self.pool = Attention(query_dim=text_dim, heads=heads, dim_head=text_dim // heads, out_bias=True)
        self.mlp = nn.Sequential(nn.Linear(text_dim + time_dim, hidden), nn.SiLU(), nn.Linear(hidden, 3))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, hidden: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor,
                num_frames: int) -> torch.Tensor:
        rows = hidden.shape[0]
        if text.shape[0] != rows:
            raise HuabuError(f"motion words need one text row per frame ({rows}); got {text.shape[0]}")
        text = text.to(hidden.dtype)
        words = self.pool(self.query.to(text.dtype).expand(rows, -1, -1), encoder_hidden_states=text)[:, 0]
        timestep = timestep.flatten().to(hidden.device)
        if timestep.numel() != rows:  # one per clip (or one for all): the same for each of its frames
            timestep = timestep.repeat_interleave(rows // timestep.numel())
        when = get_timestep_embedding(timestep, self.time_dim).to(hidden.dtype)
        # At most an eighth of the frame (or a zoom of 1.28) a frame: larger warps only smear the border in.
        rate = self.max_rate * torch.tanh(self.mlp(torch.cat([words, when], dim=1)) / self.max_rate)
        offset = (torch.arange(rows, device=hidden.device) % num_frames - (num_frames - 1) / 2).to(hidden.dtype)
        shrink = torch.exp(-rate[:, 2] * offset)  # sampling at p / zoom shows the content zoomed
        theta = torch.zeros(rows, 2, 3, dtype=hidden.dtype, device=hidden.device)
        theta[:, 0, 0] = theta[:, 1, 1] = shrink
        theta[:, :, 2] = -rate[:, :2] * offset[:, None]  # sampling at p - d shows the content moved by d
        grid = F.affine_grid(theta, list(hidden.shape), align_corners=False)
        return F.grid_sample(hidden, grid, mode="bilinear", padding_mode="border", align_corners=False)


class WordRows(nn.Module):
    """Trained input embeddings for a few single-token words, used in place of the text encoder's own rows.

    `attach` hooks them onto the encoder's token-embedding layer, and the handle takes them off again. The engine
    attaches them only while it encodes a video prompt, because the still pipelines share that encoder. Training
    leaves them attached, so the gradient reaches `rows`. CLIPTextModel takes token ids, not embeddings, which is
    why a forward hook is used here.
    """

    def __init__(self, tokens: list[str], ids: list[int], rows: torch.Tensor) -> None:
        super().__init__()
        self.tokens = list(tokens)
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.int64))
        self.rows = nn.Parameter(rows.detach().clone())

    @classmethod
    def for_words(cls, words: dict[str, str], tokenizer, text_encoder: nn.Module) -> WordRows:
        """Rows for the keys of `words`, each starting as the encoder's row for its value: itself (attached, the
        rows then change nothing until trained) or a word the encoder knows, as textual inversion's initializer
        token does ("up" from "top")."""
        ids = [_single_token(tokenizer, word) for word in words]
        starts = [_single_token(tokenizer, start) for start in words.values()]
        table = text_encoder.get_input_embeddings().weight
        return cls(tokenizer.convert_ids_to_tokens(ids), ids, table[starts].float())

    @staticmethod
    def parse(spec: str) -> dict[str, str]:
        """{word: initializer} from "up=top,down=bottom,moving" (a word without "=" starts as itself)."""
        pairs = [item.strip().partition("=") for item in spec.split(",") if item.strip()]
        return {word.strip(): (start.strip() or word.strip()) for word, _, start in pairs}

    def check_fits(self, tokenizer, text_encoder: nn.Module) -> None:
        """Raise if the rows were trained for another text encoder: `tokenizer` gives their ids to other tokens, or
        the encoder's embeddings have another width."""
        if tokenizer.convert_ids_to_tokens(self.ids.tolist()) != self.tokens:
            raise HuabuError(f"these motion words were trained for another tokenizer (tokens {', '.join(self.tokens)})")
        width = text_encoder.get_input_embeddings().embedding_dim
        if self.rows.shape[1] != width:
            raise HuabuError(f"these motion words' rows are {self.rows.shape[1]} wide; this text encoder's are {width}")

    def attach(self, text_encoder: nn.Module) -> torch.utils.hooks.RemovableHandle:
        def hook(_module, args, output):
            ids = args[0]
            for k in range(len(self.tokens)):
                output = torch.where((ids == self.ids[k])[..., None], self.rows[k].to(output.dtype), output)
            return output

        return text_encoder.get_input_embeddings().register_forward_hook(hook)


def _single_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise HuabuError(f"motion token {word!r} is {len(ids)} tokens for this tokenizer; give single-token words")
    return ids[0]


def motion_module_lists(unet: nn.Module) -> dict[str, nn.ModuleList]:
    """The motion modules of a UNetMotionModel, block by block ("down_0", "mid", "up_2"), as the same objects."""
    parts = {f"down_{i}": block.motion_modules for i, block in enumerate(unet.down_blocks)}
    if hasattr(unet.mid_block, "motion_modules"):
        parts["mid"] = unet.mid_block.motion_modules
    parts.update({f"up_{i}": block.motion_modules for i, block in enumerate(unet.up_blocks)})
    return parts


def named_motion_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """Every temporal transformer of a UNetMotionModel by a stable name ("down_0_0", "mid_0", "up_2_1")."""
    return {f"{part}_{j}": module for part, modules in motion_module_lists(unet).items()
            for j, module in enumerate(modules)}


def warped_motion_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """The motion modules that get motion words: all but the innermost level's (the last down block, the mid
    block, the first up block), where the layers learn one drift for every caption (docs/notes.md)."""
    last_down = f"down_{len(unet.down_blocks) - 1}_"
    return {name: module for name, module in named_motion_modules(unet).items()
            if not name.startswith((last_down, "mid_", "up_0_"))}


def build_motion_words(unet: nn.Module, heads: int) -> nn.ModuleDict:
    """Fresh motion-word layers for the motion modules warped_motion_modules picks (identity warps: the model is
    unchanged)."""
    text_dim = unet.config.cross_attention_dim
    if heads < 1 or text_dim % heads:
        raise HuabuError(f"motion-word heads must divide the text width {text_dim}; got {heads}")
    return nn.ModuleDict({name: MotionWords(text_dim, heads) for name in warped_motion_modules(unet)})


def attach_motion_words(unet: nn.Module, layers: nn.ModuleDict) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook `layers` into `unet`'s motion modules; returns the hook handles (`handle.remove()` detaches them).

    A pre-hook on the UNet keeps the text (diffusers passes one row per frame) and the timestep of the current
    call; a hook on each motion module warps what the module adds to its input, not the input itself: that carries
    the noise the UNet must give back at high noise levels, and warping it ruins the samples (docs/notes.md).
    """
    modules = warped_motion_modules(unet)
    if set(modules) != set(layers.keys()):
        raise HuabuError(f"these motion words fit another model: layers {sorted(layers.keys())}, "
                         f"motion modules {sorted(modules)}")
    current: dict[str, torch.Tensor] = {}

    def keep_text(_unet, args, kwargs):
        current["text"] = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        current["timestep"] = torch.as_tensor(kwargs["timestep"] if "timestep" in kwargs else args[1])

    def add_words(layer: MotionWords):
        def hook(_module, args, kwargs, output):
            before = args[0] if args else kwargs["hidden_states"]
            return before + layer(output - before, current["text"], current["timestep"], kwargs["num_frames"])
        return hook

    handles = [unet.register_forward_pre_hook(keep_text, with_kwargs=True)]
    handles += [module.register_forward_hook(add_words(layers[name]), with_kwargs=True)
                for name, module in modules.items()]
    return handles


ROWS_PREFIX = "word_rows."  # the WordRows' tensors in a motion-words file; the layers' keys are module names


def save_motion_words(layers: nn.ModuleDict, path: Path, rows: WordRows | None = None) -> Path:
    """The layers (and word rows) as fp16 safetensors, their shape in the metadata; written atomically."""
    first = next(iter(layers.values()))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in layers.state_dict().items()}
    metadata = {"huabu_kind": "motion_words", "heads": str(first.pool.heads)}
    if rows is not None:
        state[ROWS_PREFIX + "ids"] = rows.ids.contiguous()
        state[ROWS_PREFIX + "rows"] = rows.rows.detach().to(torch.float16).contiguous()
        metadata["tokens"] = json.dumps(rows.tokens)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def _read(path: Path, rows: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a motion-words file (read as safetensors, by its bytes): the word rows' tensors when
    `rows`, else the layers'."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys() if k.startswith(ROWS_PREFIX) == rows}
    except Exception as err:  # safetensors raises its own error types for a file that is not safetensors
        raise HuabuError(f"{path} is not a safetensors motion-words file ({type(err).__name__})") from None
    if metadata.get("huabu_kind") != "motion_words":
        raise HuabuError(f"{path} is not a motion-words file (its metadata: {json.dumps(metadata)[:200]})")
    return metadata, state


def load_word_rows(path: Path, tokenizer, text_encoder: nn.Module) -> WordRows | None:
    """The word rows of a motion-words file (fp32, on the encoder's device), or None when it has none; raises if
    they were trained for another text encoder (WordRows.check_fits)."""
    metadata, state = _read(path, rows=True)
    if ROWS_PREFIX + "rows" not in state:
        return None
    if "tokens" not in metadata or ROWS_PREFIX + "ids" not in state:
        raise HuabuError(f"{path} has word rows without their tokens and ids")
    rows = WordRows(json.loads(metadata["tokens"]), state[ROWS_PREFIX + "ids"].tolist(),
                    state[ROWS_PREFIX + "rows"].float())
    rows.check_fits(tokenizer, text_encoder)
    return rows.to(text_encoder.device)


def load_motion_words(path: Path, unet: nn.Module) -> nn.ModuleDict:
    """Motion-word layers for `unet` from a file save_motion_words wrote (its word rows: load_word_rows)."""
    metadata, state = _read(path, rows=False)
    layers = build_motion_words(unet, int(metadata["heads"]))
    try:
        layers.load_state_dict(state)
    except RuntimeError as err:
        raise HuabuError(f"{path} does not fit this model's motion modules: {first_line(err)}") from None
    return layers.to(unet.device, unet.dtype)
