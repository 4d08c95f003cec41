"""CogVideoX: where its attention lives, its token layout, its RoPE, and how its pipeline runs.

CogVideoX runs joint attention over [text ; video] in every block's `attn1`. The 5B layout
rotates video queries and keys with 3D RoPE inside attention, so an injected key can be
re-positioned at any grid position (point-tracking attention). The 2B layout adds sin-cos
positions to the input instead: keys carry their source position baked in and cannot be moved,
so foreground injection there is plain key/value sharing, without point tracking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline
from diffusers.models.embeddings import apply_rotary_emb
from tqdm.auto import tqdm

from ..method.controller import AttentionCall, Controller, VideoState
from ..method.plan import Layers


@dataclass
class BatchVideo:
    """One video of a batched denoising run."""

    embeds: torch.Tensor  # (1, T, C) conditional text embeddings
    negative: torch.Tensor | None  # (1, T, C) unconditional ones; None without CFG
    seed: int | None = None  # a denoised video: the seed of its generator
    replay: Sequence[torch.Tensor] | None = None  # a replayed video: its latents before each step


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
        self.controller: Controller | None = None
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
    def joint_text_length(self) -> int:
        """Text tokens ahead of the video tokens in the self-attention sequence, which plans and
        identity records index past: all of them, since CogVideoX attends over [text ; video]."""
        return self.text_length

    @property
    def inner_dim(self) -> int:
        """Width of attention keys/values: heads x head dim."""
        config = self.transformer.config
        return config.num_attention_heads * config.attention_head_dim

    def activation_bytes(self, num_frames: int, height: int, width: int, branches: int) -> int:
        """Memory one more video adds to a batched forward: its widest live tensors in a block
        (hidden states, q/k/v, attention output and the 4x feed-forward), over [text ; video] tokens.
        Measured on an H100 with CogVideoX-5B at 49x480x720: ~2.6 GiB per video (CFG pair)."""
        frames, h, w = self.token_grid(num_frames, height, width)
        tokens = self.text_length + frames * h * w
        itemsize = self.transformer.dtype.itemsize
        return branches * tokens * self.inner_dim * itemsize * (1 + 3 + 1 + 4 + 4)

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

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: the VAE's spatial factor x the patch size."""
        return self.pipe.vae_scale_factor_spatial * self.transformer.config.patch_size

    @property
    def max_inference_steps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(latent frames, tokens high, tokens wide) of the video token sequence."""
        p = self.transformer.config.patch_size
        latent_frames = (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
        if self.transformer.config.patch_size_t is not None:
            p_t = self.transformer.config.patch_size_t
            latent_frames = (latent_frames + p_t - 1) // p_t
        spatial = self.pipe.vae_scale_factor_spatial * p
        return latent_frames, height // spatial, width // spatial

    def latent_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (1, F, C, H, W) as one row per video token (N, p_t*C*p*p), in the token order the
        patch embedding makes (frame, row, column)."""
        p, p_t = self.transformer.config.patch_size, self.transformer.config.patch_size_t or 1
        b, f, c, h, w = latents.shape
        x = latents.reshape(b, f // p_t, p_t, c, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5, 7)
        return x.reshape(b * (f // p_t) * (h // p) * (w // p), -1)

    def tokens_to_latents(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of `latent_tokens`, shaped like `like`."""
        p, p_t = self.transformer.config.patch_size, self.transformer.config.patch_size_t or 1
        b, f, c, h, w = like.shape
        x = tokens.reshape(b, f // p_t, h // p, w // p, p_t, c, p, p).permute(0, 1, 4, 5, 2, 6, 3, 7)
        return x.reshape(like.shape)

    # Attention hooks -------------------------------------------------------------------------
    def install(self, controller: Controller) -> None:
        self.controller = controller
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

    # Denoising -----------------------------------------------------------------------------
    def encode(self, prompt: str, do_cfg: bool, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.pipe.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance=do_cfg,
            max_sequence_length=self.text_length, device=self.pipe._execution_device,
        )

    def generator(self, seed: int) -> torch.Generator:
        """The generator stock CogVideoXPipeline would be given for this seed."""
        device = self.pipe._execution_device
        return torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)

    def _latent_frames(self, num_frames: int) -> tuple[int, int]:
        """(pixel frames the latents are drawn for, padding latent frames), as CogVideoX 1.5 pads to patch_size_t."""
        latent_frames = (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
        p_t = self.transformer.config.patch_size_t
        extra = 0 if p_t is None or latent_frames % p_t == 0 else p_t - latent_frames % p_t
        return num_frames + extra * self.pipe.vae_scale_factor_temporal, extra

    def initial_noise(self, generator: torch.Generator, num_frames: int, height: int, width: int, dtype) -> torch.Tensor:
        """The initial latents stock CogVideoXPipeline draws from `generator` (it draws them first)."""
        frames, _ = self._latent_frames(num_frames)
        return self.pipe.prepare_latents(1, self.transformer.config.in_channels, frames, height, width, dtype,
                                         self.pipe._execution_device, generator)

    def denoise(
        self,
        videos: list[BatchVideo],
        *,
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        step_states: Callable[[int], list[tuple[VideoState, int | None]]],
        run_steps: int | None = None,
        on_step_end: Callable[[int, list[torch.Tensor | None]], None] | None = None,
        progress: bool | str = False,
        apart: bool = False,
    ) -> list[torch.Tensor | None]:
        """Denoise several videos in one batch, step for step as stock CogVideoXPipeline does each alone.

        Each video has its own generator (initial noise, then the scheduler's noise), its own CFG
        pair of rows [uncond, cond] and its own scheduler state, so a video's latents equal a
        stock run of it alone. A *replayed* video is not denoised: it re-enters every step with
        the latents it had then, and `step_states(i)` gives, per video, its controller state and
        how many blocks it needs (None: all; 0: skip it this step), so a replayed identity runs
        only the blocks whose keys, values or outputs the shots use. With `apart`, each block runs
        the videos that feed others (an identity) before, and apart from, the rest: same outputs,
        the block's activations for one part at a time. Returns the latents of the denoised videos
        (None for replayed ones) after `run_steps` of `num_inference_steps`."""
        pipe, config = self.pipe, self.transformer.config
        device = pipe._execution_device
        do_cfg = guidance_scale > 1.0
        run_steps = num_inference_steps if run_steps is None else run_steps
        pipe.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = pipe.scheduler.timesteps
        dpm = isinstance(pipe.scheduler, CogVideoXDPMScheduler)
        dtype = videos[0].embeds.dtype
        generators = [self.generator(v.seed) if v.replay is None else None for v in videos]
        latents = [self.initial_noise(g, num_frames, height, width, dtype) if g is not None else None
                   for g in generators]
        step_kwargs = [pipe.prepare_extra_step_kwargs(g, 0.0) if g is not None else None for g in generators]
        old_pred = [None] * len(videos)
        rope = None
        if config.use_rotary_positional_embeddings:
            frames = self._latent_frames(num_frames)[0]
            latent_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
            rope = pipe._prepare_rotary_positional_embeddings(height, width, latent_frames, device)
        embeds = [torch.cat([v.negative, v.embeds]) if do_cfg else v.embeds for v in videos]
        label = progress if isinstance(progress, str) else None
        # disable=None: the per-step bar shows on a terminal only; in a log file or CI its cursor
        # movements (a bar nested under the CLI's) would be junk.
        for i in tqdm(range(run_steps), desc=label, disable=None if progress else True, leave=False):
            t = timesteps[i]
            states = step_states(i)
            present = [j for j, (_, depth) in enumerate(states) if depth != 0]
            inputs = [latents[j] if videos[j].replay is None else videos[j].replay[i].to(device) for j in present]
            model_input = torch.cat([x for x in inputs for _ in range(2 if do_cfg else 1)])
            model_input = pipe.scheduler.scale_model_input(model_input, t)
            self.controller.branches = 2 if do_cfg else 1
            with self._sub_batches([states[j][0] for j in present], [states[j][1] for j in present], apart):
                noise_pred = self.transformer(
                    hidden_states=model_input,
                    encoder_hidden_states=torch.cat([embeds[j] for j in present]),
                    timestep=t.expand(model_input.shape[0]),
                    image_rotary_emb=rope,
                    return_dict=False,
                )[0].float()
            for row, j in enumerate(present):
                if videos[j].replay is not None:
                    continue
                if do_cfg:
                    uncond, text = noise_pred[2 * row : 2 * row + 2].chunk(2)
                    pred = uncond + guidance_scale * (text - uncond)
                else:
                    pred = noise_pred[row : row + 1]
                if dpm:
                    new, old_pred[j] = pipe.scheduler.step(pred, old_pred[j], t, timesteps[i - 1] if i > 0 else None,
                                                           latents[j], **step_kwargs[j], return_dict=False)
                else:
                    new = pipe.scheduler.step(pred, t, latents[j], **step_kwargs[j], return_dict=False)[0]
                latents[j] = new.to(dtype)
            if on_step_end is not None:
                on_step_end(i, latents)
        self.controller.clear()
        return latents

    @contextmanager
    def _sub_batches(self, states: list[VideoState], depths: list[int | None], apart: bool = False):
        """Drop a video of depth d from the batch before block d (a replayed identity that shots no
        longer read); its model output is filler. With `apart`, each block runs the videos that feed
        others (state.target set: an identity beside its shots) as a part of their own first, then
        the rest, which read the identity's layer from its live record: a block's activations then
        peak at one part's rows instead of the whole batch's. The stock block code runs unchanged;
        only its forward is wrapped for the duration, so offloading hooks still apply."""
        branches = self.controller.branches
        feeders = [i for i, state in enumerate(states) if state.target is not None]
        split = apart and bool(feeders) and len(feeders) < len(states)
        cuts = {d for d in depths if d is not None and d < self.num_layers}
        self.controller.use(states)
        if not cuts and not split:
            yield
            return
        alive = list(range(len(states)))
        device = self.pipe._execution_device
        row_indices = {}

        def rows(videos, within):
            """Batch rows of `videos` among `within`, on the device; made once per forward and shape,
            since a host-to-device copy at every block would stall the GPU's queue."""
            key = (tuple(videos), tuple(within))
            if key not in row_indices:
                row_indices[key] = torch.tensor([within.index(k) * branches + b for k in videos
                                                 for b in range(branches)]).to(device)
            return row_indices[key]

        def wrap(index, forward):
            def run(hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, attention_kwargs=None):
                nonlocal alive
                if index in cuts:
                    keep = [k for k in alive if depths[k] != index]
                    picked = rows(keep, alive)
                    hidden_states, encoder_hidden_states = hidden_states[picked], encoder_hidden_states[picked]
                    alive = keep
                temb = temb[rows(alive, list(range(len(states))))]
                parts = [[k for k in alive if k in feeders], [k for k in alive if k not in feeders]] if split \
                    else [alive]
                parts = [part for part in parts if part]
                if len(parts) == 1:
                    self.controller.use([states[k] for k in alive])
                    return forward(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                   temb=temb, image_rotary_emb=image_rotary_emb, attention_kwargs=attention_kwargs)
                outputs, order = [], [k for part in parts for k in part]
                for part in parts:
                    picked = rows(part, alive)
                    self.controller.use([states[k] for k in part])
                    outputs.append(forward(hidden_states=hidden_states[picked],
                                           encoder_hidden_states=encoder_hidden_states[picked], temb=temb[picked],
                                           image_rotary_emb=image_rotary_emb, attention_kwargs=attention_kwargs))
                joined = [torch.cat(pieces) for pieces in zip(*outputs)]
                if order != alive:  # back to batch order
                    back = rows(alive, order)
                    joined = [x[back] for x in joined]
                return tuple(joined)
            return run

        def refill(module, args):
            hidden = args[0]
            if hidden.shape[0] == len(states) * branches:
                return None
            full = hidden.new_zeros((len(states) * branches, *hidden.shape[1:]))
            full[rows(alive, list(range(len(states))))] = hidden
            return (full, *args[1:])

        blocks = self.transformer.transformer_blocks
        saved = [block.__dict__.get("forward") for block in blocks]
        handle = self.transformer.norm_final.register_forward_pre_hook(refill)
        try:
            for index, block in enumerate(blocks):
                block.forward = wrap(index, block.forward)
            yield
        finally:
            handle.remove()
            self.controller.use(states)
            for block, previous in zip(blocks, saved):
                if previous is None:
                    del block.forward
                else:
                    block.forward = previous

    def decode(self, latents: torch.Tensor, num_frames: int) -> np.ndarray:
        """Frames of final latents, as stock CogVideoXPipeline decodes them: float (F, H, W, 3) in [0, 1]."""
        _, extra = self._latent_frames(num_frames)
        video = self.pipe.decode_latents(latents[:, extra:])
        return self.pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
