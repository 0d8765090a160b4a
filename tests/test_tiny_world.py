"""The GenEval-style scene world: deterministic, held-out combinations never trained on, bilingual captions that say
the same attributes, and real renders read back per category."""

import hashlib
import re

import numpy as np
import pytest

from huabu.tiny import measure as M
from huabu.tiny import scenes as S
from huabu.tiny import world as W
from huabu.tiny import world_measure as WM

CJK = re.compile(r"[\u4e00-\u9fff]")


def test_objects_extend_the_shipped_ones_in_order():
    assert len(W.OBJECTS) >= 100
    assert [(o.char, o.name) for o in W.OBJECTS[: len(S.OBJECTS)]] == list(S.OBJECTS)
    for field in ("char", "name", "zh"):
        assert len({getattr(o, field) for o in W.OBJECTS}) == len(W.OBJECTS), field
    assert all(CJK.search(o.zh) and CJK.fullmatch(o.measure) for o in W.OBJECTS)
    plurals = {o.name: o.plural for o in W.OBJECTS}
    assert (plurals["star"], plurals["strawberry"], plurals["fish"], plurals["bus"], plurals["die"]) == (
        "stars", "strawberries", "fish", "buses", "dice")


def test_the_shipped_stream_is_unchanged():
    scenes = [S.training_scene(0, i) for i in range(500)] + S.eval_single_scenes(200) + S.eval_pair_scenes(100)
    text = "\n".join(s.caption + repr(s.objects) for s in scenes)
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "a250c2ee3cf67b60326264d610880a123f089816939646f9343c4a5416e874fa")


def test_scenes_are_a_function_of_seed_and_index():
    a, b, c = W.training_scene(7, 11), W.training_scene(7, 11), W.training_scene(8, 11)
    assert a == b and a.attrs == b.attrs
    assert np.array_equal(W.render(a), W.render(b))
    assert (a.caption, a.objects) != (c.caption, c.objects)
    assert [s.attrs for s in W.eval_scenes("counting", 5)] == [s.attrs for s in W.eval_scenes("counting", 5)]


def test_held_out_combinations_never_appear_in_training():
    scenes = [W.training_scene(0, i) for i in range(3000)]
    assert not any(W.is_held_out(s) for s in scenes)
    assert {s.attrs["category"] for s in scenes} == set(W.CATEGORIES)
    for category in W.CATEGORIES:
        for scene in W.eval_scenes(category, 20):
            a = scene.attrs
            objs, colours = a["objects"], a["colours"]
            if category in ("single_object", "position"):
                assert W.is_held_out_triple(objs[0], a["background"], a["positions"][0])
            elif category == "two_objects":
                assert W.is_held_out_pair(*objs)
            elif category == "counting":
                assert W.is_held_out_count(objs[0], len(objs))
            else:
                assert all(W.is_held_out_attribute(o, c) for o, c in zip(objs, colours))
                assert a["background"] not in colours


def test_held_out_triples_and_pairs_match_the_shipped_world_for_its_objects():
    n = len(S.OBJECTS)
    assert {t for t in W.held_out_combinations("position") if t[0] < n} == set(S.held_out_triples())
    assert {p for p in W.held_out_combinations("two_objects") if p[1] < n} == set(S.held_out_pairs())


@pytest.mark.parametrize("category", W.CATEGORIES)
def test_captions_say_the_same_in_english_and_chinese(category):
    for scene in W.eval_scenes(category, 6):
        a, en, zh = scene.attrs, scene.caption, scene.attrs["caption_zh"]
        assert CJK.search(zh) and not CJK.search(en)
        assert en.endswith(f"{scene.background} background") and zh.count(W.ZH_COLOURS[scene.background] + "背景") == 1
        for obj, colour in zip(a["objects"], a["colours"]):
            assert W.OBJECTS[obj].zh in zh
            if colour:
                assert f"{colour} {W.OBJECT_NAMES[obj]}" in en and f"{W.ZH_COLOURS[colour]}的" in zh
        if category == "counting":
            n, obj = len(a["objects"]), W.OBJECTS[a["objects"][0]]
            assert en.startswith(f"{W.EN_NUMBERS[n]} {obj.plural} ")
            assert f"有{W.ZH_NUMBERS[n]}{obj.measure}{obj.zh}" in zh
        else:
            assert all(W.OBJECT_NAMES[o] in en for o in a["objects"])
        if category == "position":
            assert S.POSITION_PHRASES[a["positions"][0]] in en and W.ZH_POSITIONS[a["positions"][0]] in zh


def test_examples_read_naturally():
    red_apple = W.single(np.random.default_rng(0), "single_object", 0, "blue", "center", "large",
                         say_position=False, say_size=False)
    assert red_apple.caption == "a red apple on a blue background"
    assert red_apple.attrs["caption_zh"] == "一个红苹果在蓝色背景上"
    stars = W.counting(np.random.default_rng(0), W.OBJECT_NAMES.index("star"), 3, "blue")
    assert (stars.caption, stars.attrs["caption_zh"]) == ("three stars on a blue background", "蓝色背景上有三颗星星")
    car = W.single(np.random.default_rng(0), "colours", W.OBJECT_NAMES.index("automobile"), "white", "left", "large",
                   "blue", say_position=False, say_size=False)
    assert car.caption == "a blue automobile on a white background"
    assert car.attrs["caption_zh"] == "一辆蓝色的汽车在白色背景上"


@pytest.mark.parametrize("category", W.CATEGORIES)
def test_real_renders_are_read_back(category):
    scenes = W.eval_scenes(category, 20)
    scores = WM.score([W.render(s) for s in scenes], scenes)
    assert scores["background"] == 1.0
    assert scores[category] >= 0.95


def test_counts_and_colours_are_read_back_exactly():
    for scene in W.eval_scenes("counting", 40):
        assert len(M.blobs(W.render(scene))) == len(scene.objects)
        assert scene.background != W.main_colour(scene.objects[0].obj)
    for scene in W.eval_scenes("colours", 16):
        image = W.render(scene)
        _, bg = M.background_colour(image)
        assert M.dominant_colour(image, M.object_mask(image, bg), scene.background) == scene.attrs["colours"][0]


def test_every_object_is_identified_on_a_contrasting_background():
    hits = 0
    for obj in range(len(W.OBJECTS)):
        x, y = S.anchor_xy("center", S.PAIR_SIZE)
        image = S.compose("white" if obj % 2 else "black", [(W.glyph(obj, S.PAIR_SIZE), x, y)])
        _, bg = M.background_colour(image)
        hits += WM.identify(image, bg, M.centroid(M.object_mask(image, bg)), S.PAIR_SIZE) == obj
    assert hits >= len(W.OBJECTS) - 2


def test_wrong_images_fail_every_category():
    scenes = [s for c in W.CATEGORIES for s in W.eval_scenes(c, 4)]
    flat = [np.full((64, 64, 3), S.COLOURS["black"], np.uint8) for _ in scenes]
    scores = WM.score(flat, scenes)
    assert all(scores[c] == 0.0 for c in W.CATEGORIES)
    swapped = [W.render(s) for s in scenes[4:] + scenes[:4]]  # each image shows another category's scene
    assert all(scores < 0.5 for c, scores in WM.score(swapped, scenes).items() if c != "background")


def test_data_command_writes_both_captions(tmp_path):
    from huabu.cli.main import main
    from huabu.tiny.data import load_dataset

    assert main(["tiny", "data", "--world", "geneval", "--count", "30", "--seed", "3", "--out", str(tmp_path)]) == 0
    data = load_dataset(tmp_path)
    scenes = [W.training_scene(3, i) for i in range(30)]
    assert data.meta["world"] == "geneval" and data.meta["objects"] == list(W.OBJECT_NAMES)
    assert data.captions_in("en") == data.captions == [s.caption for s in scenes]
    assert data.captions_in("zh") == [s.attrs["caption_zh"] for s in scenes]
    mixed = data.captions_in("mix", seed=1)
    assert all(m in (s.caption, s.attrs["caption_zh"]) for m, s in zip(mixed, scenes))
    assert 5 < sum(CJK.search(m) is not None for m in mixed) < 25
    assert np.array_equal(np.asarray(data.images[7]), W.render(scenes[7]))
    assert data.attrs[7]["category"] == scenes[7].attrs["category"]


def test_shipped_dataset_has_no_chinese_captions(tmp_path):
    from huabu.core.errors import HuabuError
    from huabu.tiny.data import load_dataset, write_dataset

    data = load_dataset(write_dataset(tmp_path / "d", 5, progress=False))
    assert "world" not in data.meta and data.captions_in("en") == data.captions
    with pytest.raises(HuabuError, match="--world geneval"):
        data.captions_in("zh")
