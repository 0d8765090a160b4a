"""ControlNet preprocessors: exact behaviour on drawn images, real networks on tiny random weights, formats."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from huabu.core.errors import BadImage, HuabuError, InvalidRequest, ModelNotFound, UnsafeCheckpoint
from huabu.engine.control import PREPROCESSORS, PoseCanvas, preprocess
from huabu.engine.control.pose import PAF_CHANNELS, BodyPoseNetwork, decode_poses, detect_poses, load_body_pose
from huabu.engine.control.skeleton import (
    COLORS,
    LIMB_BRIGHTNESS,
    LIMBS,
    NUM_KEYPOINTS,
    STICK_WIDTH,
    draw_poses,
    json_to_keypoints,
    keypoints_to_json,
)
from huabu.engine.control.softedge import CAFFE_MEAN_RGB, HEDNetwork


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text
    return text


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def rectangle_image(value: int = 255) -> Image.Image:
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((16, 20, 47, 43), fill=(value, value, value))
    return image


def gray(image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    assert image.mode == "RGB" and array.dtype == np.uint8
    assert (array == array[:, :, :1]).all(), "control maps are gray in three equal channels"
    return array[:, :, 0]


# --- canny ---------------------------------------------------------------------------------------------------

def test_canny_marks_exactly_the_rectangle_outline():
    edges = gray(preprocess("canny", rectangle_image())) > 0
    assert set(np.unique(gray(preprocess("canny", rectangle_image())))) == {0, 255}
    inside = np.zeros((64, 64), bool)
    inside[20:44, 16:48] = True
    near_boundary = np.zeros_like(inside)  # pixels at most one step from the black/white boundary
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        near_boundary |= inside != np.roll(inside, (dy, dx), axis=(0, 1))
    assert edges.any() and not (edges & ~near_boundary).any()
    assert edges[19:22, 18:46].any(axis=0).all() and edges[42:45, 18:46].any(axis=0).all()  # top, bottom
    assert edges[22:42, 15:18].any(axis=1).all() and edges[22:42, 46:49].any(axis=1).all()  # left, right


def test_canny_thresholds_decide_weak_edges():
    faint = rectangle_image(value=30)  # Sobel response ~120, below the default high threshold of 200
    assert not gray(preprocess("canny", faint)).any()
    assert gray(preprocess("canny", faint, low=10, high=50)).any()
    with pytest.raises(InvalidRequest) as err:
        preprocess("canny", faint, low=200, high=100)
    assert "low <= high" in one_line(err)


def test_resolution_scales_the_short_side():
    image = random_image(64, 80)
    assert preprocess("canny", image).size == (64, 80)
    assert preprocess("canny", image, resolution=32).size == (32, 40)
    assert preprocess("none", image, resolution=128).size == (128, 160)
    with pytest.raises(InvalidRequest):
        preprocess("color", image, resolution=3)


# --- colour ----------------------------------------------------------------------------------------------------

def test_color_grid_holds_block_means():
    image = random_image(64, 64, seed=1)
    source = np.asarray(image).astype(np.float64)
    grid = np.asarray(preprocess("color", image)).astype(np.float64)
    for by in range(8):
        for bx in range(8):
            block = grid[by * 8:(by + 1) * 8, bx * 8:(bx + 1) * 8]
            assert (block == block[0, 0]).all()
            mean = source[by * 8:(by + 1) * 8, bx * 8:(bx + 1) * 8].mean(axis=(0, 1))
            assert np.abs(block[0, 0] - mean).max() <= 1.0
    coarse = np.asarray(preprocess("color", image, cell=32))
    assert len(np.unique(coarse.reshape(-1, 3), axis=0)) == 4


def test_color_blur_keeps_flat_colour_and_smooths_noise():
    flat = Image.new("RGB", (48, 48), (10, 120, 230))
    assert (np.asarray(preprocess("color", flat, mode="blur")) == (10, 120, 230)).all()
    noisy = random_image(48, 48, seed=2)
    assert np.asarray(preprocess("color", noisy, mode="blur")).std() < np.asarray(noisy).std() / 3
    with pytest.raises(InvalidRequest):
        preprocess("color", noisy, mode="swirl")


# --- soft edges ------------------------------------------------------------------------------------------------

def test_gradient_softedge_peaks_on_edges_and_is_zero_on_flat_areas():
    image = Image.new("RGB", (64, 64), (90, 90, 90))
    ImageDraw.Draw(image).rectangle((20, 20, 43, 43), fill=(220, 220, 220))
    edges = gray(preprocess("softedge", image))  # no weights: the gradient fallback
    assert np.array_equal(edges, gray(preprocess("softedge_gradient", image)))
    assert edges[32, 32] == 0 and edges[2, 2] == 0 and edges[2, 60] == 0
    y, x = np.unravel_index(edges.argmax(), edges.shape)
    assert edges.max() == 255 and min(abs(y - 19.5), abs(y - 43.5), abs(x - 19.5), abs(x - 43.5)) <= 1
    assert (edges[32, 17:23] > 128).any() and (edges[18:22, 32] > 128).any()
    safe = gray(preprocess("softedge", image, safe=True))
    assert set(np.unique(safe)) <= {0, 128, 255} and safe[32, 32] == 0


TINY_HED = ((4, 4, 8, 8, 8), (2, 2, 3, 3, 3))
_STAGE_NAMES = ("One", "Two", "Thr", "Fou", "Fiv")


def tiny_hed(seed: int = 0) -> HEDNetwork:
    torch.manual_seed(seed)
    network = HEDNetwork(*TINY_HED).eval()
    network.input_mean.copy_(torch.tensor([120.0, 110.0, 100.0]).reshape(1, 3, 1, 1))
    return network


def expected_edges(network: HEDNetwork, image: Image.Image) -> np.ndarray:
    """The network's own output on an image whose sides are multiples of 16 (no padding involved)."""
    rgb = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        return np.rint(network(rgb)[0, 0].numpy() * 255).astype(np.uint8)


def test_hed_loads_safetensors_weights_and_matches_the_network(tmp_path):
    network = tiny_hed()
    path = tmp_path / "hed.safetensors"
    save_file(network.state_dict(), path)
    image = random_image(48, 32, seed=3)
    out = preprocess("softedge", image, weights=path)
    assert out.size == (48, 32)
    assert np.array_equal(gray(out), expected_edges(network, image))
    assert np.array_equal(gray(preprocess("softedge_hed", image, weights=network)), gray(out))
    odd = preprocess("softedge_hed", random_image(37, 29), weights=path)  # padded internally, cropped back
    assert odd.size == (37, 29) and gray(odd).dtype == np.uint8


def apache2_state(network: HEDNetwork) -> dict[str, torch.Tensor]:
    """The network's weights under ControlNetHED_Apache2's key names (that model has no fuse conv)."""
    state = {"norm": network.input_mean.clone()}
    for key, value in network.state_dict().items():
        parts = key.split(".")
        if parts[0] == "stages":
            name = "projection" if parts[2] == "side" else ".".join(parts[2:4])
            state[f"block{int(parts[1]) + 1}.{name}.{parts[-1]}"] = value.clone()
    return state


def test_hed_reads_controlnet_hed_apache2_layout_and_refuses_pickle_without_the_flag(tmp_path):
    network = tiny_hed(seed=1)
    with torch.no_grad():  # that model averages the side outputs: the same as a fuse of 1/5 each
        network.fuse.weight.fill_(0.2)
        network.fuse.bias.zero_()
    path = tmp_path / "ControlNetHED.pth"
    torch.save(apache2_state(network), path)
    image = random_image(32, 32, seed=4)
    with pytest.raises(UnsafeCheckpoint) as err:
        preprocess("softedge", image, weights=path)
    assert "pickle" in one_line(err)
    out = preprocess("softedge", image, weights=path, allow_unsafe_pickle=True)
    assert np.array_equal(gray(out), expected_edges(network, image))


def test_hed_reads_network_bsds500_layout_with_bgr_first_layer(tmp_path):
    network = tiny_hed(seed=2)
    network.input_mean.copy_(torch.tensor(CAFFE_MEAN_RGB).reshape(1, 3, 1, 1))
    state = {}
    for key, value in network.state_dict().items():
        parts = key.split(".")
        if parts[0] == "fuse":
            state[f"moduleCombine.0.{parts[-1]}"] = value
        elif parts[0] == "stages" and parts[2] == "side":
            state[f"moduleScore{_STAGE_NAMES[int(parts[1])]}.{parts[-1]}"] = value
        elif parts[0] == "stages":
            s, j = int(parts[1]), int(parts[3])
            state[f"moduleVgg{_STAGE_NAMES[s]}.{2 * j if s == 0 else 2 * j + 1}.{parts[-1]}"] = value
    state["moduleVggOne.0.weight"] = state["moduleVggOne.0.weight"].flip(1).contiguous()  # trained on BGR
    path = tmp_path / "network-bsds500.safetensors"
    save_file(state, path)
    image = random_image(32, 16, seed=5)
    assert np.array_equal(gray(preprocess("softedge_hed", image, weights=path)), expected_edges(network, image))


def test_hed_rejects_files_that_are_not_hed(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"something.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ModelNotFound):
        preprocess("softedge_hed", random_image(16, 16), weights=path)
    with pytest.raises(ModelNotFound):
        preprocess("softedge_hed", random_image(16, 16), weights=tmp_path / "missing.safetensors")


# --- pose ------------------------------------------------------------------------------------------------------

_CMU_BACKBONE_NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
                       "conv4_1", "conv4_2", "conv4_3_CPM", "conv4_4_CPM")


def tiny_body_model(seed: int = 0) -> BodyPoseNetwork:
    torch.manual_seed(seed)
    backbone = ((3, 4, 3), (4, 4, 3), (4, 8, 3), (8, 8, 3)) + ((8, 8, 3),) * 8

    def branch(stage: int, outputs: int):
        if stage == 0:
            return (8, 8, 3), (8, 8, 1), (8, outputs, 1)
        return (8 + 38 + 19, 8, 7), (8, 8, 1), (8, outputs, 1)

    return BodyPoseNetwork(backbone, tuple((branch(t, 38), branch(t, 19)) for t in range(6))).eval()


def cmu_state(network: BodyPoseNetwork) -> dict[str, torch.Tensor]:
    """The network's weights under body_pose_model.pth's CMU layer names."""
    state = {}
    for key, value in network.state_dict().items():
        parts = key.split(".")
        if parts[0] == "backbone":
            name = _CMU_BACKBONE_NAMES[int(parts[1])]
        else:
            t, branch, j = int(parts[1]), "L1" if parts[2] == "pafs" else "L2", int(parts[3])
            name = f"conv5_{j + 1}_CPM_{branch}" if t == 0 else f"Mconv{j + 1}_stage{t + 1}_{branch}"
        state[f"{name}.{parts[-1]}"] = value.clone()
    return state


def test_body_pose_model_loads_cmu_layout_and_makes_a_pose_image(tmp_path):
    network = tiny_body_model()
    path = tmp_path / "body_pose_model.safetensors"
    save_file(cmu_state(network), path)
    loaded = load_body_pose(path)
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    image = random_image(56, 48, seed=6)
    poses = detect_poses(image, path)
    assert isinstance(poses, PoseCanvas) and (poses.width, poses.height) == (56, 48)
    assert all(len(person) == NUM_KEYPOINTS for person in poses.people)
    out = preprocess("pose", image, weights=path)
    assert out.size == (56, 48) and out.mode == "RGB" and np.asarray(out).dtype == np.uint8
    assert np.array_equal(np.asarray(out), np.asarray(draw_poses(poses)))


def test_body_pose_pickle_needs_the_flag(tmp_path):
    path = tmp_path / "body_pose_model.pth"
    torch.save(cmu_state(tiny_body_model(seed=1)), path)
    with pytest.raises(UnsafeCheckpoint):
        load_body_pose(path)
    assert isinstance(load_body_pose(path, allow_unsafe_pickle=True), BodyPoseNetwork)


# A standing figure, COCO-18 order, relative to the top of the head.
FIGURE = ((0, 0), (0, 10), (-8, 10), (-12, 22), (-14, 34), (8, 10), (12, 22), (14, 34), (-5, 36), (-6, 50),
          (-6, 64), (5, 36), (6, 50), (6, 64), (-3, -3), (3, -3), (-6, -1), (6, -1))


def synthetic_maps(people: list[list[tuple[int, int]]], height: int, width: int):
    """Heatmaps with a Gaussian peak per keypoint and PAFs holding the unit limb direction within 2 px of
    each limb, as a trained network would output them."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    heatmaps = np.zeros((height, width, 19), np.float32)
    pafs = np.zeros((height, width, 38), np.float32)
    for person in people:
        for part, (x, y) in enumerate(person):
            heatmaps[:, :, part] = np.maximum(heatmaps[:, :, part], np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 12.5))
        for (a, b), (cx, cy) in zip(LIMBS, PAF_CHANNELS):
            (xa, ya), (xb, yb) = person[a], person[b]
            length = np.hypot(xb - xa, yb - ya)
            ux, uy = (xb - xa) / length, (yb - ya) / length
            along = (xs - xa) * ux + (ys - ya) * uy
            across = np.abs((xs - xa) * uy - (ys - ya) * ux)
            band = (along >= -1) & (along <= length + 1) & (across <= 2)
            pafs[band, cx], pafs[band, cy] = ux, uy
    return heatmaps, pafs


def test_pose_decoder_recovers_two_people_from_heatmaps_and_pafs():
    people = [[(x + 40, y + 30) for x, y in FIGURE], [(x + 115, y + 30) for x, y in FIGURE]]
    heatmaps, pafs = synthetic_maps(people, 110, 160)
    found = sorted(decode_poses(heatmaps, pafs), key=lambda person: person[1][0])
    assert len(found) == 2
    for person, truth in zip(found, people):
        assert all(point is not None for point in person)
        assert [(round(p[0]), round(p[1])) for p in person] == truth
        assert all(abs(p[2] - 1.0) < 1e-3 for p in person)


def test_pose_decoder_keeps_people_of_four_parts_or_more():
    heatmaps, pafs = synthetic_maps([[(x + 40, y + 30) for x, y in FIGURE]], 110, 100)
    heatmaps[:, :, 1:14] = 0  # a head alone: nose, eyes, ears
    (head,) = decode_poses(heatmaps, pafs)
    assert [i for i, point in enumerate(head) if point is not None] == [0, 14, 15, 16, 17]
    heatmaps[:, :, 16:18] = 0  # nose and eyes: three parts are too few to be a person
    assert decode_poses(heatmaps, pafs) == []


def test_skeleton_renderer_uses_openpose_colours_and_positions():
    person = [None] * NUM_KEYPOINTS
    person[1], person[2], person[3] = (40.0, 40.0, 1.0), (80.0, 40.0, 1.0), (80.0, 90.0, 1.0)
    canvas = np.asarray(draw_poses(PoseCanvas([person], 128, 128)))
    dim = lambda color: tuple(int(c * LIMB_BRIGHTNESS) for c in color)  # noqa: E731
    assert LIMBS[0] == (1, 2) and LIMBS[2] == (2, 3)
    assert tuple(canvas[40, 60]) == dim(COLORS[0])  # neck -> right shoulder
    assert tuple(canvas[65, 80]) == dim(COLORS[2])  # right shoulder -> right elbow
    assert tuple(canvas[40, 40]) == COLORS[1] and tuple(canvas[40, 80]) == COLORS[2]  # joints at full colour
    assert tuple(canvas[90, 80]) == COLORS[3]
    assert tuple(canvas[40 + STICK_WIDTH + 2, 60]) == (0, 0, 0)
    assert tuple(canvas[10, 10]) == (0, 0, 0)
    lit = {tuple(c) for c in canvas.reshape(-1, 3)} - {(0, 0, 0)}
    assert {dim(COLORS[0]), dim(COLORS[2]), COLORS[1], COLORS[2], COLORS[3]} <= lit


def test_keypoints_json_round_trip_and_formats(tmp_path):
    alice = [(float(10 + i), float(20 + 2 * i), 0.5 + i / 100) for i in range(NUM_KEYPOINTS)]
    alice[4] = None
    bob = [None] * NUM_KEYPOINTS
    bob[0], bob[1] = (5.0, 6.0, 1.0), (7.0, 8.0, 0.9)
    poses = PoseCanvas([alice, bob], 200, 100)
    text = keypoints_to_json(poses)
    document = json.loads(text)
    assert document["canvas_width"] == 200 and len(document["people"][0]["pose_keypoints_2d"]) == 54
    assert document["people"][0]["pose_keypoints_2d"][12:15] == [0.0, 0.0, 0.0]
    assert json_to_keypoints(text) == poses
    normalised = {"people": [{"pose_keypoints_2d": [0.5, 0.25, 1.0] + [0, 0, 0] * 17}], "canvas_width": 200,
                  "canvas_height": 100}
    assert json_to_keypoints(normalised).people[0][0] == (100.0, 25.0, 1.0)
    body25 = [0.0] * 75
    body25[8 * 3:8 * 3 + 3] = [1.0, 1.0, 1.0]  # mid-hip: not in COCO-18
    body25[9 * 3:9 * 3 + 3] = [30.0, 40.0, 0.8]  # right hip -> COCO index 8
    person = json_to_keypoints({"people": [{"pose_keypoints_2d": body25}]}).people[0]
    assert person[8] == (30.0, 40.0, 0.8) and sum(p is not None for p in person) == 1
    for bad in ("{not json", '{"people": 3}', '{"people": [{"pose_keypoints_2d": [1, 2]}]}'):
        with pytest.raises(InvalidRequest) as err:
            json_to_keypoints(bad)
        one_line(err)
    path = tmp_path / "pose.json"
    path.write_text(text)
    drawn = preprocess("pose_json", None, keypoints=path)
    assert drawn.size == (200, 100)
    bigger = np.asarray(preprocess("pose", random_image(400, 200), keypoints=path))
    assert tuple(bigger[16, 14]) == COLORS[1]  # bob's neck (7, 8) scaled 2x


# --- depth -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dpt(tmp_path_factory):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=37, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 16, 32, 32],
                       fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])
    folder = tmp_path_factory.mktemp("dpt")
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_depth_model_from_a_local_folder_gives_a_normalised_map(tiny_dpt):
    from transformers import AutoModelForDepthEstimation

    image = random_image(40, 24, seed=7)
    out = gray(preprocess("depth", image, weights=tiny_dpt))
    assert out.shape == (24, 40) and out.min() == 0 and out.max() == 255
    model = AutoModelForDepthEstimation.from_pretrained(tiny_dpt).eval()
    pixels = np.asarray(image.resize((32, 32), Image.BICUBIC)).astype(np.float32) / 255
    pixels = (torch.from_numpy(pixels).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        predicted = model(pixel_values=pixels).predicted_depth
    expected = torch.nn.functional.interpolate(predicted[:, None], size=(24, 40), mode="bicubic")[0, 0].numpy()
    # near = bright: the model's largest (relative inverse depth) values are the brightest pixels
    assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.99


def test_depth_model_folders_with_pickle_weights_load_only_when_allowed(tiny_dpt, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from huabu.core.errors import UnsafeCheckpoint

    folder = tmp_path / "pickled-dpt"
    shutil.copytree(tiny_dpt, folder)
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()
    image = random_image(16, 16)
    with pytest.raises(UnsafeCheckpoint) as err:
        preprocess("depth", image, weights=folder)
    assert "--allow-unsafe-pickle" in one_line(err) and "pickled-dpt" in one_line(err)
    allowed = gray(preprocess("depth", image, weights=folder, allow_unsafe_pickle=True))
    assert np.array_equal(allowed, gray(preprocess("depth", image, weights=tiny_dpt)))


def test_depth_hub_id_offline_and_missing_folder_are_one_line_errors(tmp_path):
    image = random_image(16, 16)
    with pytest.raises(ModelNotFound) as err:
        preprocess("depth", image, weights="nobody-here/no-such-depth-model")
    assert "offline" in one_line(err) and "folder" in one_line(err)
    with pytest.raises(ModelNotFound):
        preprocess("depth", image, weights=tmp_path / "not-there")
    with pytest.raises(InvalidRequest) as err:
        preprocess("depth", image)
    assert "depth_map" in one_line(err)


def test_user_depth_map_is_checked_and_resized(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (32, 1))
    path = tmp_path / "depth.png"
    Image.fromarray(ramp, mode="L").save(path)
    out = gray(preprocess("depth", random_image(64, 48), depth_map=path))
    assert out.shape == (48, 64) and (np.diff(out[10].astype(int)) >= 0).all() and out[10, 0] < 5 < 250 < out[10, -1]
    inverted = gray(preprocess("depth", None, depth_map=path, invert=True))
    assert np.array_equal(inverted, 255 - ramp)
    deep = Image.fromarray((ramp.astype(np.uint16) * 200).astype(np.uint16))  # a 16-bit depth map
    assert gray(preprocess("depth", None, depth_map=deep)).max() == 255
    false_colour = Image.fromarray(np.stack([ramp, 255 - ramp, ramp], axis=2))
    with pytest.raises(BadImage) as err:
        preprocess("depth", None, depth_map=false_colour)
    assert "grayscale" in one_line(err)


# --- registry and errors ---------------------------------------------------------------------------------------

def test_registry_names_and_bad_input_errors():
    assert {"canny", "softedge", "softedge_hed", "softedge_gradient", "depth", "pose", "pose_json", "color",
            "none"} <= set(PREPROCESSORS)
    assert all("resolution" in p.options for p in PREPROCESSORS.values())
    with pytest.raises(InvalidRequest) as err:
        preprocess("sketch", random_image(8, 8))
    assert "canny" in one_line(err) and "softedge" in one_line(err)
    with pytest.raises(BadImage) as err:
        preprocess("canny", "photo.png")
    one_line(err)
    with pytest.raises(InvalidRequest) as err:
        preprocess("canny", random_image(8, 8), weights="x")
    assert "low" in one_line(err)
    with pytest.raises(HuabuError):
        preprocess("pose", random_image(8, 8))
    assert preprocess("openpose", None, keypoints={"people": [], "canvas_width": 8, "canvas_height": 8}).size == (8, 8)


# --- CLI -------------------------------------------------------------------------------------------------------

def cli(*argv: str) -> int:
    from huabu.cli.control import register

    parser = argparse.ArgumentParser(prog="huabu")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["preprocess", *argv])
    return args.handler(args)


def test_cli_writes_the_control_image(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HUABU_HOME", str(tmp_path / "home"))
    source = tmp_path / "ref.png"
    rectangle_image().save(source)
    out = tmp_path / "out" / "edges.png"
    assert cli("canny", str(source), "-o", str(out), "--low", "50", "--high", "150") == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as written:
        assert np.array_equal(np.asarray(written), np.asarray(preprocess("canny", rectangle_image(), low=50, high=150)))
    assert [p.name for p in out.parent.iterdir()] == ["edges.png"]  # no temp file left behind
    with pytest.raises(InvalidRequest) as err:
        cli("depth", str(source), "-o", str(out), "--low", "5")
    assert "depth does not take" in one_line(err)
    with pytest.raises(BadImage):
        cli("canny", str(tmp_path / "missing.png"), "-o", str(out))


def test_cli_passes_zero_thresholds(tmp_path, monkeypatch):
    monkeypatch.setenv("HUABU_HOME", str(tmp_path / "home"))
    source = tmp_path / "ref.png"
    random_image(32, 32, seed=4).save(source)
    out = tmp_path / "edges.png"
    # Dropped, --low 0 would become the default 100, above --high 50: an error instead of this map.
    cli("canny", str(source), "-o", str(out), "--low", "0", "--high", "50")
    with Image.open(out) as written:
        assert np.array_equal(np.asarray(written),
                              np.asarray(preprocess("canny", random_image(32, 32, seed=4), low=0, high=50)))


def test_cli_uses_annotator_weights_from_home_and_round_trips_pose_json(tmp_path, monkeypatch):
    home = tmp_path / "home"
    annotators = home / "controlnet" / "annotators"
    annotators.mkdir(parents=True)
    monkeypatch.setenv("HUABU_HOME", str(home))
    source = tmp_path / "ref.png"
    image = random_image(32, 32, seed=8)
    image.save(source)
    network = tiny_hed(seed=3)
    with torch.no_grad():
        network.fuse.weight.fill_(0.2)
        network.fuse.bias.zero_()
    save_file(apache2_state(network), annotators / "ControlNetHED.safetensors")
    out = tmp_path / "soft.png"
    cli("softedge", str(source), "-o", str(out), "--device", "cpu")
    with Image.open(out) as written:
        assert np.array_equal(gray(written.convert("RGB")), expected_edges(network, image))

    save_file(cmu_state(tiny_body_model()), annotators / "body_pose_model.safetensors")
    keypoints = tmp_path / "pose.json"
    cli("pose", str(source), "-o", str(tmp_path / "pose.png"), "--save-keypoints", str(keypoints), "--device", "cpu")
    document = json.loads(keypoints.read_text())
    assert document["canvas_width"] == 32 and isinstance(document["people"], list)
    person = [None] * NUM_KEYPOINTS
    person[0], person[1] = (8.0, 8.0, 1.0), (8.0, 24.0, 1.0)
    keypoints.write_text(keypoints_to_json(PoseCanvas([person], 32, 32)))
    cli("pose", "-o", str(tmp_path / "edited.png"), "--keypoints", str(keypoints))
    with Image.open(tmp_path / "edited.png") as edited:
        assert edited.size == (32, 32) and tuple(np.asarray(edited)[8, 8]) == COLORS[0]
