"""Checkpoint files are judged by their bytes; pickle is refused unless allowed, and then read weights-only."""

from __future__ import annotations

import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from huabu.core.errors import ModelNotFound, UnsafeCheckpoint
from huabu.engine import checkpoints


class Payload:
    """Unpickling this would run code (os.system) if torch.load were not weights-only."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.fixture
def files(tmp_path):
    safe = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2, 3)}, safe, metadata={"huabu_config": "sd15"})
    torch_zip = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2, 3)}}, torch_zip)
    raw_pickle = tmp_path / "raw.pt"
    raw_pickle.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    evil = tmp_path / "evil.ckpt"
    torch.save({"w": torch.ones(1), "x": Payload()}, evil)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not a model")
    disguised = tmp_path / "innocent.SAFETENSORS"
    disguised.write_bytes(torch_zip.read_bytes())
    lower = tmp_path / "innocent.safetensors"
    lower.write_bytes(torch_zip.read_bytes())
    return dict(safe=safe, torch_zip=torch_zip, raw_pickle=raw_pickle, evil=evil, text=text, disguised=disguised,
                lower=lower)


def test_format_comes_from_the_bytes(files):
    assert checkpoints.sniff_format(files["safe"]) == "safetensors"
    assert checkpoints.sniff_format(files["torch_zip"]) == "pickle"
    assert checkpoints.sniff_format(files["raw_pickle"]) == "pickle"
    assert checkpoints.sniff_format(files["disguised"]) == "pickle"
    assert checkpoints.sniff_format(files["lower"]) == "pickle"
    assert checkpoints.sniff_format(files["text"]) == "unknown"


def test_a_header_length_beyond_the_file_is_not_safetensors(tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    assert checkpoints.sniff_format(bogus) == "unknown"


@pytest.mark.parametrize("key", ["torch_zip", "raw_pickle", "disguised", "lower"])
def test_pickle_is_refused_by_default_whatever_the_name(files, key):
    with pytest.raises(UnsafeCheckpoint, match=r"is a pickle checkpoint, which can run code when loaded; .*"
                                                r"--allow-unsafe-pickle"):
        checkpoints.load_state_dict(files[key])


def test_allowed_pickle_is_read_weights_only(files):
    state = checkpoints.load_state_dict(files["torch_zip"], allow_pickle=True)
    assert torch.equal(state["w"], torch.ones(2, 3))  # the LDM "state_dict" nesting is unwrapped
    with pytest.raises(UnsafeCheckpoint, match=r"^evil\.ckpt could not be read with torch\.load\(weights_only=True\)"):
        checkpoints.load_state_dict(files["evil"], allow_pickle=True)


def test_safetensors_and_non_checkpoints(files, tmp_path):
    assert torch.equal(checkpoints.load_state_dict(files["safe"])["w"], torch.ones(2, 3))
    assert checkpoints.safetensors_metadata(files["safe"]) == {"huabu_config": "sd15"}
    with pytest.raises(ModelNotFound, match="is not a model checkpoint"):
        checkpoints.load_state_dict(files["text"])
    with pytest.raises(ModelNotFound, match="checkpoint file not found"):
        checkpoints.load_state_dict(tmp_path / "missing.safetensors")


def test_hashes_are_cached_and_a1111_shaped(files, tmp_path):
    import hashlib

    cache = checkpoints.HashCache(tmp_path / "cache" / "hashes.json")
    digest = cache.sha256(files["safe"])
    assert digest == hashlib.sha256(files["safe"].read_bytes()).hexdigest()
    assert checkpoints.short_hash(digest) == digest[:10]
    data = files["safe"].read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    assert cache.sha256(files["safe"], kind="sshs") == hashlib.sha256(data[header:]).hexdigest()
    # A second cache reads the first one's file instead of hashing again.
    reread = checkpoints.HashCache(tmp_path / "cache" / "hashes.json")
    reread._entries = None
    assert reread.sha256(files["safe"]) == digest
    os.utime(files["safe"], ns=(1, 1))  # a changed file (new mtime) is hashed again
    assert reread._load()[f"sha256:{os.path.realpath(files['safe'])}"]["mtime"] != 1
    assert reread.sha256(files["safe"]) == digest


def test_model_manager_refuses_pickle_checkpoints(settings, model_store):
    from huabu.engine.models import ModelManager

    for key in ("ckpt", "fake_safetensors"):
        with pytest.raises(UnsafeCheckpoint, match="is a pickle checkpoint"):
            ModelManager(settings).load(str(model_store[key]))


def test_diffusers_folder_with_pickle_weights_is_refused_unless_allowed(settings, model_store, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from huabu.engine.models import ModelManager

    folder = tmp_path / "pickled"
    shutil.copytree(model_store["folder"], folder)
    for weights in folder.glob("*/*.safetensors"):  # re-save every component as a pickle .bin
        name = "pytorch_model.bin" if weights.parent.name == "text_encoder" else "diffusion_pytorch_model.bin"
        torch.save(load_file(weights), weights.with_name(name))
        weights.unlink()
    with pytest.raises(UnsafeCheckpoint, match="holds no .safetensors weights"):
        ModelManager(settings).load(str(folder))
    loaded = ModelManager(settings.with_(allow_unsafe_pickle=True)).load(str(folder))
    assert loaded.pipeline.unet.config.in_channels == 4


def test_damaged_safetensors_files_are_one_line_errors_naming_the_file(settings, model_store, tmp_path):
    import shutil

    from huabu.core.errors import HuabuError
    from huabu.engine.models import ModelManager

    data = model_store["single"].read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    damaged = {"truncated.safetensors": data[:header + 1000],  # a valid header, most tensor bytes missing
               "badjson.safetensors": data[:8] + b"{" + b"x" * (header - 9) + data[header:],
               "random.safetensors": os.urandom(4096)}
    for name, content in damaged.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(HuabuError, match=name.replace(".", r"\.")) as caught:
            ModelManager(settings).load(str(path))
        assert "\n" not in str(caught.value), name
    with pytest.raises(ModelNotFound, match="damaged or truncated"):
        checkpoints.load_state_dict(tmp_path / "truncated.safetensors")

    folder = tmp_path / "cut-folder"
    shutil.copytree(model_store["folder"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(HuabuError, match="diffusion_pytorch_model.safetensors") as caught:
        ModelManager(settings).load(str(folder))
    assert "\n" not in str(caught.value) and "pickle" not in str(caught.value)
