"""Build a transformers CLIPTokenizer from CLIP's original BPE vocabulary.

CLIP's byte-pair vocabulary (`bpe_simple_vocab_16e6.txt.gz`, MIT) ships inside the open-clip-torch wheel, which we
cannot install (it pulls torchvision). We take that one file from the wheel and convert it into the vocab.json +
merges.txt pair a CLIPTokenizer reads, which gives the same token ids as OpenAI's tokenizer and SD 1.x's.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

# CLIP keeps the first 49152 - 256 - 2 merges of its 16e6 BPE file (OpenAI's simple_tokenizer.py does the same slice).
_N_MERGES = 49152 - 256 - 2


def _byte_chars() -> list[str]:
    """GPT-2's reversible byte -> printable-unicode alphabet, in the order CLIP numbers it: printable bytes first,
    then the remaining bytes shifted to 256 + n."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(rest))]


def build_clip_tokenizer_files(bpe_gz: Path, out_dir: Path) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs of SD 1.x's CLIP tokenizer into `out_dir`."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _N_MERGES]]
    byte_chars = _byte_chars()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (out_dir / "merges.txt").write_text(merges_text, encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "clean_up_tokenization_spaces": True, **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
