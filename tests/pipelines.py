"""Tiny randomly initialised diffusers pipelines saved to local directories (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_ddpm(path: Path, prediction_type: str = "epsilon", num_class_embeds: int | None = None) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type=prediction_type)).save_pretrained(path)
    return path


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, sample_size=8)


def save_dit(path: Path) -> Path:
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=10)
    DiTPipeline(transformer=transformer, vae=_tiny_vae(), scheduler=DDIMScheduler()).save_pretrained(path)
    return path


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2 / CLIP)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _tiny_clip_tokenizer():
    """A CLIP BPE tokenizer with a byte-level vocabulary and no merges: every character is a token."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _byte_chars():
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16), len(vocab)


def save_sd(path: Path) -> Path:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer, vocab_size = _tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                                                num_attention_heads=2, num_hidden_layers=1,
                                                max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1, projection_dim=16))
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=16,
                                attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    pipe = StableDiffusionPipeline(vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                           beta_end=0.012, prediction_type="v_prediction"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def _tiny_t5(d_model: int = 32):
    """A T5 encoder and its fast (Unigram) tokenizer built here over single characters: no sentencepiece model,
    nothing downloaded."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=16)
    encoder = T5EncoderModel(T5Config(vocab_size=len(pieces), d_model=d_model, d_kv=8, d_ff=37, num_layers=1,
                                      num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                      eos_token_id=1, decoder_start_token_id=0))
    return tokenizer, encoder


def _tiny_clip(with_projection: bool, hidden: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, vocab_size = _tiny_clip_tokenizer()
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=32, num_attention_heads=2,
                            num_hidden_layers=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=hidden)
    return tokenizer, (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _flow_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=8, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def save_sdxl(path: Path) -> Path:
    """SDXL: two CLIP text encoders (the second with a projection: the pooled embedding), added time ids,
    EulerDiscreteScheduler as SDXL ships it."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer, text_encoder = _tiny_clip(False)
    tokenizer_2, text_encoder_2 = _tiny_clip(True)
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=(2, 4), use_linear_projection=True,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + 16)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    StableDiffusionXLPipeline(vae=_tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                              tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                              force_zeros_for_empty_prompt=True).save_pretrained(path)
    return path


def save_sd3(path: Path) -> Path:
    """SD3: ``SD3Transformer2DModel``, two CLIP encoders with projections and a T5, FlowMatchEuler with shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    tokenizer, text_encoder = _tiny_clip(True)
    tokenizer_2, text_encoder_2 = _tiny_clip(True)
    tokenizer_3, text_encoder_3 = _tiny_t5(32)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=32, pooled_projection_dim=32, pos_embed_max_size=8)
    StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                             vae=_flow_vae(4), text_encoder=text_encoder, tokenizer=tokenizer,
                             text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
                             tokenizer_3=tokenizer_3).save_pretrained(path)
    return path


def save_flux(path: Path, guidance_embeds: bool = True) -> Path:
    """FLUX.1: ``FluxTransformer2DModel`` with a guidance embedding ("dev") or without ("schnell"), packed 2x2
    latents, CLIP pooled + T5 sequence embeddings, FlowMatchEuler with dynamic (resolution-dependent) shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tokenizer, text_encoder = _tiny_clip(False)
    tokenizer_2, text_encoder_2 = _tiny_t5(32)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_flow_vae(4), text_encoder=text_encoder,
                 tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2).save_pretrained(path)
    return path


def save_pixart(path: Path) -> Path:
    """PixArt-alpha: ``PixArtTransformer2DModel`` (learned sigma) conditioned on T5, DPM-Solver++ as it ships."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    tokenizer, text_encoder = _tiny_t5(32)
    transformer = PixArtTransformer2DModel(sample_size=4, num_layers=1, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=2, caption_channels=32, in_channels=4,
                                           cross_attention_dim=16, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_tiny_vae(), transformer=transformer,
                        scheduler=DPMSolverMultistepScheduler()).save_pretrained(path)
    return path
