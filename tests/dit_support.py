"""Tiny random transformer (DiT) pipelines for the DiT tests: SD3 (T5 optional), FLUX and PixArt-Sigma, sized after
diffusers' own fast tests, with huabu-tiny's real CLIP tokenizer and a T5 tokenizer built here from a few dozen
word pieces (the hub's tiny T5 is out of reach offline)."""

from __future__ import annotations

import string

from conftest import TOKENIZER_DIR

T5_WIDTH = 32


def tiny_t5_tokenizer():
    """A T5 tokenizer (Unigram word pieces, T5's pad / eos / unk ids 0 / 1 / 2) over letters, digits and
    punctuation: every prompt tokenizes, and different prompts give different ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0)


def tiny_t5_encoder():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=128, d_model=T5_WIDTH, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1))


def _clip(width: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408,
                            hidden_size=width, intermediate_size=37, num_attention_heads=2, num_hidden_layers=2,
                            projection_dim=width)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         layers_per_block=1, norm_num_groups=2, sample_size=32, **extra)


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def build_tiny_sd3(with_t5: bool = True, seed: int = 0, layers: int = 1):
    """StableDiffusion3Pipeline: two CLIPs of width 16 (SD3 joins them to 32 = the T5 width), VAE factor 2,
    patch 2 (sizes step by 4), sample size 8 (default 16 px), 16 latent channels as SD3's (its inpaint pipeline
    insists). ControlNets need `layers` >= 2: SD3's last block reads no control."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=layers,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=T5_WIDTH, pooled_projection_dim=32, out_channels=16)
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=_vae(16, shift_factor=0.0609, scaling_factor=1.5035),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=_clip(16, True), tokenizer=_clip_tokenizer(),
        text_encoder_2=_clip(16, True), tokenizer_2=_clip_tokenizer(),
        text_encoder_3=tiny_t5_encoder() if with_t5 else None, tokenizer_3=tiny_t5_tokenizer() if with_t5 else None)


def build_tiny_flux(seed: int = 0):
    """FluxPipeline: packed latents (one latent channel, 2x2 patches), a CLIP of width 32 and the tiny T5."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, vae=_vae(1, shift_factor=0.0609, scaling_factor=1.5035),
                        scheduler=scheduler, text_encoder=_clip(32, False), tokenizer=_clip_tokenizer(),
                        text_encoder_2=tiny_t5_encoder(), tokenizer_2=tiny_t5_tokenizer())


def build_tiny_pixart(seed: int = 0):
    """PixArtSigmaPipeline: a 2-layer PixArt transformer (learned sigma), the tiny T5, a DPM-Solver scheduler."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=T5_WIDTH, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6)
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    return PixArtSigmaPipeline(transformer=transformer, vae=_vae(4), scheduler=scheduler,
                               text_encoder=tiny_t5_encoder(), tokenizer=tiny_t5_tokenizer())
