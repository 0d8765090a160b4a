"""Weighted, chunked prompt encoding (A1111 "Original" emphasis) and per-step scheduled conditioning.

Tiny random CLIP text models with the real CLIP tokenizer shipped in huabu-tiny; every expectation is
computed independently by calling the text model on hand-built token ids.
"""

from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from huabu.core.errors import InvalidRequest
from huabu.engine.prompts.encode import Conditioning, PromptEncoder, ScheduledConditioning, chunk_tokens

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "huabu" / "tiny" / "huabu-tiny" / "tokenizer"
BOS, EOS = 49406, 49407


def tiny_config(hidden_size: int = 32, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        **extra,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(0)
    return CLIPTextModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def encoder(tokenizer, text_model):
    return PromptEncoder([tokenizer], [text_model])


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chunk_ids(tokens: list[int], pad: int = EOS) -> torch.Tensor:
    return torch.tensor([[BOS, *tokens, EOS] + [pad] * (75 - len(tokens))])


def hidden(model, ids: torch.Tensor, layer: int | None = None) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return out.last_hidden_state if layer is None else out.hidden_states[layer]


def test_plain_prompt_is_the_text_models_last_hidden_state(encoder, tokenizer, text_model):
    cond = encoder.encode("a red cat")
    assert cond.pooled is None
    assert cond.embeds.shape == (1, 77, 32)
    expected = hidden(text_model, chunk_ids(ids_of(tokenizer, "a red cat")))
    torch.testing.assert_close(cond.embeds, expected)


def test_empty_prompt_is_one_chunk_of_padding(encoder, text_model):
    cond = encoder.encode("")
    torch.testing.assert_close(cond.embeds, hidden(text_model, chunk_ids([])))


def test_weight_scales_the_words_tokens_then_restores_the_mean(encoder, tokenizer, text_model):
    plain = encoder.encode("a cat sits").embeds
    weighted = encoder.encode("a (cat:1.5) sits").embeds
    tokens = ids_of(tokenizer, "a cat sits")
    assert len(tokens) == 3  # BOS, a, cat, sits: "cat" is position 2
    multipliers = torch.ones(1, 77, 1)
    multipliers[0, 2] = 1.5
    scaled = plain * multipliers
    torch.testing.assert_close(weighted, scaled * (plain.mean() / scaled.mean()))
    torch.testing.assert_close(weighted.mean(), plain.mean())
    # relative to the other tokens, "cat" really got 1.5x
    ratio = (weighted / plain)[0, :, 0]
    torch.testing.assert_close(ratio[2] / ratio[1], torch.tensor(1.5))
    torch.testing.assert_close(ratio[5:], ratio[1].expand(72))


def test_brackets_give_a1111_multipliers(encoder):
    assert torch.equal(encoder.encode("((cat))").embeds, encoder.encode("(cat:1.2100000000000002)").embeds)
    assert not torch.equal(encoder.encode("[cat]").embeds, encoder.encode("cat").embeds)


def test_long_prompt_becomes_two_chunks_each_encoded_alone(encoder, tokenizer, text_model):
    cat = ids_of(tokenizer, "cat")[0]
    cond = encoder.encode("cat " * 80)
    assert cond.embeds.shape == (1, 154, 32)
    torch.testing.assert_close(cond.embeds[:, :77], hidden(text_model, chunk_ids([cat] * 75)))
    torch.testing.assert_close(cond.embeds[:, 77:], hidden(text_model, chunk_ids([cat] * 5)))


def test_break_starts_a_new_chunk(encoder):
    cond = encoder.encode("a cat BREAK a dog")
    assert cond.embeds.shape == (1, 154, 32)
    torch.testing.assert_close(cond.embeds[:, :77], encoder.encode("a cat").embeds)
    torch.testing.assert_close(cond.embeds[:, 77:], encoder.encode("a dog").embeds)
    assert encoder.encode("a cat BREAK").embeds.shape == (1, 77, 32)


def test_chunk_moves_words_after_a_near_comma_to_the_next_chunk(encoder, tokenizer):
    comma = tokenizer.get_vocab()[",</w>"]
    # comma 5 tokens before the chunk end: the 4 words after it move on with the rest
    chunks = chunk_tokens([([1] * 70 + [comma] + [2] * 10, 1.0)], comma)
    assert [ids for ids, _ in chunks] == [[1] * 70 + [comma], [2] * 10]
    # comma 25 tokens back: beyond A1111's 20-token backtrack, so the chunk is cut at 75
    chunks = chunk_tokens([([1] * 50 + [comma] + [2] * 30, 1.0)], comma)
    assert [ids for ids, _ in chunks] == [[1] * 50 + [comma] + [2] * 24, [2] * 6]
    # and through the encoder, each chunk equals its own text encoded alone
    cond = encoder.encode("cat " * 70 + ", " + "dog " * 10)
    assert cond.embeds.shape == (1, 154, 32)
    torch.testing.assert_close(cond.embeds[:, :77], encoder.encode("cat " * 70 + ",").embeds)
    torch.testing.assert_close(cond.embeds[:, 77:], encoder.encode("dog " * 10).embeds)


def test_weights_follow_tokens_across_chunks():
    chunks = chunk_tokens([([1] * 74, 1.0), ([2] * 3, 1.5), (None, -1.0), ([3], 0.5)], None)
    assert [w for _, w in chunks] == [[1.0] * 74 + [1.5], [1.5, 1.5], [0.5]]


def test_clip_skip_two_is_the_normed_penultimate_layer(tokenizer, text_model, encoder):
    skipped = PromptEncoder([tokenizer], [text_model], clip_skip=2).encode("a red cat").embeds
    ids = chunk_ids(ids_of(tokenizer, "a red cat"))
    with torch.no_grad():
        expected = text_model.final_layer_norm(hidden(text_model, ids, layer=-2))
    torch.testing.assert_close(skipped, expected)
    assert not torch.allclose(skipped, encoder.encode("a red cat").embeds)


@pytest.mark.parametrize("clip_skip", [0, 3])
def test_clip_skip_out_of_range_is_refused(tokenizer, text_model, clip_skip):
    with pytest.raises(InvalidRequest, match="clip skip"):
        PromptEncoder([tokenizer], [text_model], clip_skip=clip_skip)


def test_negative_is_padded_with_empty_chunks_to_the_positive_length(encoder):
    scheduled = ScheduledConditioning.build(encoder, "cat " * 80, "ugly", steps=4, batch_size=2)
    positive, negative = scheduled.at_step(0)
    assert positive.embeds.shape == negative.embeds.shape == (2, 154, 32)
    torch.testing.assert_close(negative.embeds[:1, :77], encoder.encode("ugly").embeds)
    torch.testing.assert_close(negative.embeds[1:, 77:], encoder.encode("").embeds)
    torch.testing.assert_close(positive.embeds[:1], encoder.encode("cat " * 80).embeds)
    kwargs = scheduled.initial_kwargs()
    assert set(kwargs) == {"prompt_embeds", "negative_prompt_embeds"}
    assert torch.equal(kwargs["prompt_embeds"], positive.embeds)


class CountingEncoder:
    """Wraps a PromptEncoder and records each text it is asked to encode."""

    def __init__(self, inner: PromptEncoder) -> None:
        self.inner, self.texts = inner, []

    def encode(self, text: str) -> Conditioning:
        self.texts.append(text)
        return self.inner.encode(text)


def run_callbacks(scheduled: ScheduledConditioning, steps: int, guided: bool = True) -> list[torch.Tensor]:
    """Mimic a diffusers denoising loop: the prompt_embeds each step sees, updated by callback_on_step_end."""
    kwargs = scheduled.initial_kwargs()
    embeds = kwargs["prompt_embeds"]
    if guided:
        embeds = torch.cat([kwargs["negative_prompt_embeds"], embeds])
    seen = []
    for step in range(steps):
        seen.append(embeds)
        result = scheduled.step_callback(None, step, 999 - step, {"prompt_embeds": embeds})
        embeds = result["prompt_embeds"]
    return seen


def test_callback_swaps_embeddings_exactly_at_the_edit_step(encoder):
    counting = CountingEncoder(encoder)
    scheduled = ScheduledConditioning.build(counting, "a [cat:dog:2] x", "[bad:3]", steps=6, batch_size=2)
    assert sorted(counting.texts) == sorted(set(counting.texts))  # each distinct text encoded once
    cat, dog = encoder.encode("a cat x").embeds, encoder.encode("a dog x").embeds
    empty, bad = encoder.encode("").embeds, encoder.encode("bad").embeds
    seen = run_callbacks(scheduled, 6)
    # A1111 counts sampling steps from 0 and uses an entry while step <= its end: cat for 0-2, dog from 3;
    # the negative `[bad:3]` is empty for steps 0-3.
    for step, embeds in enumerate(seen):
        assert embeds.shape == (4, 77, 32)
        torch.testing.assert_close(embeds[2:], (cat if step <= 2 else dog).expand(2, -1, -1))
        torch.testing.assert_close(embeds[:2], (empty if step <= 3 else bad).expand(2, -1, -1))
    # nothing is rebuilt when the schedule does not change
    assert seen[1] is seen[0] and seen[2] is seen[1] and seen[5] is seen[4]


def test_alternation_switches_every_step(encoder):
    scheduled = ScheduledConditioning.build(encoder, "[cat|dog] x", "", steps=6, batch_size=1)
    cat, dog = encoder.encode("cat x").embeds, encoder.encode("dog x").embeds
    seen = run_callbacks(scheduled, 6, guided=False)
    # A1111's 0-based rule: entry 1 ("cat") covers steps 0 and 1, then it alternates each step
    for embeds, expected in zip(seen, [cat, cat, dog, cat, dog, cat]):
        torch.testing.assert_close(embeds, expected)


def test_callback_refuses_a_batch_it_cannot_place(encoder):
    scheduled = ScheduledConditioning.build(encoder, "[a|b]", "", steps=4, batch_size=2)
    with pytest.raises(ValueError, match="num_images_per_prompt=1"):
        scheduled.step_callback(None, 1, 0, {"prompt_embeds": torch.zeros(8, 77, 32)})


@pytest.fixture(scope="module")
def sdxl_parts(tokenizer):
    torch.manual_seed(1)
    first = CLIPTextModel(tiny_config(32)).eval()
    second = CLIPTextModelWithProjection(tiny_config(40, projection_dim=24)).eval()
    second_tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")  # as SDXL's tokenizer_2
    return [tokenizer, second_tokenizer], [first, second]


def test_sdxl_concatenates_penultimate_states_and_pools_the_first_chunk(sdxl_parts, tokenizer):
    tokenizers, (first, second) = sdxl_parts
    assert tokenizers[1].pad_token_id == 0
    encoder = PromptEncoder(tokenizers, [first, second], clip_skip=2)  # ignored for SDXL, as in A1111
    cond = encoder.encode("a (red:1.0) cat")
    assert cond.embeds.shape == (1, 77, 72) and cond.pooled.shape == (1, 24)
    tokens = ids_of(tokenizer, "a red cat")
    torch.testing.assert_close(cond.embeds[..., :32], hidden(first, chunk_ids(tokens), layer=-2))
    second_ids = chunk_ids(tokens, pad=0)
    torch.testing.assert_close(cond.embeds[..., 32:], hidden(second, second_ids, layer=-2))
    with torch.no_grad():
        torch.testing.assert_close(cond.pooled, second(input_ids=second_ids).text_embeds)

    long = encoder.encode("a red cat " + "dog " * 80)
    assert long.embeds.shape == (1, 154, 72)
    torch.testing.assert_close(long.pooled, encoder.encode("a red cat " + "dog " * 72).pooled)


def test_sdxl_schedule_feeds_pooled_embeddings(sdxl_parts):
    tokenizers, encoders = sdxl_parts
    encoder = PromptEncoder(tokenizers, encoders)
    scheduled = ScheduledConditioning.build(encoder, "[cat:dog:1]", "ugly " * 80, steps=3, batch_size=2)
    kwargs = scheduled.initial_kwargs()
    assert kwargs["prompt_embeds"].shape == kwargs["negative_prompt_embeds"].shape == (2, 154, 72)
    assert kwargs["pooled_prompt_embeds"].shape == kwargs["negative_pooled_prompt_embeds"].shape == (2, 24)
    assert scheduled.callback_tensor_inputs == ["prompt_embeds", "add_text_embeds"]

    pooled = torch.cat([kwargs["negative_pooled_prompt_embeds"], kwargs["pooled_prompt_embeds"]])
    embeds = torch.cat([kwargs["negative_prompt_embeds"], kwargs["prompt_embeds"]])
    state = {"prompt_embeds": embeds, "add_text_embeds": pooled}
    assert scheduled.step_callback(None, 0, 999, state)["add_text_embeds"] is pooled  # step 1 still "cat"
    state = scheduled.step_callback(None, 1, 998, state)  # step 2 uses "dog"
    dog = encoder.encode("dog")
    torch.testing.assert_close(state["add_text_embeds"][2:], dog.pooled.expand(2, -1))
    torch.testing.assert_close(state["prompt_embeds"][2:, :77], dog.embeds.expand(2, -1, -1))
    torch.testing.assert_close(state["add_text_embeds"][:2], pooled[:2])


def tiny_unet(**extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(2)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **extra,
    )


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
    )


def run_pipeline(pipe, scheduled: ScheduledConditioning, steps: int) -> list[dict]:
    """Run a real diffusers pipeline with the schedule's kwargs and callback; return what the UNet received."""
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    pipe.set_progress_bar_config(disable=True)
    try:
        pipe(
            **scheduled.initial_kwargs(),
            num_inference_steps=steps,
            guidance_scale=7.0,
            height=16,
            width=16,
            output_type="latent",
            callback_on_step_end=scheduled.step_callback,
            callback_on_step_end_tensor_inputs=scheduled.callback_tensor_inputs,
        )
    finally:
        hook.remove()
    return seen


def test_sd_pipeline_receives_scheduled_embeddings(encoder, tokenizer, text_model):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=text_model,
        tokenizer=tokenizer,
        unet=tiny_unet(cross_attention_dim=32),
        scheduler=DDIMScheduler(clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    long_tail = " x" * 80
    scheduled = ScheduledConditioning.build(encoder, "[cat|dog]" + long_tail, "bad", steps=4, batch_size=2)
    seen = run_pipeline(pipe, scheduled, 4)
    cat, dog = encoder.encode("cat" + long_tail).embeds, encoder.encode("dog" + long_tail).embeds
    negative = torch.cat([encoder.encode("bad").embeds, encoder.encode("").embeds], dim=1)
    assert len(seen) == 4
    for kwargs, expected in zip(seen, [cat, cat, dog, cat]):
        states = kwargs["encoder_hidden_states"]
        assert states.shape == (4, 154, 32)
        torch.testing.assert_close(states, torch.cat([negative.expand(2, -1, -1), expected.expand(2, -1, -1)]))


def test_sdxl_pipeline_receives_scheduled_embeddings_and_pooled(sdxl_parts):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizers, encoders = sdxl_parts
    unet = tiny_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=24 + 6 * 8,
        cross_attention_dim=72,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=encoders[0],
        text_encoder_2=encoders[1],
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
    )
    encoder = PromptEncoder(tokenizers, encoders)
    scheduled = ScheduledConditioning.build(encoder, "[cat:dog:1]", "bad", steps=3, batch_size=1)
    seen = run_pipeline(pipe, scheduled, 3)
    bad = encoder.encode("bad")
    for kwargs, word in zip(seen, ["cat", "cat", "dog"]):
        expected = encoder.encode(word)
        torch.testing.assert_close(kwargs["encoder_hidden_states"], torch.cat([bad.embeds, expected.embeds]))
        torch.testing.assert_close(kwargs["added_cond_kwargs"]["text_embeds"], torch.cat([bad.pooled, expected.pooled]))
