"""LoRAs at generation time: a hand-written kohya file (with a LyCORIS LoCon conv layer) and a diffusers-format file
load through diffusers, weights combine, switching never leaks into the next image, `Lora hashes` is A1111's."""

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from huabu.core.errors import HuabuError
from huabu.core.requests import GenerateRequest
from huabu.engine import lora_formats as formats
from huabu.engine.generate import Engine

PROMPT = "a red dragon"


def _kohya_state(pipe, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """The keys sd-scripts writes for SD 1.x (networks.lora: every Linear of the transformer blocks and of CLIP's
    attention and MLP) plus one LoCon 3x3 conv, in fp16 as kohya saves them."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    targets = [("lora_unet_", pipe.unet, lambda n: "transformer_blocks" in n or n.endswith(("proj_in", "proj_out"))),
               ("lora_te_text_model_", pipe.text_encoder, lambda n: "self_attn." in n or ".mlp." in n)]
    for prefix, model, wanted in targets:
        for name, module in model.named_modules():
            if ".lora_" in name or name.endswith("base_layer"):  # parts of a LoRA another test left loaded
                continue
            module = getattr(module, "base_layer", module)
            if isinstance(module, torch.nn.Linear) and wanted(name):
                key = prefix + name.replace(".", "_")
                state[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.3
                state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.3
                state[f"{key}.alpha"] = torch.tensor(float(rank / 2))
    conv = pipe.unet.down_blocks[0].resnets[0].conv1
    conv = getattr(conv, "base_layer", conv)
    state["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"] = torch.randn(rank, conv.in_channels, 3, 3,
                                                                                    generator=g) * 0.3
    state["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"] = torch.randn(conv.out_channels, rank, 1, 1,
                                                                                  generator=g) * 0.3
    state["lora_unet_down_blocks_0_resnets_0_conv1.alpha"] = torch.tensor(float(rank))
    return {key: value.half() for key, value in state.items()}


@pytest.fixture(scope="module")
def lora_files(engine, model_store, settings) -> dict[str, Path]:
    pipe = engine.models.load(str(model_store["folder"])).pipeline
    settings.loras_dir.mkdir(parents=True, exist_ok=True)
    kohya = settings.loras_dir / "kohya-hand.safetensors"
    save_file(_kohya_state(pipe, 0), kohya, metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4"})
    layers = formats.from_kohya({k: v.float() for k, v in _kohya_state(pipe, 1, rank=2).items() if "_te_" not in k})
    style = formats.write_lora(settings.loras_dir / "sub" / "diff-style.safetensors", layers, formats.DIFFUSERS,
                               {"huabu_trigger_word": "zqx", "ss_sd_model_name": "tiny-sd"})
    outside = formats.write_lora(model_store["home"] / "elsewhere" / "loose.safetensors", layers, formats.KOHYA)
    return {"kohya": kohya, "style": style, "outside": outside}


def _generate(engine, model_store, prompt: str, **fields):
    request = GenerateRequest.create(**{"prompt": prompt, "model": str(model_store["folder"]), "steps": 4, "seed": 5,
                                        "width": 32, "height": 32, **fields})
    result = engine.generate(request)
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


def _addnet_hash(path: Path) -> str:
    """sha256 of the safetensors file after its header, computed here independently."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + length:]).hexdigest()


def test_loras_outside_the_prompt_become_a1111_tags():
    from huabu.core.requests import LoraSpec
    from huabu.engine.loras import prompt_with_loras

    specs = [LoraSpec(name="a", weight=0.8), LoraSpec(name="b", weight=1.0, te_weight=0.5),
             LoraSpec(name="c", weight=0.7, te_weight=0.7), LoraSpec(name="a", weight=0.8),
             LoraSpec(name="C:/loras/d.safetensors")]
    prompt, untaggable = prompt_with_loras("cat, <lora:a:0.8>", specs)
    # One `a` is the prompt's own tag; the other is a second application, so it is written.
    assert prompt == "cat, <lora:a:0.8> <lora:b:0.5:1> <lora:c:0.7> <lora:a:0.8>"
    assert untaggable == [specs[4]]
    assert prompt_with_loras("", specs[:1]) == ("<lora:a:0.8>", [])
    assert prompt_with_loras("cat", []) == ("cat", [])


def test_weights_combine_and_switching_never_leaks(engine, model_store, lora_files):
    base, _ = _generate(engine, model_store, PROMPT)
    zero, _ = _generate(engine, model_store, PROMPT + "<lora:kohya-hand:0>")
    assert np.array_equal(zero, base)
    one, info = _generate(engine, model_store, PROMPT + "<lora:kohya-hand:1>")
    assert np.abs(one - base).max() > 10
    assert f'Lora hashes: "kohya-hand: {_addnet_hash(lora_files["kohya"])[:12]}"' in info
    style, _ = _generate(engine, model_store, PROMPT + "<lora:diff-style:1>")
    both, info = _generate(engine, model_store, PROMPT + "<lora:kohya-hand:1><lora:diff-style:1>")
    assert min(np.abs(both - one).max(), np.abs(both - style).max(), np.abs(style - base).max()) > 10
    assert "kohya-hand: " in info and "diff-style: " in info
    assert np.array_equal(_generate(engine, model_store, PROMPT)[0], base)  # LoRAs off again: the base, exactly
    assert np.array_equal(_generate(engine, model_store, PROMPT + "<lora:kohya-hand:1>")[0], one)


def test_a_hires_prompt_runs_its_own_loras_in_the_second_pass(engine, model_store, lora_files):
    """A1111 activates the hires prompt's LoRAs for the second pass: a tag there alone changes only that pass, a hires
    prompt without the tag runs that pass without it, and the next image's first pass has the prompt's LoRAs again."""
    from huabu.core.fields import infotext_mode, infotext_to_request_fields
    from huabu.core.pnginfo import parse_infotext

    hires = dict(enable_hr=True, hr_second_pass_steps=3, denoising_strength=0.95)
    tag = "<lora:kohya-hand:1>"
    base, _ = _generate(engine, model_store, PROMPT, **hires)
    both, _ = _generate(engine, model_store, PROMPT + tag, **hires)
    second_only, info = _generate(engine, model_store, PROMPT, hr_prompt=PROMPT + tag, **hires)
    first_only, _ = _generate(engine, model_store, PROMPT + tag, hr_prompt=PROMPT, **hires)
    assert min(np.abs(a - b).max() for a, b in [(second_only, base), (second_only, both), (first_only, both),
                                                (first_only, base), (first_only, second_only)]) > 5
    assert f'Lora hashes: "kohya-hand: {_addnet_hash(lora_files["kohya"])[:12]}"' in info
    parsed = parse_infotext(info)
    fields = {**infotext_to_request_fields(parsed), "mode": infotext_mode(parsed), "model": str(model_store["folder"])}
    remade = engine.generate(GenerateRequest.create(**fields)).images[0]
    assert np.array_equal(np.asarray(remade, dtype=np.int16), second_only)
    # Two pipeline calls: the second call's first pass runs without the LoRA the first call's hires pass switched on.
    request = GenerateRequest.create(prompt=PROMPT, model=str(model_store["folder"]), steps=4, seed=5, width=32,
                                     height=32, n_iter=2, hr_prompt=PROMPT + tag, **hires)
    later = np.asarray(engine.generate(request).images[1], dtype=np.int16)
    alone, _ = _generate(engine, model_store, PROMPT, hr_prompt=PROMPT + tag, **{**hires, "seed": 6})
    assert np.array_equal(later, alone)
    assert np.array_equal(_generate(engine, model_store, PROMPT, **hires)[0], base)


def test_kohya_file_reaches_unet_text_encoder_and_locon_conv(engine, model_store, lora_files):
    from peft.tuners.lora import LoraLayer

    _generate(engine, model_store, PROMPT + "<lora:kohya-hand:0.5:1>")  # text encoder 0.5, UNet 1
    pipe = engine.models.load(str(model_store["folder"])).pipeline
    name = f"lora_{hashlib.sha256(lora_files['kohya'].read_bytes()).hexdigest()[:16]}"  # one adapter per file
    assert name in pipe.get_list_adapters()["unet"] and name in pipe.get_list_adapters()["text_encoder"]
    conv = pipe.unet.down_blocks[0].resnets[0].conv1
    assert isinstance(conv, LoraLayer) and conv.scaling[name] == pytest.approx(1.0)  # alpha 4 / rank 4, weight 1
    q = pipe.text_encoder.encoder.layers[0].self_attn.q_proj
    assert q.scaling[name] == pytest.approx(0.5 * 2 / 4)  # weight 0.5 x alpha 2 / rank 4


def test_each_file_loads_once_and_paths_work(engine, model_store, lora_files, monkeypatch):
    pipe_class = type(engine.models.load(str(model_store["folder"])).pipeline)
    real, calls = pipe_class.load_lora_weights, []

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("adapter_name"))
        return real(self, *args, **kwargs)

    real_read, reads = pipe_class.lora_state_dict.__func__, []

    def counting_reads(cls, *args, **kwargs):
        reads.append(args[0])
        return real_read(cls, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "load_lora_weights", counting)
    monkeypatch.setattr(pipe_class, "lora_state_dict", classmethod(counting_reads))
    first, info = _generate(engine, model_store, PROMPT, loras=[{"name": str(lora_files["outside"]), "weight": 0.8}])
    second, _ = _generate(engine, model_store, PROMPT, loras=[{"name": str(lora_files["outside"]), "weight": 0.8}])
    # A UNet-only file: the text encoder lacking its adapter is known not to need it, so the file is read once.
    assert np.array_equal(first, second) and len(calls) == 1 and len(reads) == 1
    assert f'Lora hashes: "loose: {_addnet_hash(lora_files["outside"])[:12]}"' in info


def test_a_lora_that_does_not_fit_fails_in_one_line_and_leaves_no_trace(engine, model_store, settings, lora_files):
    base, _ = _generate(engine, model_store, PROMPT)
    bad = settings.loras_dir / "wrong-shape.safetensors"
    key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{key}.lora_down.weight": torch.zeros(4, 7), f"{key}.lora_up.weight": torch.zeros(64, 4)}, bad,
              metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(HuabuError, match="wrong-shape.*cannot be applied.*trained on sdxl_base_v1-0") as err:
        _generate(engine, model_store, PROMPT + "<lora:wrong-shape:1>")
    assert "\n" not in str(err.value)
    bad.unlink()
    assert np.array_equal(_generate(engine, model_store, PROMPT)[0], base)


def test_list_loras_reads_the_metadata(settings, lora_files, huabu_env, capsys):
    from huabu.cli.main import main
    from huabu.engine.lora_library import list_loras

    found = {info.name: info for info in list_loras(settings)}
    kohya, style = found["kohya-hand"], found["diff-style"]
    assert (kohya.format, kohya.rank, kohya.short_hash) == ("kohya", 4, _addnet_hash(lora_files["kohya"])[:12])
    assert (style.format, style.rank, style.alpha, style.trigger_words) == ("diffusers", 2, 1.0, ("zqx",))
    assert style.base_model == "tiny-sd" and style.to_a1111()["path"] == str(lora_files["style"])
    (huabu_env / "loras").symlink_to(settings.loras_dir)
    assert main(["loras"]) == 0
    out = capsys.readouterr().out
    assert f"kohya-hand [{kohya.short_hash}]  kohya  rank 4/alpha 2" in out and "trigger: zqx" in out


@pytest.mark.slow
def test_a_compiled_unet_follows_lora_switches(engine, settings, model_store, lora_files):
    # On a CPU --compile freezes the UNet's weights into the graph: LoRAs turned on, reweighted and off must still act.
    compiled = Engine(settings.with_(compile=True))
    for prompt in (PROMPT, PROMPT + "<lora:kohya-hand:1>", PROMPT + "<lora:kohya-hand:0.5>", PROMPT):
        eager, frozen = _generate(engine, model_store, prompt)[0], _generate(compiled, model_store, prompt)[0]
        assert np.abs(frozen - eager).max() <= 2
