"""huabu-tiny's IP-Adapter stage on toy sizes (the shipped huabu-tiny and scorer, a few world scenes): each step's
references and captions, the loss falling, a killed run resuming to the same weights, the shipped files loading
through huabu's engine and steering it, and the evaluation's figures; for the plain adapter and for Plus."""

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from training_support import Killed, assert_same, kill_after, newest_weights

from huabu.tiny.configs import IpAdapterTrainConfig
from huabu.tiny.data import load_dataset, write_dataset

NAMELESS = "in the top left corner on a green background"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("world") / "data", 80, seed=1, progress=False, world="geneval")


def _cfg(data: Path, out: Path, **changes) -> IpAdapterTrainConfig:
    return IpAdapterTrainConfig(**{"data": str(data), "out": str(out), "steps": 4, "batch_size": 3, "warmup": 1,
                                   "checkpoint_every": 2, **changes})


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "plus"])
def plus(request) -> bool:
    return request.param


@pytest.fixture(scope="module")
def trained(scenes, plus, tmp_path_factory) -> Path:
    """The run folder of a 4-step `huabu tiny train ip-adapter [--plus]` (`_cfg`'s settings)."""
    from huabu.cli.main import main

    out = tmp_path_factory.mktemp("ipa") / "straight"
    assert main(["tiny", "train", "ip-adapter", "--data", str(scenes), "--out", str(out), "--steps", "4",
                 "--batch-size", "3", "--warmup", "1", "--checkpoint-every", "2", *(["--plus"] if plus else [])]) == 0
    return out


def _projection_keys(plus: bool) -> set[str]:
    """The original layout's `image_proj.*` keys: ImageProjection's, or the Plus Resampler's (4 blocks)."""
    if not plus:
        return {f"image_proj.{k}" for k in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")}
    block = ("0.norm1.weight", "0.norm1.bias", "0.norm2.weight", "0.norm2.bias", "0.to_q.weight", "0.to_kv.weight",
             "0.to_out.weight", "1.0.weight", "1.0.bias", "1.1.weight", "1.3.weight")
    return ({f"image_proj.{k}" for k in ("latents", "proj_in.weight", "proj_in.bias", "proj_out.weight",
                                         "proj_out.bias", "norm_out.weight", "norm_out.bias")}
            | {f"image_proj.layers.{n}.{k}" for n in range(4) for k in block})


def test_references_share_only_the_object_and_half_the_captions_leave_it_out(scenes):
    from huabu.tiny import measure as M
    from huabu.tiny import train_ip_adapter as T
    from huabu.tiny import world as W

    data = load_dataset(scenes)
    chosen = T.single_scenes(data, 64)
    attrs = [data.attrs[i] for i in chosen]
    assert all(len(a["objects"]) == 1 and a["objects"][0] < 64 for a in attrs)
    captions = [data.captions[i] for i in chosen]
    cfg = _cfg(scenes, Path("unused"), nameless=1.0, drop_text=0.0, drop_image=0.0)
    texts, refs, drop = T.batch_conditions(cfg, 5, attrs, captions)
    for a, text, ref in zip(attrs, texts, refs):
        assert W.OBJECT_NAMES[a["objects"][0]] not in text and text.endswith(f"on a {a['background']} background")
        assert M.background_colour(ref)[0] != a["background"]
    assert not drop.any()
    again = T.batch_conditions(cfg, 5, attrs, captions)  # a function of (seed, step): resumes see the same batch
    assert again[0] == texts and all(np.array_equal(a, b) for a, b in zip(again[1], refs))
    full, _, dropped = T.batch_conditions(_cfg(scenes, Path("unused"), nameless=0.0, drop_text=0.0, drop_image=1.0),
                                          5, attrs, captions)
    assert full == captions and dropped.all()


def test_loss_falls_on_a_fixed_batch(scenes, plus, tmp_path):
    from huabu.tiny import train_ip_adapter as T
    from huabu.training.loop import optimizer_step

    recipe, unet, _ = T.setup(_cfg(scenes, tmp_path, batch_size=4, plus=plus))
    trainable = sum(p.numel() for p in recipe.optimizer.param_groups[0]["params"])
    assert trainable == sum(t.numel() for t in T.original_state(unet).values())  # the adapter alone learns
    with torch.no_grad():
        first = recipe.step(0).item()
    for _ in range(25):
        optimizer_step(recipe, 0, [2e-3], 1.0)
    with torch.no_grad():
        last = recipe.step(0).item()
    assert last < 0.5 * first  # 0.026 -> 0.006 (the base UNet alone already predicts most of the noise)


def test_object_weight_and_noisy_timesteps_change_the_step_and_bad_values_are_refused(scenes, tmp_path):
    from huabu.core.errors import InvalidRequest
    from huabu.tiny import train_ip_adapter as T

    losses = {}
    for name, changes in (("plain", {}), ("weighted", {"object_weight": 4.0}), ("cubic", {"timesteps": "cubic"}),
                          ("distilled", {"distill": 1.0, "nameless": 1.0, "drop_text": 0.0, "drop_image": 0.0})):
        recipe, _, _ = T.setup(_cfg(scenes, tmp_path / name, **changes))
        with torch.no_grad():
            losses[name] = recipe.step(1).item()
    assert losses["weighted"] != losses["plain"] and losses["cubic"] != losses["plain"]
    # the distance to what the named caption draws without the adapter comes on top of the noise loss
    undistilled, _, _ = T.setup(_cfg(scenes, tmp_path / "undistilled", nameless=1.0, drop_text=0.0, drop_image=0.0))
    with torch.no_grad():
        assert losses["distilled"] > undistilled.step(1).item() + 1e-4
    for changes, message in (({"timesteps": "linear"}, "timesteps must be one of uniform, cubic"),
                             ({"object_weight": -1.0}, "--object-weight must be 0 or positive"),
                             ({"objects": 104}, "--objects must be 1-103"),
                             ({"identity_weight": 1.0}, "positive with --encoder-lr"),
                             ({"distill": -1.0}, "--distill must be 0 or positive"),
                             ({"unet_lora_rank": -1}, "--unet-lora-rank must be 0")):
        with pytest.raises(InvalidRequest, match=message):
            T.setup(_cfg(scenes, tmp_path / "bad", **changes))


def test_a_killed_run_resumes_to_the_same_adapter(scenes, plus, tmp_path, monkeypatch, trained):
    from huabu.tiny import train_ip_adapter as T

    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            T.train(_cfg(scenes, killed, plus=plus))
    assert [p.name for p in (killed / "checkpoints").glob("step-*")] == ["step-0000002"]
    T.train(_cfg(scenes, killed, plus=plus))
    assert_same(newest_weights(trained, "adapter"), newest_weights(killed, "adapter"))
    assert (trained / "log.jsonl").read_text().count("\n") == 1  # the last step's line (one every 10 steps)


def test_the_saved_adapter_has_the_original_layout_that_diffusers_rebuilds(trained, plus):
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
    from safetensors.torch import load_file

    from huabu.engine.ip_adapters import read_ip_adapter
    from huabu.engine.models import BUILTIN_DIR
    from huabu.tiny import train_ip_adapter as T

    final = trained / "final"
    saved = load_file(str(final / T.WEIGHTS_FILE))
    unet = UNet2DConditionModel.from_pretrained(BUILTIN_DIR / "unet")
    layers = T.cross_attention_layers(unet)
    assert {k for k in saved if k.startswith("image_proj.")} == _projection_keys(plus)
    assert {k for k in saved if k.startswith("ip_adapter.")} == {f"ip_adapter.{n}.to_{kind}_ip.weight"
                                                                  for n, _, _ in layers for kind in "kv"}
    assert [n for n, _, _ in layers] == list(range(1, 2 * len(layers), 2)) and len(layers) == 10
    assert {p.name for p in (final / "image_encoder").iterdir()} == {"config.json", "model.safetensors"}

    unet._load_ip_adapter_weights([read_ip_adapter(final / T.WEIGHTS_FILE)], low_cpu_mem_usage=False)
    proj = unet.encoder_hid_proj.image_projection_layers[0]
    if plus:  # diffusers infers the Resampler's sizes from the tensors: they must come back as trained
        assert type(proj) is IPAdapterPlusImageProjection and proj.latents.shape == (1, T.PLUS_QUERIES, 128)
        assert len(proj.layers) == 4 and {block.attn.heads for block in proj.layers} == {2}
    else:
        assert type(proj) is ImageProjection
    assert_same(T.original_state(unet), saved)  # and back to the same file


def test_a_tuned_encoder_trains_resumes_and_ships_with_the_adapter(scenes, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import CLIPVisionModelWithProjection

    from huabu.tiny import train_ip_adapter as T
    from huabu.tiny.eval import SCORER_DIR

    recipe, _, encoder = T.setup(_cfg(scenes, tmp_path / "setup", encoder_lr=1e-3))
    assert [g["lr"] for g in recipe.optimizer.param_groups] == [1e-3, 1e-3]
    assert set(recipe.optimizer.param_groups[1]["params"]) == set(encoder.parameters())
    assert recipe.checkpointed["encoder"] is encoder
    # the identity read-out: a 64-way linear layer on the embedding, trained beside the adapter, its loss added
    named, _, _ = T.setup(_cfg(scenes, tmp_path / "setup", encoder_lr=1e-3, identity_weight=1.0))
    assert named.checkpointed["readout"].weight.shape == (64, 128)
    assert set(named.checkpointed["readout"].parameters()) <= set(named.optimizer.param_groups[0]["params"])
    with torch.no_grad():
        plain, with_identity = recipe.step(1).item(), named.step(1).item()
    assert with_identity > plain + 1.0  # a fresh 64-way read-out costs about ln 64 = 4.2

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    T.train(_cfg(scenes, straight, encoder_lr=1e-3))
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            T.train(_cfg(scenes, killed, encoder_lr=1e-3))
    T.train(_cfg(scenes, killed, encoder_lr=1e-3))
    assert_same(newest_weights(straight, "encoder"), newest_weights(killed, "encoder"))

    shipped = load_file(str(straight / "final" / T.IMAGE_ENCODER / "model.safetensors"))
    scorer = CLIPVisionModelWithProjection.from_pretrained(SCORER_DIR, dtype=torch.float32).state_dict()
    assert shipped.keys() == scorer.keys()
    moved = [k for k in scorer if not torch.equal(shipped[k], scorer[k])]
    assert "visual_projection.weight" in moved and len(moved) > len(scorer) // 2


def test_a_unet_lora_trains_resumes_and_ships_beside_the_adapter(scenes, tmp_path, monkeypatch):
    from huabu.engine import lora_formats as formats
    from huabu.tiny import train_ip_adapter as T

    recipe, _, _ = T.setup(_cfg(scenes, tmp_path / "setup", unet_lora_rank=2, unet_lora_lr=5e-4))
    lora = recipe.checkpointed["unet_lora"]
    trains = {id(p) for p in lora.parameters() if p.requires_grad}
    assert [g["lr"] for g in recipe.optimizer.param_groups] == [1e-3, 5e-4]
    assert {id(p) for p in recipe.optimizer.param_groups[1]["params"]} == trains
    assert len(lora) == 80  # to_q, to_k, to_v, to_out of the UNet's 10 self- and 10 cross-attention layers

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    T.train(_cfg(scenes, straight, unet_lora_rank=2))
    with monkeypatch.context() as m:
        kill_after(m, 2)
        with pytest.raises(Killed):
            T.train(_cfg(scenes, killed, unet_lora_rank=2))
    T.train(_cfg(scenes, killed, unet_lora_rank=2))
    assert_same(newest_weights(straight, "unet_lora"), newest_weights(killed, "unet_lora"))

    layers, _ = formats.read_lora(straight / "final" / T.LORA_FILE)  # kohya's keys, read back by huabu's reader
    assert len(layers) == 80 and not any("_ip" in name for name in layers)
    assert all(layer.up.abs().sum() > 0 for layer in layers.values())  # up starts at zero: every layer trained

    from safetensors import safe_open

    from huabu.core.settings import Settings
    from huabu.engine.ip_adapters import IPAdapterManager
    from huabu.tiny.ship import IP_ADAPTER_NAME, ship_ip_adapter

    shipped = ship_ip_adapter(straight, tmp_path / "shipped")
    lora_file = shipped / f"{IP_ADAPTER_NAME}_lora.safetensors"
    with safe_open(str(lora_file), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys() if not k.endswith(".alpha")} == {"F16"}
    manager = IPAdapterManager(Settings.for_home(tmp_path / "home"))
    assert manager.ref_for(shipped / f"{IP_ADAPTER_NAME}.safetensors").lora == lora_file  # the engine pairs them


@contextmanager
def _fed_features(monkeypatch, seen: list):
    """Record the `ip_adapter_image_embeds` huabu's IP-Adapter plan gives the pipelines."""
    from huabu.engine.ip_adapters import IPAdapterPlan

    real = IPAdapterPlan.attached

    @contextmanager
    def spied(self, *args, **kwargs):
        with real(self, *args, **kwargs) as call:
            seen.append(call["ip_adapter_image_embeds"])
            yield call

    with monkeypatch.context() as m:
        m.setattr(IPAdapterPlan, "attached", spied)
        yield


def test_the_shipped_adapter_steers_the_engine_on_the_features_it_trained_on(trained, plus, tmp_path, capsys,
                                                                            monkeypatch):
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from huabu.cli.main import main
    from huabu.core.requests import GenerateRequest
    from huabu.core.settings import Settings
    from huabu.engine.generate import Engine
    from huabu.tiny import ip_adapter_scenes as IS
    from huabu.tiny import train_ip_adapter as T

    home = tmp_path / "home"
    shipped = home / "ip-adapter" / "huabu-tiny"
    assert main(["tiny", "ship-ip-adapter", str(trained), "--out", str(shipped)]) == 0
    assert "ip-adapter_huabu-tiny" in capsys.readouterr().out
    assert sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file()) < 10e6
    rng = np.random.default_rng(0)
    refs, paths = [], []
    for obj in (0, 16):  # an apple, an automobile
        refs.append(IS.reference_image(rng, obj, "center", "white"))
        paths.append(str(tmp_path / f"ref{obj}.png"))
        Image.fromarray(refs[-1]).save(paths[-1])
    engine = Engine(Settings.for_home(home, device="cpu", dtype="fp32", hub_offline=True))

    def made(*adapters) -> np.ndarray:
        request = GenerateRequest.create(prompt=NAMELESS, model="huabu-tiny", steps=4, seed=3,
                                         ip_adapters=[{"image": r, "model": "ip-adapter_huabu-tiny"} for r in adapters])
        return np.asarray(engine.generate(request).images[0], dtype=np.int16)

    seen = []
    with _fed_features(monkeypatch, seen):
        plain, apple, car = made(), made(paths[0]), made(paths[1])
    assert np.abs(apple - plain).max() > 10 and np.abs(car - apple).max() > 10
    assert np.array_equal(made(), plain)  # the UNet got its own processors back

    # what the engine fed the projection (negative, positive) is what training computes for the reference
    encoder = CLIPVisionModelWithProjection.from_pretrained(trained / "final" / T.IMAGE_ENCODER, dtype=torch.float32)
    processor = CLIPImageProcessor(size=encoder.config.image_size, crop_size=encoder.config.image_size)
    with torch.no_grad():
        trained_on = T.image_features(encoder, T.reference_pixels(processor, [refs[1]] * 2),
                                      torch.tensor([True, False]), plus)
    fed = seen[-1][0][:, 0]
    assert fed.shape == trained_on.shape == ((2, 65, 128) if plus else (2, 128))
    torch.testing.assert_close(fed, trained_on, rtol=1e-4, atol=1e-4)


def test_eval_reports_fractions_and_exact_ceilings(trained):
    from huabu.core.settings import Settings
    from huabu.tiny.demo_configs import IpAdapterEvalConfig
    from huabu.tiny.eval_ip_adapter import eval_cases, evaluate_ip_adapter, format_ip_adapter_report

    unseen = eval_cases(3, 1, unseen=True)
    assert all(scene.objects[0].obj >= 103 for scene, _ in unseen)
    settings = Settings.for_home(trained / "home", device="cpu", dtype="fp32", hub_offline=True)
    result = evaluate_ip_adapter(IpAdapterEvalConfig(adapter=str(trained / "final"), count=2, steps=2), settings)
    assert set(result["rows"]) == {"seen_nameless", "seen_named", "unseen_nameless"}
    for row in result["rows"].values():
        assert row["real"] == {"background": 1.0, "position": 1.0, "identity_top1": 1.0}
        assert all(0.0 <= v <= 1.0 for kind in ("with", "without") for v in row[kind].values())
        assert all(v in (0.0, 0.5, 1.0) for v in row["with"].values())  # two cases each
    assert "unseen glyphs, prompt without the object" in format_ip_adapter_report(result)


def test_identity_is_read_at_either_size_since_the_nameless_prompt_says_none():
    import numpy as np

    from huabu.tiny import measure as M
    from huabu.tiny import scenes as S
    from huabu.tiny import world as W
    from huabu.tiny import world_measure as WM
    from huabu.tiny.eval_ip_adapter import eval_cases, read

    rng = np.random.default_rng(0)
    at_scene_size = either = 0
    cases = eval_cases(12, 3333, unseen=False)
    for scene, _ in cases:
        placed = scene.objects[0]
        other = next(name for name in S.SIZE_NAMES if name != placed.size_name)
        drawn = W.render(W.single(rng, "position", placed.obj, scene.background, placed.position, other))
        _, bg = M.background_colour(drawn)
        xy = M.centroid(M.object_mask(drawn, bg))
        at_scene_size += WM.identify(drawn, bg, xy, placed.size) == placed.obj
        either += read(drawn, placed.size)[2] == placed.obj
    # the right object at the size the prompt never asked for is itself to the eval, not to a fixed-size read
    assert either == len(cases) > at_scene_size + 4
