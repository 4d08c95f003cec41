"""CogVideoX: where its attention lives, its token layout, its RoPE, and how its pipeline runs.

CogVideoX runs joint attention over [text ; video] in every block's `attn1`. The 5B layout
rotates video queries and keys with 3D RoPE inside attention, so an injected key can be
re-positioned at any grid position (point-tracking attention). The 2B layout adds sin-cos
positions to the input instead: keys carry their source position baked in and cannot be moved,
so foreground injection there is plain key/value sharing, without point tracking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import CogVideoXPipeline
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.utils.torch_utils import randn_tensor

from ..controller import AttentionCall, Controller
from ..plan import Layers


@dataclass
class CogVideoXRope:
    """CogVideoX's 3D RoPE table over the video grid, applied at arbitrary positions."""

    cos: torch.Tensor  # (Nv, D)
    sin: torch.Tensor

    def rotate(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        cos, sin = (self.cos, self.sin) if positions is None else (self.cos[positions], self.sin[positions])
        squeeze = x.dim() == 3
        out = apply_rotary_emb(x[None] if squeeze else x, (cos, sin))
        return out[0] if squeeze else out


class CogVideoXBachVidProcessor:
    """Replaces CogVideoXAttnProcessor2_0: same projections, attention delegated to the controller."""

    def __init__(self, layer: int, controller: Controller):
        self.layer, self.controller = layer, controller

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise NotImplementedError("CogVideoX does not use attention masks; bachvid does not support them")
        text_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch, _, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        rope = CogVideoXRope(*image_rotary_emb) if image_rotary_emb is not None else None
        out = self.controller.attend(AttentionCall(self.layer, query, key, value, text_length, rope))
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        encoder_out, video_out = out.split([text_length, out.size(1) - text_length], dim=1)
        return video_out, encoder_out


class CogVideoXBackbone:
    """Everything bachvid needs to know about a diffusers CogVideoXPipeline."""

    name = "cogvideox"
    pipeline_classes = ("CogVideoXPipeline",)

    def __init__(self, pipe: CogVideoXPipeline):
        self.pipe = pipe
        self._original_processors = None

    # Model facts -----------------------------------------------------------------------------
    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks)

    @property
    def text_length(self) -> int:
        return self.transformer.config.max_text_seq_length

    @property
    def has_rope(self) -> bool:
        return bool(self.transformer.config.use_rotary_positional_embeddings)

    def default_layers(self) -> Layers:
        """Vital layers: the first 15/42 of the stack (the paper's 15 of CogVideoX-5B's 42);
        mask and match layers: the middle half, until calibration says otherwise."""
        n = self.num_layers
        vital = range(max(1, round(n * 15 / 42)))
        middle = range(n // 4, max(n // 4 + 1, (3 * n) // 4))
        return Layers(frozenset(vital), frozenset(middle), frozenset(middle))

    def default_settings(self) -> dict:
        """Frames and size the transformer was configured for (49 x 480 x 720 for CogVideoX-5B)."""
        config = self.transformer.config
        spatial = self.pipe.vae_scale_factor_spatial
        return {
            "num_frames": config.sample_frames,
            "height": config.sample_height * spatial,
            "width": config.sample_width * spatial,
        }

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(latent frames, tokens high, tokens wide) of the video token sequence."""
        p = self.transformer.config.patch_size
        latent_frames = (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
        if self.transformer.config.patch_size_t is not None:
            p_t = self.transformer.config.patch_size_t
            latent_frames = (latent_frames + p_t - 1) // p_t
        spatial = self.pipe.vae_scale_factor_spatial * p
        return latent_frames, height // spatial, width // spatial

    # Attention hooks -------------------------------------------------------------------------
    def install(self, controller: Controller) -> None:
        if self._original_processors is None:
            self._original_processors = self.transformer.attn_processors
        processors = {}
        for name in self._original_processors:
            layer = int(name.split(".")[1])  # "transformer_blocks.{i}.attn1.processor"
            processors[name] = CogVideoXBachVidProcessor(layer, controller)
        self.transformer.set_attn_processor(processors)

    def uninstall(self) -> None:
        if self._original_processors is not None:
            self.transformer.set_attn_processor(self._original_processors)
            self._original_processors = None

    # Running the stock pipeline -------------------------------------------------------------
    def encode(self, prompt: str, do_cfg: bool, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.pipe.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance=do_cfg,
            max_sequence_length=self.text_length, device=self.pipe._execution_device,
        )

    def initial_noise(self, seed: int, num_frames: int, height: int, width: int, dtype) -> torch.Tensor:
        """The same noise stock CogVideoXPipeline draws for `generator=torch.Generator(device).manual_seed(seed)`."""
        device = self.pipe._execution_device
        frames, _, _ = self.token_grid(num_frames, height, width)
        if self.transformer.config.patch_size_t is not None:
            frames *= self.transformer.config.patch_size_t
        spatial = self.pipe.vae_scale_factor_spatial
        shape = (1, frames, self.transformer.config.in_channels, height // spatial, width // spatial)
        generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def denoise(
        self,
        *,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        latents: torch.Tensor,
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        on_step_end: Callable[[int, torch.Tensor], bool],
        output_type: str = "np",
        progress: bool = True,
    ):
        """Run the stock pipeline; `on_step_end(i, latents)` hears of each finished step, True stops it."""

        def callback(pipe, i, t, tensors):
            if on_step_end(i, tensors["latents"]):
                pipe._interrupt = True
            return {}

        self.pipe.set_progress_bar_config(disable=not progress, leave=False)
        return self.pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            latents=latents,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            max_sequence_length=self.text_length,
            callback_on_step_end=callback,
            output_type=output_type,
        ).frames
