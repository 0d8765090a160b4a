"""A1111 emphasis on SD3 and FLUX (huabu.engine.prompts.emphasis): a weighted word's rows of the pipeline's own
sequence embeddings are scaled by its weight in each text encoder's section (SD3's CLIP and T5, FLUX's T5), each
section keeps its mean, the pooled vectors stay; a weight ending inside a word is left out with a warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from dit_support import build_tiny_flux, build_tiny_pixart, build_tiny_sd3

from huabu.core.errors import InvalidRequest
from huabu.core.requests import GenerateRequest
from huabu.core.settings import Settings
from huabu.engine.prompts.emphasis import token_weights, weighted_embeddings
from huabu.engine.prompts.syntax import parse_attention

REQUEST = {"steps": 3, "width": 32, "height": 32, "seed": 4, "sampler": "Euler"}


@pytest.fixture(scope="module")
def pipes():
    pipes = {"sd3": build_tiny_sd3(with_t5=True), "flux": build_tiny_flux()}
    for pipe in pipes.values():  # built, not loaded: still in training mode (T5's dropout would act)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.eval()
    return pipes


@pytest.fixture(scope="module")
def engine(tmp_path_factory, pipes):
    from huabu.engine.generate import Engine

    home = tmp_path_factory.mktemp("dit-emphasis")
    pipes["sd3"].save_pretrained(home / "models" / "tiny-sd3")
    pipes["flux"].save_pretrained(home / "models" / "tiny-flux")
    build_tiny_pixart().save_pretrained(home / "models" / "tiny-pixart")
    return Engine(Settings.for_home(home, outputs_dir=home / "outputs", device="cpu", dtype="fp32",
                                    hub_offline=True))


def _sections(pipe, family: str):
    """(tokenizer, first row, row count, leading special rows) of each weighted section."""
    if family == "flux":
        return [(pipe.tokenizer_2, 0, 512, 0)]
    return [(pipe.tokenizer, 0, 77, 1), (pipe.tokenizer_3, 77, 256, 0)]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_each_section_scales_the_weighted_words_rows_and_keeps_its_mean(pipes, family):
    pipe, text = pipes[family], "a red apple"
    plain = weighted_embeddings(pipe, family, parse_attention(text), text)
    weighted = weighted_embeddings(pipe, family, parse_attention("a (red:1.5) apple"), text)
    assert torch.equal(weighted["pooled_prompt_embeds"], plain["pooled_prompt_embeds"])
    for tokenizer, start, rows, leading in _sections(pipe, family):
        before = plain["prompt_embeds"][0, start:start + rows].double()
        after = weighted["prompt_embeds"][0, start:start + rows].double()
        first = leading + len(tokenizer("a", add_special_tokens=False).input_ids)
        red = range(first, first + len(tokenizer("red", add_special_tokens=False).input_ids))
        scale = (after * before).sum(-1) / (before * before).sum(-1).clamp_min(1e-30)  # each row's factor
        assert torch.allclose(after, scale[:, None] * before, atol=1e-5)  # rows are scaled, nothing else
        ratio = scale  # the mean restoration scales every row alike
        others = [i for i in range(rows) if i not in red and before[i].abs().sum() > 0]
        assert torch.allclose(ratio[list(red)] / ratio[others].mean(), torch.tensor(1.5, dtype=torch.float64),
                              rtol=1e-3)
        assert torch.allclose(ratio[others], ratio[others][0], rtol=1e-3)
        assert torch.isclose(after.mean(), before.mean(), rtol=1e-4, atol=1e-7)


def test_weights_follow_the_tokens_or_nothing_is_weighted(pipes):
    pipe = pipes["sd3"]  # A1111 tokenizes each fragment alone: "(app:1.2)le" reads as "app le", weighted "app"
    assert token_weights(pipe.tokenizer_3, parse_attention("(app:1.2)le"), "app le") == [1.2] * len(
        pipe.tokenizer_3("app", add_special_tokens=False).input_ids) + [1.0] * len(
        pipe.tokenizer_3("le", add_special_tokens=False).input_ids)
    assert token_weights(pipe.tokenizer_3, parse_attention("(app:1.2)le"), "apple") is None  # tokens not the text's


def make(engine, model: str, **fields):
    result = engine.generate(GenerateRequest(**{**REQUEST, **fields}, model=model))
    return [np.asarray(image, dtype=np.int16) for image in result.images], result.infotexts[0]


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_emphasis_changes_the_picture_and_weight_one_does_not(engine, model):
    [plain], _ = make(engine, model, prompt="a red apple")
    [weighted], infotext = make(engine, model, prompt="a (red:1.8) apple")
    assert not np.array_equal(weighted, plain)  # random tiny text stacks steer little: any change is the weight's
    assert "a (red:1.8) apple" in infotext  # the infotext keeps what was asked
    assert np.array_equal(make(engine, model, prompt="a (red:1.0) apple")[0][0], plain)
    batch, _ = make(engine, model, prompt="a (red:1.8) apple", batch_size=2)
    assert np.array_equal(batch[0], weighted) and not np.array_equal(batch[1], weighted)


def test_sd3_negative_emphasis(engine):
    [plain], _ = make(engine, "tiny-sd3", prompt="a red apple", negative_prompt="blurry")
    [weighted], _ = make(engine, "tiny-sd3", prompt="a red apple", negative_prompt="(blurry:1.8)")
    assert not np.array_equal(weighted, plain)


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_prompt_editing_swaps_the_embeddings_at_its_step(engine, model):
    [red], _ = make(engine, model, prompt="a red apple")
    [green], _ = make(engine, model, prompt="a green apple")
    [edited], infotext = make(engine, model, prompt="a [red:green:1] apple")
    assert not np.array_equal(edited, red) and not np.array_equal(edited, green)
    assert "a [red:green:1] apple" in infotext
    assert np.array_equal(make(engine, model, prompt="a [red:green:1] apple")[0][0], edited)
    [alternating], _ = make(engine, model, prompt="a [red|green] apple", steps=4)  # red, red, green, red
    [late_edit], _ = make(engine, model, prompt="a [red:green:1] apple", steps=4)  # red, red, green, green
    assert not np.array_equal(alternating, late_edit)
    assert not np.array_equal(alternating, make(engine, model, prompt="a red apple", steps=4)[0][0])


def test_the_callback_swaps_the_cfg_batch_for_the_next_entry(engine):
    from huabu.engine.prompts.plain import PipelinePrompts

    model = engine.models.load("tiny-sd3")
    prompts = PipelinePrompts.build(model, "a [red:green:1] apple", "[ugly:blurry:0]", steps=3, batch_size=2)
    assert prompts.callback_tensor_inputs == ["prompt_embeds", "pooled_prompt_embeds"]
    first = prompts.initial_kwargs()
    state = {"prompt_embeds": torch.cat([first["negative_prompt_embeds"], first["prompt_embeds"]]),
             "pooled_prompt_embeds": torch.cat([first["negative_pooled_prompt_embeds"],
                                                first["pooled_prompt_embeds"]])}
    assert prompts.step_callback(None, 0, None, dict(state))["prompt_embeds"] is state["prompt_embeds"]  # no change
    swapped = prompts.step_callback(None, 1, None, dict(state))
    green = prompts.encoded["a green apple"]
    blurry = prompts.encoded["blurry"]
    assert torch.equal(swapped["prompt_embeds"][2:], green["prompt_embeds"].repeat(2, 1, 1))
    assert torch.equal(swapped["prompt_embeds"][:2], blurry["prompt_embeds"].repeat(2, 1, 1))
    assert torch.equal(swapped["pooled_prompt_embeds"][2:], green["pooled_prompt_embeds"].repeat(2, 1))


def test_img2img_keeps_the_first_pooled_vector_with_a_warning(engine, caplog):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 160, 60)).save(buffer, format="PNG")
    init = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    fields = {"mode": "img2img", "init_image": init, "denoising_strength": 0.9}
    [plain], _ = make(engine, "tiny-sd3", prompt="a red apple", **fields)
    with caplog.at_level(logging.WARNING):
        [edited], _ = make(engine, "tiny-sd3", prompt="a [red:green:1] apple", **fields)
    assert "the pooled vector stays the first prompt's" in caplog.text
    assert not np.array_equal(edited, plain)


def test_pixart_refuses_prompt_editing_in_one_line(engine):
    with pytest.raises(InvalidRequest, match="prompt editing or alternation .* runs on UNet, SD3 and FLUX models only; "
                                             "this is a PixArt model"):
        make(engine, "tiny-pixart", prompt="a [red:green:1] apple")
