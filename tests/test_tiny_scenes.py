"""The scene generator: deterministic, held-out combinations never trained on, captions that say what is drawn."""

import os

import numpy as np
import pytest

from huabu.tiny import measure as M
from huabu.tiny import scenes as S
from huabu.tiny.data import load_dataset, write_dataset


def test_vocabulary_sizes():
    assert len(S.OBJECTS) >= 50
    assert len(set(S.OBJECT_NAMES)) == len(S.OBJECT_NAMES)
    assert {"left", "right", "top", "bottom", "center", "top left", "bottom right"} <= set(S.POSITIONS)


def test_scenes_are_a_function_of_seed_and_index():
    a, b, c = S.training_scene(7, 11), S.training_scene(7, 11), S.training_scene(8, 11)
    assert a == b and a.caption == b.caption
    assert np.array_equal(S.render(a.background, a.objects), S.render(b.background, b.objects))
    assert (a.caption, a.objects) != (c.caption, c.objects)


def test_held_out_combinations_never_appear_in_training():
    for i in range(3000):
        scene = S.training_scene(0, i)
        objs, positions = scene.attrs["objects"], scene.attrs["positions"]
        for obj, pos in zip(objs, positions):
            assert not S.is_held_out_triple(obj, scene.background, pos)
        if len(objs) == 2:
            assert not S.is_held_out_pair(*objs)
    assert all(S.is_held_out_triple(s.attrs["objects"][0], s.background, s.attrs["positions"][0])
               for s in S.eval_single_scenes(50))
    assert all(S.is_held_out_pair(*s.attrs["objects"]) for s in S.eval_pair_scenes(20))


def test_caption_names_what_is_drawn():
    scene = S.eval_single_scenes(1)[0]
    obj, pos = scene.attrs["objects"][0], scene.attrs["positions"][0]
    assert S.OBJECT_NAMES[obj] in scene.caption
    assert S.POSITION_PHRASES[pos] in scene.caption
    assert scene.caption.endswith(f"{scene.background} background")
    pair = S.eval_pair_scenes(1)[0]
    a, b = pair.attrs["objects"]
    assert pair.caption.index(S.OBJECT_NAMES[a]) < pair.caption.index(S.OBJECT_NAMES[b])


def test_measurement_reads_real_scenes_back():
    singles = S.eval_single_scenes(60)
    scores = M.score_singles([S.render(s.background, s.objects) for s in singles], singles)
    assert scores["background_accuracy"] == 1.0
    assert scores["position_accuracy"] == 1.0
    assert scores["identity_top1"] >= 0.95
    pairs = S.eval_pair_scenes(30)
    assert M.score_pairs([S.render(s.background, s.objects) for s in pairs], pairs) >= 0.95


def test_measurement_rejects_wrong_scenes():
    singles = S.eval_single_scenes(40)
    flat = [np.full((64, 64, 3), S.COLOURS["black"], np.uint8) for _ in singles]
    scores = M.score_singles(flat, singles)
    assert scores["identity_top1"] == 0.0 and scores["position_accuracy"] == 0.0


def test_dataset_round_trip_and_determinism(tmp_path):
    first = write_dataset(tmp_path / "a", 40, seed=3, progress=False)
    second = write_dataset(tmp_path / "b", 40, seed=3, progress=False)
    a, b = load_dataset(first), load_dataset(second)
    assert len(a) == 40 and a.captions == b.captions
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    assert a.captions[5] == S.training_scene(3, 5).caption
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # no partial folder left beside them


def test_missing_dataset_is_one_line_error(tmp_path):
    from huabu.core.errors import HuabuError

    with pytest.raises(HuabuError, match="huabu tiny data"):
        load_dataset(tmp_path / "nothing")
