"""LoRA training data: captions, kohya-style buckets, the (seed, step) batch schedule, one-line errors."""

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from huabu.core.errors import HuabuError, InvalidRequest
from huabu.core.lora_request import TrainLoraRequest
from huabu.training.lora_data import assign_buckets, bucket_resolutions, fit_to_bucket, load_dataset, nearest_bucket


def _image(path: Path, size=(64, 64), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_buckets_are_multiples_of_the_step_within_the_area():
    buckets = bucket_resolutions(512, 64)
    assert (512, 512) in buckets and (384, 640) in buckets and (640, 384) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and min(w, h) >= 256 for w, h in buckets)
    assert bucket_resolutions(64, 32) == [(32, 96), (32, 128), (64, 64), (96, 32), (128, 32)]
    assert nearest_bucket((1024, 640), buckets) == (640, 384)
    assert nearest_bucket((300, 300), buckets) == (512, 512)
    cropped = fit_to_bucket(Image.new("RGB", (1000, 500)), (640, 384))
    assert cropped.size == (640, 384)


def test_captions_from_sidecars_or_the_template_and_kohya_repeats(tmp_path):
    _image(tmp_path / "a.png", (120, 40))
    (tmp_path / "a.txt").write_text("a red dragon, paper cut, festive\n")
    _image(tmp_path / "3_extra" / "b.jpg")
    data = load_dataset(tmp_path, "zqx", "a photo of {trigger}")
    captions = {e.path.name: (e.caption, e.folder, e.repeats) for e in data.examples}
    assert captions == {"a.png": ("a red dragon, paper cut, festive", tmp_path.name, 1),
                        "b.jpg": ("a photo of zqx", "3_extra", 3)}
    assert data.tag_frequency() == {tmp_path.name: {"a red dragon": 1, "paper cut": 1, "festive": 1},
                                    "3_extra": {"a photo of zqx": 1}}
    bucketed = assign_buckets(data, 64, 32)
    assert {e.path.name: e.bucket for e in bucketed.examples} == {"a.png": (96, 32), "b.jpg": (64, 64)}
    assert len(data.content_hash()) == 64


def test_every_epoch_shows_each_image_its_repeats_in_one_bucket_batches(tmp_path):
    for i in range(5):
        _image(tmp_path / f"w{i}.png", (128, 64))
        _image(tmp_path / "2_tall" / f"t{i}.png", (64, 128))
    data = assign_buckets(load_dataset(tmp_path, "x", "{trigger}"), 64, 32)
    per_epoch = data.batches_per_epoch(3)
    assert per_epoch == 2 + 4  # 5 wide images in 3s, 10 tall (2 repeats) in 3s
    epoch = [data.batch(i, 3, seed=7) for i in range(per_epoch)]
    counts = Counter(data.examples[i].path.name for batch in epoch for i in batch)
    assert counts == {**{f"w{i}.png": 1 for i in range(5)}, **{f"t{i}.png": 2 for i in range(5)}}
    assert all(len({data.examples[i].bucket for i in batch}) == 1 for batch in epoch)
    assert [data.batch(i, 3, seed=7) for i in range(per_epoch)] == epoch  # a function of (seed, step)
    assert [data.batch(i, 3, seed=8) for i in range(per_epoch)] != epoch
    assert [data.batch(per_epoch + i, 3, seed=7) for i in range(per_epoch)] != epoch  # next epoch reshuffles


def test_data_errors_are_one_line_and_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "missing", "not found"), (tmp_path / "empty", "no training images")]
    _image(tmp_path / "nocap" / "cat.png")
    cases.append((tmp_path / "nocap", "cat.png has no caption file cat.txt"))
    bad = tmp_path / "bad"
    _image(bad / "ok.png")
    (bad / "broken.png").write_bytes(b"not a png")
    cases.append((bad, "broken.png"))
    _image(tmp_path / "latin1" / "sub" / "cat.png")
    (tmp_path / "latin1" / "sub" / "cat.txt").write_bytes("un chat \xe0 poils".encode("latin-1"))
    cases.append((tmp_path / "latin1", r"caption file sub/cat\.txt is not UTF-8 text"))
    for folder, words in cases:
        with pytest.raises(HuabuError, match=words) as err:
            load_dataset(folder, "x" if folder == bad else None, "{trigger}" if folder == bad else None)
        assert "\n" not in str(err.value)


def test_request_validation_is_one_line():
    with pytest.raises(InvalidRequest, match="pass --trigger"):
        TrainLoraRequest.create(data="d", out="x", caption_template="a photo of {trigger}")
    with pytest.raises(InvalidRequest, match="rank"):
        TrainLoraRequest.create(data="d", out="x", rank=0)
    request = TrainLoraRequest.create(data="d", out="x", trigger="zqx")
    assert request.template == "a photo of {trigger}" and request.format == "kohya"
