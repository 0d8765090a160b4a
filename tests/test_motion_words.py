"""Motion-word layers (huabu.engine.motion_words) on a tiny random UNetMotionModel: fresh layers change nothing,
trained ones make the output depend on the words, hooks come off cleanly, and the file round-trips."""

from __future__ import annotations

import pickle

import pytest
import torch

from huabu.core.errors import HuabuError


@pytest.fixture(scope="module")
def unet():
    from conftest import build_tiny_pipeline
    from diffusers import UNetMotionModel

    from huabu.training.motion import build_motion_adapter

    unet2d = build_tiny_pipeline().unet
    torch.manual_seed(0)
    adapter = build_motion_adapter(unet2d, heads=2, max_frames=8)
    for module in adapter.modules():  # a motion module that does something, so the hooks see real features
        if type(module).__name__ == "AnimateDiffTransformer3D":
            torch.nn.init.normal_(module.proj_out.weight, std=0.1)
    return UNetMotionModel.from_unet2d(unet2d, adapter).eval()


def _run(unet, text: torch.Tensor) -> torch.Tensor:
    x = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))  # [clips, C, frames, h, w]
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=text.repeat_interleave(4, dim=0)).sample


def _texts() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(2, 77, 32, generator=gen), torch.randn(2, 77, 32, generator=gen)


def _learned(layers) -> None:
    """Stand-in for training: the zero-initialised last layers get weights (rates of a few tenths)."""
    gen = torch.Generator().manual_seed(3)
    for layer in layers.values():
        last = layer.mlp[-1]
        last.weight.data = 0.1 * torch.randn(last.weight.shape, generator=gen)


def test_fresh_words_change_nothing_learned_ones_follow_the_words_and_come_off(unet):
    from huabu.engine.motion_words import attach_motion_words, build_motion_words

    text_a, text_b = _texts()
    plain_a, plain_b = _run(unet, text_a), _run(unet, text_b)
    layers = build_motion_words(unet, heads=2)
    assert set(layers.keys()) == {"down_0_0", "up_1_0", "up_1_1"}  # none at the innermost level (down_1, mid, up_0)
    handles = attach_motion_words(unet, layers)
    try:
        assert torch.allclose(_run(unet, text_a), plain_a, atol=1e-5)  # identity warps: the model without them
        _learned(layers)
        words_a, words_b = _run(unet, text_a), _run(unet, text_b)
    finally:
        for handle in handles:
            handle.remove()
    # The words now move the output, and by more than the image model's own reading of them does.
    assert (words_a - plain_a).abs().mean() > 0.01
    assert ((words_a - words_b) - (plain_a - plain_b)).abs().mean() > 0.01
    assert torch.equal(_run(unet, text_a), plain_a)  # detached: the model is as it was


def test_words_round_trip_through_their_file_and_refuse_what_is_not_theirs(unet, tmp_path):
    from safetensors import safe_open

    from huabu.engine.motion_words import attach_motion_words, build_motion_words, load_motion_words, save_motion_words

    layers = build_motion_words(unet, heads=2)
    _learned(layers)
    path = save_motion_words(layers, tmp_path / "motion_words.safetensors")
    with safe_open(str(path), framework="pt") as f:  # an independent reader
        assert f.metadata() == {"huabu_kind": "motion_words", "heads": "2"}
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        assert len(list(f.keys())) == len(layers.state_dict())
    loaded = load_motion_words(path, unet)
    saved = layers.state_dict()
    assert all(torch.equal(v, saved[k].half().float()) for k, v in loaded.state_dict().items())
    text, _ = _texts()
    outputs = []
    for candidate in (layers, loaded):
        handles = attach_motion_words(unet, candidate)
        outputs.append(_run(unet, text))
        for handle in handles:
            handle.remove()
    assert torch.allclose(outputs[0], outputs[1], atol=2e-3)  # fp16 rounding of the weights only

    pickled = tmp_path / "words.safetensors"
    pickled.write_bytes(pickle.dumps({"not": "weights"}))
    with pytest.raises(HuabuError, match="is not a safetensors motion-words file") as err:
        load_motion_words(pickled, unet)
    assert "\n" not in str(err.value)
    other = torch.nn.ModuleDict({k: v for k, v in list(layers.items())[:2]})
    save_motion_words(other, tmp_path / "other.safetensors")
    with pytest.raises(HuabuError, match="does not fit this model's motion modules"):
        load_motion_words(tmp_path / "other.safetensors", unet)
    with pytest.raises(HuabuError, match="must divide the text width 32"):
        build_motion_words(unet, heads=3)


def test_the_warp_moves_and_zooms_frames_the_way_its_rates_say():
    from huabu.engine.motion_words import MotionWords

    layer = MotionWords(text_dim=32, heads=2)
    frames = torch.zeros(4, 1, 16, 16)
    frames[:, :, 6:10, 6:10] = 1.0  # the same square in each of 4 frames
    text, t = torch.randn(4, 77, 32), torch.tensor(500)
    ys = torch.arange(16.0)[:, None]

    def centroid_rows(out):
        return [float((f[0] * ys).sum() / f[0].sum()) for f in out]

    with torch.no_grad():
        # rates are bounded by max_rate * tanh(raw / max_rate); [-1, 1] spans 16 px: 0.125 is 1 px a frame, downward
        layer.mlp[-1].bias.copy_(layer.max_rate * torch.atanh(torch.tensor([0.0, 0.125, 0.0]) / layer.max_rate))
        rows = centroid_rows(layer(frames, text, t, num_frames=4))
        assert [b - a for a, b in zip(rows, rows[1:])] == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
        assert sum(rows) / 4 == pytest.approx(7.5, abs=1e-4)  # frames move about the clip's middle
        layer.mlp[-1].bias.copy_(torch.tensor([0.0, 100.0, 0.0]))  # bounded: at most max_rate (2 px) a frame
        rows = centroid_rows(layer(frames, text, t, num_frames=4))
        assert [b - a for a, b in zip(rows, rows[1:])] == pytest.approx([2.0, 2.0, 2.0], abs=1e-3)
        layer.mlp[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.2]))  # zooming in: the square grows frame by frame
        mass = [float(f.sum()) for f in layer(frames, text, t, num_frames=4)]
        assert mass == sorted(mass) and mass[-1] > 1.5 * mass[0]


def _encode(pipe, text: str) -> torch.Tensor:
    ids = pipe.tokenizer([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_word_rows_replace_only_their_words_only_while_attached_and_round_trip(unet, tmp_path):
    from conftest import build_tiny_pipeline
    from safetensors import safe_open
    from safetensors.torch import save_file

    from huabu.engine.motion_words import (
        WordRows,
        build_motion_words,
        load_motion_words,
        load_word_rows,
        save_motion_words,
    )

    pipe = build_tiny_pipeline()
    up, left = "a rocket moving up", "a rocket moving left"
    plain_up, plain_left = _encode(pipe, up), _encode(pipe, left)
    rows = WordRows.for_words({"up": "up"}, pipe.tokenizer, pipe.text_encoder)
    handle = rows.attach(pipe.text_encoder)
    try:
        assert torch.equal(_encode(pipe, up), plain_up)  # they start as the encoder's own rows
        with torch.no_grad():
            rows.rows += torch.randn(rows.rows.shape, generator=torch.Generator().manual_seed(4))  # as if trained
        trained_up, trained_left = _encode(pipe, up), _encode(pipe, left)
    finally:
        handle.remove()
    assert (trained_up - plain_up).abs().mean() > 0.01  # the prompt with the word changes...
    assert torch.equal(trained_left, plain_left)  # ...one without it does not
    assert torch.equal(_encode(pipe, up), plain_up)  # detached: the encoder is as it was

    layers = build_motion_words(unet, heads=2)
    path = save_motion_words(layers, tmp_path / "motion_words.safetensors", rows)
    with safe_open(str(path), framework="pt") as f:  # an independent reader
        assert f.metadata()["tokens"] == '["up</w>"]'
        assert f.get_tensor("word_rows.ids").tolist() == [705]
        assert f.get_tensor("word_rows.rows").dtype == torch.float16
    loaded = load_word_rows(path, pipe.tokenizer, pipe.text_encoder)
    assert loaded.tokens == ["up</w>"] and torch.equal(loaded.rows, rows.rows.detach().half().float())
    assert set(load_motion_words(path, unet).state_dict()) == set(layers.state_dict())  # the rows are not layers
    assert load_word_rows(save_motion_words(layers, tmp_path / "no_rows.safetensors"), pipe.tokenizer,
                          pipe.text_encoder) is None
    with safe_open(str(path), framework="pt") as f:
        state, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    metadata.pop("tokens")
    save_file(state, str(tmp_path / "no_tokens.safetensors"), metadata=metadata)
    with pytest.raises(HuabuError, match="has word rows without their tokens and ids"):
        load_word_rows(tmp_path / "no_tokens.safetensors", pipe.tokenizer, pipe.text_encoder)

    with pytest.raises(HuabuError, match="trained for another tokenizer"):
        WordRows(["upward</w>"], [705], rows.rows).check_fits(pipe.tokenizer, pipe.text_encoder)
    with pytest.raises(HuabuError, match="rows are 8 wide; this text encoder's are 32"):
        WordRows(["up</w>"], [705], torch.zeros(1, 8)).check_fits(pipe.tokenizer, pipe.text_encoder)
    with pytest.raises(HuabuError, match="'supercalifragilistic' is 5 tokens"):
        WordRows.for_words({"supercalifragilistic": "up"}, pipe.tokenizer, pipe.text_encoder)


def test_word_rows_can_start_from_words_the_encoder_knows():
    from conftest import build_tiny_pipeline

    from huabu.engine.motion_words import WordRows

    pipe = build_tiny_pipeline()
    words = WordRows.parse(" up=top, down = bottom,moving ,")
    assert words == {"up": "top", "down": "bottom", "moving": "moving"}
    rows = WordRows.for_words(words, pipe.tokenizer, pipe.text_encoder)
    table = pipe.text_encoder.get_input_embeddings().weight
    assert rows.tokens == ["up</w>", "down</w>", "moving</w>"]
    assert torch.equal(rows.rows[0], table[pipe.tokenizer.convert_tokens_to_ids("top</w>")])
    handle = rows.attach(pipe.text_encoder)
    try:  # attached, "up" reads as "top" did
        assert torch.allclose(_encode(pipe, "a rocket moving up"), _encode(pipe, "a rocket moving top"), atol=1e-5)
    finally:
        handle.remove()
