"""Adapters for the text-to-image pipeline families people sample from today, loaded with
``DiffusionPipeline.from_pretrained``; each turns its pipeline's conditioning into the one denoiser protocol.

- SDXL (``StableDiffusionXLPipeline``): two CLIP text encoders, the pooled embedding of the second and the added
  time ids (original size, crop, target size) go in ``added_cond_kwargs`` (Podell et al. 2023, Sec. 2.2);
- SD3 (``SD3Transformer2DModel``): two CLIP encoders and a T5, pooled projections, a flow-matching path with SD3's
  shift (Esser et al. 2024, Eq. 23);
- FLUX.1 (``FluxTransformer2DModel``): 2x2-packed latents with rotary position ids, CLIP pooled + T5 sequence
  embeddings, a guidance embedding (guidance-distilled "dev") or true classifier-free guidance, and the shift
  chosen from the image size (FLUX's dynamic shift);
- PixArt-alpha / sigma (``PixArtTransformer2DModel``): T5 embeddings with their attention mask, learned sigma.

Samplers see image-shaped latents [C, H, W]; packing (FLUX) happens inside the network call, so noise, seeds and
every method are the same as for any other model. The pipeline's own sizes are the defaults: SDXL's, SD3's and
PixArt's from the network's ``sample_size``, FLUX's from the pipeline's default sample size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .diffusers_models import _PipelineModel, _vae_decode, dynamic_shift, flow_grid
from .protocol import NetworkDenoiser

__all__ = ["SDXLModel", "SD3Model", "FluxModel", "PixArtModel", "family_model"]


def _expand(tensors: dict[str, torch.Tensor], batch_size: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(batch_size, *v.shape[1:]) for k, v in tensors.items()}


@dataclass
class _TextModel(_PipelineModel):
    """A text-to-image pipeline: ``_encode(prompt, negative)`` gives the conditional and unconditional inputs."""

    takes_prompt: bool = True
    latent: bool = True

    def _encode(self, prompt: str, negative: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _cond(self, cond, batch_size):
        with torch.no_grad():  # plain tensors: usable in a differentiable call
            c, u = self._encode(cond.prompt if cond.prompt is not None else "", cond.negative_prompt)
        return _expand(c, batch_size), _expand(u, batch_size)

    def decode(self, x):
        return _vae_decode(self.pipe.vae, x, self.dtype)


@dataclass
class SDXLModel(_TextModel):
    """SDXL's UNet: ``encoder_hidden_states`` from both encoders, ``text_embeds`` (pooled) and ``time_ids``. An
    empty negative prompt is the zero embedding, as the pipeline does with ``force_zeros_for_empty_prompt``."""

    def _network(self, x, timestep, cond):
        return self.pipe.unet(x, timestep, encoder_hidden_states=cond["encoder_hidden_states"],
                              added_cond_kwargs={"text_embeds": cond["text_embeds"],
                                                 "time_ids": cond["time_ids"]}).sample

    def _encode(self, prompt, negative):
        pipe = self.pipe
        c, u, pc, pu = pipe.encode_prompt(prompt, device=self.device, num_images_per_prompt=1,
                                          do_classifier_free_guidance=True, negative_prompt=negative or None)
        size = (self.sample_shape[1] * pipe.vae_scale_factor, self.sample_shape[2] * pipe.vae_scale_factor)
        ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=c.dtype,
                                     text_encoder_projection_dim=int(pc.shape[-1])).to(self.device)
        return ({"encoder_hidden_states": c, "text_embeds": pc, "time_ids": ids},
                {"encoder_hidden_states": u, "text_embeds": pu, "time_ids": ids})


@dataclass
class SD3Model(_TextModel):
    """SD3's MM-DiT: sequence embeddings (CLIP + T5) and pooled projections; the network sees t x 1000."""

    max_sequence_length: int = 256

    def _scheduler_kwargs(self, steps):
        config = self.pipe.scheduler.config
        if not config.get("use_dynamic_shifting"):
            return {}
        tokens = (self.sample_shape[1] // self.pipe.transformer.config.patch_size) * (
            self.sample_shape[2] // self.pipe.transformer.config.patch_size)
        return {"mu": dynamic_shift(config, tokens, max_shift=1.16)}  # SD3's pipeline default

    def _network(self, x, timestep, cond):
        return self.pipe.transformer(hidden_states=x, timestep=timestep,
                                     encoder_hidden_states=cond["encoder_hidden_states"],
                                     pooled_projections=cond["pooled_projections"], return_dict=False)[0]

    def _encode(self, prompt, negative):
        c, u, pc, pu = self.pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None, device=self.device,
                                               num_images_per_prompt=1, do_classifier_free_guidance=True,
                                               negative_prompt=negative,
                                               max_sequence_length=self.max_sequence_length)
        return ({"encoder_hidden_states": c, "pooled_projections": pc},
                {"encoder_hidden_states": u, "pooled_projections": pu})


@dataclass
class FluxModel(_TextModel):
    """FLUX.1: the sampler's [C, H, W] latents are packed into (H/2)(W/2) tokens of 4C channels for the network
    and unpacked after; the network sees t (diffusers passes ``timestep / 1000``). A guidance-distilled transformer
    (``guidance_embeds``) takes the guidance scale as an input at 1 NFE; otherwise a scale != 1 is true
    classifier-free guidance against the negative prompt."""

    max_sequence_length: int = 512

    @property
    def _embedded_guidance(self) -> bool:
        return bool(self.pipe.transformer.config.guidance_embeds)

    def _scheduler_kwargs(self, steps):
        """As ``FluxPipeline``: sigmas linear from 1 to 1/steps (unless the scheduler makes its own) and the dynamic
        shift of the image's token count."""
        import numpy as np

        config = self.pipe.scheduler.config
        sigmas = None if config.get("use_flow_sigmas") else np.linspace(1.0, 1.0 / steps, steps)
        tokens = (self.sample_shape[1] // 2) * (self.sample_shape[2] // 2)
        return {"sigmas": sigmas, "mu": dynamic_shift(config, tokens)}

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] latents as the pipeline's (H/2)(W/2) tokens of 4C channels (``FluxPipeline._pack_latents``)."""
        return self.pipe._pack_latents(x, *x.shape)

    def unpack(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The pipeline's tokens back to [B, C, H, W] latents (``FluxPipeline._unpack_latents``)."""
        f = self.pipe.vae_scale_factor
        return self.pipe._unpack_latents(tokens, h * f, w * f, f)

    def _network(self, x, timestep, cond):
        b, c, h, w = x.shape
        pipe = self.pipe
        tokens = self.pack(x)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        text = cond["encoder_hidden_states"]
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype)
        out = pipe.transformer(hidden_states=tokens, timestep=timestep / 1000.0, guidance=cond.get("guidance"),
                               pooled_projections=cond["pooled_projections"], encoder_hidden_states=text,
                               txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return self.unpack(out, h, w)

    def _encode(self, prompt, negative):
        def one(p):
            e, pooled, _ = self.pipe.encode_prompt(prompt=p, prompt_2=None, device=self.device,
                                                   num_images_per_prompt=1,
                                                   max_sequence_length=self.max_sequence_length)
            return {"encoder_hidden_states": e, "pooled_projections": pooled}

        return one(prompt), one(negative)

    def denoiser(self, cond, batch_size):
        if not self._embedded_guidance:
            return super().denoiser(cond, batch_size)
        self.check_conditioning(cond)
        with torch.no_grad():  # plain tensors: usable in a differentiable call
            c, _ = self._encode(cond.prompt if cond.prompt is not None else "", cond.negative_prompt)
        c = _expand(c, batch_size)
        c["guidance"] = torch.full((batch_size,), float(cond.guidance_scale), device=self.device)
        return NetworkDenoiser(lambda x, t: self._network(x, t, c), self.schedule, self.prediction_type, self.dtype)


@dataclass
class PixArtModel(_TextModel):
    """PixArt-alpha / sigma: T5 embeddings and their mask; the eps half of a learned-sigma output; resolution and
    aspect-ratio conditions for the 1024-pixel transformers (``sample_size`` 128), as the pipeline adds them."""

    max_sequence_length: int = 120

    def _network(self, x, timestep, cond):
        added = {"resolution": cond.get("resolution"), "aspect_ratio": cond.get("aspect_ratio")}
        out = self.pipe.transformer(x, encoder_hidden_states=cond["encoder_hidden_states"],
                                    encoder_attention_mask=cond["encoder_attention_mask"], timestep=timestep,
                                    added_cond_kwargs=added).sample
        c = x.shape[1]
        return out[:, :c] if out.shape[1] == 2 * c else out

    def _encode(self, prompt, negative):
        c, cm, u, um = self.pipe.encode_prompt(prompt, do_classifier_free_guidance=True, negative_prompt=negative,
                                               num_images_per_prompt=1, device=self.device, clean_caption=False,
                                               max_sequence_length=self.max_sequence_length)
        extra = {}
        if self.pipe.transformer.config.sample_size == 128:
            h, w = (side * self.pipe.vae_scale_factor for side in self.sample_shape[1:])
            extra = {"resolution": torch.tensor([[float(h), float(w)]], device=self.device),
                     "aspect_ratio": torch.tensor([[h / w]], device=self.device)}
        return ({"encoder_hidden_states": c, "encoder_attention_mask": cm, **extra},
                {"encoder_hidden_states": u, "encoder_attention_mask": um, **extra})


FAMILIES = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart",
}


def family_model(pipe, common: dict) -> _PipelineModel | None:
    """The adapter for ``pipe``'s family, or None when it is not one of ``FAMILIES``."""
    family = FAMILIES.get(type(pipe).__name__)
    if family is None:
        return None
    config = dict(pipe.scheduler.config)
    if family == "sdxl":
        s = pipe.unet.config.sample_size
        return SDXLModel(sample_shape=(pipe.unet.config.in_channels, s, s), **common)
    if family == "sd3":
        cfg = pipe.transformer.config
        s = cfg.sample_size
        return SD3Model(sample_shape=(cfg.in_channels, s, s),
                        default_grid=flow_grid(config, (s // cfg.patch_size) ** 2), **common)
    if family == "flux":
        c = pipe.transformer.config.in_channels // 4
        pixels = pipe.default_sample_size * pipe.vae_scale_factor
        s = 2 * (pixels // (pipe.vae_scale_factor * 2))
        return FluxModel(sample_shape=(c, s, s), default_grid=flow_grid(config, (s // 2) ** 2), **common)
    cfg = pipe.transformer.config
    return PixArtModel(sample_shape=(cfg.in_channels, cfg.sample_size, cfg.sample_size),
                       max_sequence_length=300 if type(pipe).__name__ == "PixArtSigmaPipeline" else 120, **common)
