"""huabu-tiny-dit's stage on toy sizes (a one-layer transformer over the shipped huabu-tiny's VAE and CLIP): the
padding shortcut is the full context, the loss falls, a killed run resumes to the same weights, and the assembled
folder is a plain StableDiffusion3Pipeline that huabu's engine runs."""

from pathlib import Path

import pytest
import torch
from training_support import Killed, assert_same, kill_after, newest_weights

from huabu.tiny.configs import DitTrainConfig
from huabu.tiny.data import load_dataset, write_dataset

PROMPT = "a red apple on a blue background"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("scenes") / "data", 48, seed=1, progress=False)


def _cfg(data: Path, out: Path, **changes) -> DitTrainConfig:
    return DitTrainConfig(**{"data": str(data), "out": str(out), "steps": 4, "batch_size": 4, "warmup": 1,
                             "layers": 1, "heads": 2, "head_dim": 16, "checkpoint_every": 2,
                             "sample_every": 10**6, **changes})


@pytest.fixture(scope="module")
def frozen():
    from huabu.tiny import train_dit

    return train_dit.load_frozen(train_dit.base_folder("huabu-tiny"))


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory) -> Path:
    """The final folder of a 4-step `huabu tiny train dit` run (`_cfg`'s settings), with samples after the last
    step."""
    from huabu.cli.main import main
    from huabu.tiny import train_unet

    out = tmp_path_factory.mktemp("dit") / "straight"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_unet, "sample_prompts", lambda: [PROMPT, ""])
        assert main(["tiny", "train", "dit", "--data", str(scenes), "--out", str(out), "--steps", "4",
                     "--batch-size", "4", "--warmup", "1", "--layers", "1", "--heads", "2", "--head-dim", "16",
                     "--checkpoint-every", "2", "--sample-every", "4"]) == 0
    return out / "final"


def test_one_padding_token_stands_for_the_pipelines_256(frozen):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from huabu.tiny import train_dit

    vae, text_encoder, tok = frozen
    transformer = train_dit.build_transformer(DitTrainConfig(layers=2, heads=2, head_dim=16), 4,
                                                 text_encoder.config)
    torch.manual_seed(0)
    for p in transformer.parameters():  # past adaLN-zero's zero init, so every path carries signal
        p.data.normal_(0, 0.05)
    pipe = train_dit.sd3_pipeline(transformer, vae, text_encoder, tok, FlowMatchEulerDiscreteScheduler())
    full, _, pooled, _ = pipe.encode_prompt([PROMPT, ""], None, None, do_classifier_free_guidance=False)
    short, _, _, _ = pipe.encode_prompt([PROMPT, ""], None, None, do_classifier_free_guidance=False,
                                        max_sequence_length=1)
    assert (full.shape[1], short.shape[1]) == (77 + train_dit.T5_TOKENS, 78) == (333, 78)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([300.0, 900.0])
    with torch.no_grad():
        reference = transformer(x, full, pooled, t).sample
        with train_dit.padding_once(transformer):
            shortcut = transformer(x, short, pooled, t).sample
        plain = transformer(x, short, pooled, t).sample  # the hooks are gone again
    assert (shortcut - reference).abs().max() < 1e-5
    assert (plain - reference).abs().max() > 1e-3  # one zero token alone is another context


def test_loss_falls_on_a_fixed_batch(scenes, tmp_path):
    from huabu.tiny import train_dit
    from huabu.training.loop import optimizer_step

    recipe, _, _ = train_dit.setup(_cfg(scenes, tmp_path, batch_size=8))
    with torch.no_grad():
        first = recipe.step(0).item()
    for _ in range(30):
        optimizer_step(recipe, 0, [2e-3], 1.0)
    with torch.no_grad():
        last = recipe.step(0).item()
    assert 2.0 < first < 3.2  # E|noise - x0|^2 = 1 + E|x0|^2 for a near-zero prediction at the start (2.70)
    assert last < 1.0  # 0.90 after 30 steps


def test_dit_stage_resumes_identically_and_writes_samples(scenes, tmp_path, monkeypatch, trained):
    from huabu.tiny import train_dit, train_unet

    monkeypatch.setattr(train_unet, "sample_prompts", lambda: [PROMPT, ""])
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            train_dit.train(_cfg(scenes, killed, sample_every=4))
    assert [p.name for p in (killed / "checkpoints").glob("step-*")] == ["step-0000002"]
    train_dit.train(_cfg(scenes, killed, sample_every=4))
    for name in ("transformer", "ema"):
        assert_same(newest_weights(trained.parent, name), newest_weights(killed, name))
    assert (trained.parent / "samples-0000004.png").is_file()
    assert {"config.json", "scheduler_config.json"} <= {p.name for p in trained.iterdir()}


def test_assembled_folder_is_a_plain_sd3_pipeline_that_the_engine_runs(trained, tmp_path, capsys):
    from diffusers import StableDiffusion3Pipeline

    from huabu.cli.main import main
    from huabu.core.requests import GenerateRequest
    from huabu.core.settings import Settings
    from huabu.engine.generate import Engine
    from huabu.tiny import train_dit

    folder = tmp_path / "huabu-tiny-dit"
    assert main(["tiny", "assemble-dit", "--transformer", str(trained), "--out", str(folder)]) == 0
    assert f"assembled huabu-tiny-dit in {folder}" in capsys.readouterr().out
    # diffusers loads an SD3 folder without T5 when told so, as for SD3 Medium without its T5
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                    local_files_only=True, dtype=torch.float32)
    assert pipe.text_encoder_3 is None and pipe.transformer.config.in_channels == 4
    assert pipe.scheduler.config.shift == DitTrainConfig().shift
    image = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)

    settings = Settings.for_home(tmp_path / "home", device="cpu", dtype="fp32", hub_offline=True)
    result = Engine(settings).generate(GenerateRequest(model=str(folder), prompt=PROMPT, steps=2, seed=3))
    assert result.images[0].size == (64, 64)  # the transformer's sample size times the VAE's factor
    assert "Model: huabu-tiny-dit" in result.infotexts[0]

    from huabu.tiny.eval import EvalSettings, evaluate  # huabu tiny eval scores the DiT as it scores the UNet

    scores = evaluate(EvalSettings(model=folder, steps=2, singles=2, pairs=1, batch=2, sampler="Euler"))
    assert scores["ceiling_real"]["background_accuracy"] == 1.0 and 0 <= scores["background_accuracy"] <= 1
    assert scores["settings"]["sampler"] == "Euler"

    # the shipped folder: this one with the full-size transformer in fp16 instead of the toy one
    toy = (folder / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size
    others = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) - toy
    full = train_dit.build_transformer(DitTrainConfig(), 4, pipe.text_encoder.config)
    assert others + 2 * sum(t.numel() for t in full.state_dict().values()) < 60e6


def test_bilingual_stage_trains_its_text_encoder_on_chinese_characters(tmp_path, capsys, monkeypatch):
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import load_file

    from huabu.cli.main import main
    from huabu.core.errors import InvalidRequest
    from huabu.tiny import train_dit

    world = write_dataset(tmp_path / "world", 24, seed=1, progress=False, world="geneval")
    with pytest.raises(InvalidRequest, match="--text-lr"):  # a frozen CLIP never learnt a Chinese character
        train_dit.setup(_cfg(world, tmp_path / "frozen", captions="zh"))
    bilingual = {"captions": "mix", "text_lr": 1e-3, "checkpoint_every": 1}
    train_dit.train(_cfg(world, tmp_path / "run", steps=2, **bilingual))
    with monkeypatch.context() as m:  # killed after a step, resumed: the same encoder, characters included
        kill_after(m, 1)
        with pytest.raises(Killed):
            train_dit.train(_cfg(world, tmp_path / "killed", steps=2, **bilingual))
    train_dit.train(_cfg(world, tmp_path / "killed", steps=2, **bilingual))
    for name in ("text_encoder", "ema"):
        assert_same(newest_weights(tmp_path / "run", name), newest_weights(tmp_path / "killed", name))
    final = tmp_path / "run" / "final"
    folder = tmp_path / "huabu-tiny-dit"
    assert main(["tiny", "assemble-dit", "--transformer", str(final), "--out", str(folder)]) == 0
    capsys.readouterr()
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                    local_files_only=True, dtype=torch.float32)
    # each character of the captions is one token (CLIP's BPE cuts 背 alone into three byte pieces), English as before
    caption = load_dataset(world).captions_in("zh")[0]
    assert len(pipe.tokenizer(caption, add_special_tokens=False).input_ids) == len(caption)
    assert pipe.tokenizer_2(caption).input_ids == pipe.tokenizer(caption).input_ids
    _, _, base_tok = train_dit.load_frozen(train_dit.base_folder("huabu-tiny"))
    assert pipe.tokenizer("a red apple").input_ids == base_tok("a red apple").input_ids
    # the shipped encoder is the trained one, in both CLIP slots: its English rows moved too
    base = load_file(str(train_dit.base_folder("huabu-tiny") / "text_encoder" / "model.safetensors"))
    key = "text_model.encoder.layers.0.mlp.fc1.weight"
    shipped = pipe.text_encoder.state_dict()[key]
    assert (shipped - base[key].float()).abs().max() > 1e-4
    assert torch.equal(shipped, pipe.text_encoder_2.state_dict()[key])
    image = pipe(caption, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_a_run_starts_from_an_assembled_folder(trained, scenes, tmp_path):
    from safetensors.torch import load_file

    from huabu.cli.main import main
    from huabu.core.errors import InvalidRequest
    from huabu.tiny import train_dit

    folder = tmp_path / "huabu-tiny-dit"
    assert main(["tiny", "assemble-dit", "--transformer", str(trained), "--out", str(folder)]) == 0
    final = train_dit.train(_cfg(scenes, tmp_path / "run", init=str(folder), steps=1, lr=0.0))
    start = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(final / "diffusion_pytorch_model.safetensors"))
    assert start.keys() == after.keys()
    assert all(torch.equal(start[key].float(), after[key].float()) for key in start)  # lr 0: the start, unchanged
    with pytest.raises(InvalidRequest, match="another shape"):
        train_dit.train(_cfg(scenes, tmp_path / "other", init=str(folder), layers=2))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model_index.json").write_text("{}")  # a diffusers folder without a text encoder
    with pytest.raises(InvalidRequest, match="^--init .* is not a huabu-tiny-shaped"):
        train_dit.train(_cfg(scenes, tmp_path / "missing", init=str(tmp_path / "empty")))
