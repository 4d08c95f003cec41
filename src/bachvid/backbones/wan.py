"""Wan (2.1 / 2.2): where its attention lives, its token layout, its RoPE, and how its pipeline runs.

Wan splits what CogVideoX does in one joint attention. Every block's `attn1` is self-attention
over video tokens only, with 3D RoPE applied inside attention: identity keys/values are injected
and matches read there, and since it has no text tokens its calls carry text_length 0 (plans and
identity records index video tokens from 0: `joint_text_length` is 0). `attn2` is cross-attention
from video queries to the umT5 text: masks are read there (`TextAttentionCall`), by the same rule.
Stock `WanPipeline` runs classifier-free guidance as two forwards per step, the conditional one
first; this backbone does the same and tells the controller which branch each forward is
(`Controller.branch`), so an identity's unconditional branch feeds its shots' unconditional one.
Wan 2.2 A14B switches from `transformer` (high noise) to `transformer_2` (low noise) at
`boundary_ratio`: both experts get bachvid's processors, and a step's records come from the
expert that ran it. Records are keyed by step and every video of a story runs the same
timesteps, so a shot's step runs the expert its identity's same step ran: injected keys/values,
kept outputs, masks and matches always pair an expert with itself (vital layers are layers of
the expert in use; the same indices serve both experts, which have the same depth). The
low-noise expert's guidance is `guidance_scale_2`, as in stock WanPipeline.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..method.controller import CONDITIONAL, UNCONDITIONAL, AttentionCall, Controller, TextAttentionCall, VideoState
from ..method.plan import Layers
from .cogvideox import BatchVideo

DEFAULT_TEXT_LENGTH = 512  # WanPipeline's max_sequence_length: the umT5 context Wan was trained with


@dataclass
class WanRope:
    """Wan's 3D RoPE table over the video grid, applied at arbitrary positions, as stock Wan applies
    it (interleaved pairs; float64 tables, so the product is computed in float64 and cast back)."""

    cos: torch.Tensor  # (Nv, D)
    sin: torch.Tensor

    def rotate(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        cos, sin = (self.cos, self.sin) if positions is None else (self.cos[positions], self.sin[positions])
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = cos[..., 0::2], sin[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x1 * sin + x2 * cos
        return out


class WanBachVidProcessor:
    """Replaces WanAttnProcessor: same projections and norms; self-attention goes to the controller
    as an AttentionCall (no text tokens), cross-attention as a TextAttentionCall."""

    def __init__(self, layer: int, controller: Controller):
        self.layer, self.controller = layer, controller

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attention_mask is not None:
            raise NotImplementedError("Wan does not use attention masks; bachvid does not support them")
        if attn.add_k_proj is not None:
            raise NotImplementedError("image-conditioned Wan (I2V, extra image keys in attn2) is not supported yet")
        cross = encoder_hidden_states is not None
        source = encoder_hidden_states if cross else hidden_states
        if getattr(attn, "fused_projections", False):
            if cross:
                query = attn.to_q(hidden_states)
                key, value = attn.to_kv(source).chunk(2, dim=-1)
            else:
                query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(source), attn.to_v(source)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)).transpose(1, 2) for x in (query, key, value))
        if cross:
            out = self.controller.attend_text(TextAttentionCall(self.layer, query, key, value))
        else:
            rope = None
            if rotary_emb is not None:
                cos, sin = rotary_emb  # (1, Nv, 1, D)
                rope = WanRope(cos[0, :, 0], sin[0, :, 0])
            out = self.controller.attend(AttentionCall(self.layer, query, key, value, 0, rope))
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class WanBackbone:
    """Everything bachvid needs to know about a diffusers WanPipeline (text to video)."""

    name = "wan"
    pipeline_classes = ("WanPipeline",)
    separate_cfg_forwards = True
    """CFG branches are separate transformer forwards (a timed step is two forwards with CFG)."""

    def __init__(self, pipe, guidance_scale_2: float | None = None):
        self.pipe = pipe
        self.guidance_scale_2 = guidance_scale_2
        """Wan 2.2's guidance for the low-noise expert (`transformer_2`), as stock WanPipeline's
        `guidance_scale_2`; None: the run's guidance_scale. Only for two-expert pipelines."""
        self.controller: Controller | None = None
        self._original_processors: list | None = None
        if len({len(t.blocks) for t in self.experts}) != 1:
            raise NotImplementedError("bachvid needs both Wan experts to have the same number of blocks")

    # Model facts -----------------------------------------------------------------------------
    @property
    def experts(self) -> list:
        """The transformers of the pipeline: one, or Wan 2.2's high-noise and low-noise experts."""
        return [t for t in (self.pipe.transformer, getattr(self.pipe, "transformer_2", None)) if t is not None]

    @property
    def transformer(self):
        return self.experts[0]

    def expert_at(self, t) -> torch.nn.Module:
        """The transformer stock WanPipeline runs at timestep t (`boundary_ratio` switches experts)."""
        ratio = self.pipe.config.boundary_ratio
        if ratio is None or self.pipe.transformer is None:
            return self.transformer
        boundary = ratio * self.pipe.scheduler.config.num_train_timesteps
        return self.pipe.transformer if t >= boundary else self.pipe.transformer_2

    def guidance_at(self, t, guidance_scale: float, guidance_scale_2: float | None = None) -> float:
        """The guidance stock WanPipeline applies at timestep t: `guidance_scale_2` (the run's, else
        this backbone's; None: the same) on the low-noise expert's steps, else `guidance_scale`."""
        ratio = self.pipe.config.boundary_ratio
        scale_2 = self.guidance_scale_2 if guidance_scale_2 is None else guidance_scale_2
        if ratio is None or scale_2 is None:
            return guidance_scale
        boundary = ratio * self.pipe.scheduler.config.num_train_timesteps
        return guidance_scale if t >= boundary else scale_2

    @property
    def num_layers(self) -> int:
        return len(self.transformer.blocks)

    @property
    def text_length(self) -> int:
        """Text tokens of a prompt (WanPipeline's max_sequence_length, 512; less if the tokenizer says so)."""
        limit = getattr(self.pipe.tokenizer, "model_max_length", None) or DEFAULT_TEXT_LENGTH
        return int(min(limit, DEFAULT_TEXT_LENGTH))

    joint_text_length = 0
    """Text tokens ahead of the video tokens in self-attention: none (text lives in `attn2`)."""

    @property
    def inner_dim(self) -> int:
        config = self.transformer.config
        return config.num_attention_heads * config.attention_head_dim

    def activation_bytes(self, num_frames: int, height: int, width: int, branches: int) -> int:
        """Memory one more video adds to a forward: its widest live tensors in a block (hidden
        states, q/k/v, attention output and the feed-forward's two widths) over its video tokens.
        The CFG branches run as separate forwards, so `branches` does not multiply the peak."""
        frames, h, w = self.token_grid(num_frames, height, width)
        config = self.transformer.config
        per_token = self.inner_dim * (1 + 3 + 1) + 2 * config.ffn_dim
        return frames * h * w * per_token * self.transformer.dtype.itemsize

    has_rope = True

    def default_layers(self) -> Layers:
        """The same rule as CogVideoX's until calibrated: vital layers the first 15/42 of the stack,
        mask and match layers the middle half."""
        n = self.num_layers
        vital = range(max(1, round(n * 15 / 42)))
        middle = range(n // 4, max(n // 4 + 1, (3 * n) // 4))
        return Layers(frozenset(vital), frozenset(middle), frozenset(middle))

    def default_settings(self) -> dict:
        """WanPipeline's own defaults: 81 frames at 480 x 832, guidance 5."""
        return {"num_frames": 81, "height": 480, "width": 832, "guidance_scale": 5.0}

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: the VAE's spatial factor x the patch size,
        and of 16 (WanPipeline's check)."""
        _, p_h, p_w = self.transformer.config.patch_size
        m = self.pipe.vae_scale_factor_spatial * max(p_h, p_w)
        return int(np.lcm(m, 16))

    @property
    def max_inference_steps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    def settings_errors(self, settings) -> list[str]:
        """What Wan refuses beyond the common checks: a frame count stock WanPipeline would round
        (it needs 4k + 1 frames: the VAE keeps the first frame alone and packs each 4 after it into
        one latent frame), and a `guidance_scale_2` it would refuse or could not use."""
        errors = []
        frames, temporal = settings.num_frames, self.pipe.vae_scale_factor_temporal
        if isinstance(frames, int) and frames >= 1 and (frames - 1) % temporal:
            below = (frames - 1) // temporal * temporal + 1
            errors.append(f"frames must be {temporal}k+1 for Wan (its VAE packs {temporal} frames into one latent "
                          f"frame after the first), got {frames}; use {below} or {below + temporal}")
        scale_2 = getattr(settings, "guidance_scale_2", None)
        scale_2 = self.guidance_scale_2 if scale_2 is None else scale_2  # the run's, else the backbone's
        if scale_2 is not None:
            if self.pipe.config.boundary_ratio is None:
                errors.append("guidance_scale_2 is for Wan 2.2's low-noise expert; this pipeline has no "
                              "boundary_ratio (one expert)")
            elif not isinstance(scale_2, (int, float)) or not np.isfinite(scale_2) or scale_2 < 0:
                errors.append(f"guidance_scale_2 must be a finite number >= 0, got {scale_2}")
        return errors

    def frames_drawn(self, num_frames: int) -> int:
        """The frame count stock WanPipeline runs for `num_frames` (it rounds to 4k + 1)."""
        temporal = self.pipe.vae_scale_factor_temporal
        if num_frames % temporal != 1:
            num_frames = num_frames // temporal * temporal + 1
        return max(num_frames, 1)

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(latent frames, tokens high, tokens wide) of the video token sequence."""
        p_t, p_h, p_w = self.transformer.config.patch_size
        latent_frames = (self.frames_drawn(num_frames) - 1) // self.pipe.vae_scale_factor_temporal + 1
        spatial = self.pipe.vae_scale_factor_spatial
        return latent_frames // p_t, height // spatial // p_h, width // spatial // p_w

    def latent_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (1, C, F, H, W) as one row per video token (N, C*p_t*p_h*p_w), in the token order
        the patch embedding makes (frame, row, column)."""
        p_t, p_h, p_w = self.transformer.config.patch_size
        b, c, f, h, w = latents.shape
        x = latents.reshape(b, c, f // p_t, p_t, h // p_h, p_h, w // p_w, p_w).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(b * (f // p_t) * (h // p_h) * (w // p_w), -1)

    def tokens_to_latents(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of `latent_tokens`, shaped like `like`."""
        p_t, p_h, p_w = self.transformer.config.patch_size
        b, c, f, h, w = like.shape
        x = tokens.reshape(b, f // p_t, h // p_h, w // p_w, c, p_t, p_h, p_w).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(like.shape)

    # Attention hooks -------------------------------------------------------------------------
    def install(self, controller: Controller) -> None:
        self.controller = controller
        if self._original_processors is None:
            self._original_processors = [t.attn_processors for t in self.experts]
        for transformer, originals in zip(self.experts, self._original_processors):
            processors = {}
            for name in originals:
                layer = int(name.split(".")[1])  # "blocks.{i}.attn1.processor" / "blocks.{i}.attn2.processor"
                processors[name] = WanBachVidProcessor(layer, controller)
            transformer.set_attn_processor(processors)

    def uninstall(self) -> None:
        if self._original_processors is not None:
            for transformer, originals in zip(self.experts, self._original_processors):
                transformer.set_attn_processor(originals)
            self._original_processors = None

    # Denoising -----------------------------------------------------------------------------
    def encode(self, prompt: str, do_cfg: bool, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt embeddings stock WanPipeline makes (zero-padded past the prompt's tokens), in
        the transformer's dtype."""
        embeds, negative = self.pipe.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance=do_cfg,
            max_sequence_length=self.text_length, device=self.pipe._execution_device,
        )
        dtype = self.transformer.dtype
        return embeds.to(dtype), None if negative is None else negative.to(dtype)

    def generator(self, seed: int) -> torch.Generator:
        """The generator stock WanPipeline would be given for this seed."""
        device = self.pipe._execution_device
        return torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)

    def initial_noise(self, generator: torch.Generator, num_frames: int, height: int, width: int,
                      dtype=None) -> torch.Tensor:
        """The initial latents stock WanPipeline draws from `generator`: always float32, as stock
        Wan keeps its latents (`dtype` is accepted for the common interface and ignored)."""
        return self.pipe.prepare_latents(1, self.transformer.config.in_channels, height, width,
                                         self.frames_drawn(num_frames), torch.float32,
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
        guidance_scale_2: float | None = None,
    ) -> list[torch.Tensor | None]:
        """Denoise several videos in one batch, step for step as stock WanPipeline does each alone
        (see `CogVideoXBackbone.denoise` for the contract); guidance_scale_2: the low-noise expert's
        guidance (None: this backbone's `guidance_scale_2`, else guidance_scale). Each step runs the conditional forward
        of all present videos, then, with CFG, their unconditional forward; each video has its own
        copy of the (multistep, stateful) scheduler."""
        pipe = self.pipe
        device = pipe._execution_device
        do_cfg = guidance_scale > 1.0
        run_steps = num_inference_steps if run_steps is None else run_steps
        pipe.scheduler.set_timesteps(num_inference_steps, device=device)
        pipe.scheduler.set_begin_index(0)
        timesteps = pipe.scheduler.timesteps
        dtype = self.transformer.dtype
        generators = [self.generator(v.seed) if v.replay is None else None for v in videos]
        latents = [self.initial_noise(g, num_frames, height, width) if g is not None else None for g in generators]
        schedulers = [copy.deepcopy(pipe.scheduler) if g is not None else None for g in generators]
        label = progress if isinstance(progress, str) else None
        for i in tqdm(range(run_steps), desc=label, disable=None if progress else True, leave=False):
            t = timesteps[i]
            model = self.expert_at(t)
            states = step_states(i)
            present = [j for j, (_, depth) in enumerate(states) if depth != 0]
            inputs = [latents[j] if videos[j].replay is None else videos[j].replay[i].to(device) for j in present]
            model_input = torch.cat(inputs).to(dtype)
            if pipe.config.expand_timesteps:  # Wan 2.2 TI2V: one timestep per token
                _, _, f, h, w = model_input.shape
                timestep = torch.full((f * (h // 2) * (w // 2),), 1.0, device=device) * t
                timestep = timestep.unsqueeze(0).expand(model_input.shape[0], -1)
            else:
                timestep = t.expand(model_input.shape[0])
            branches = [(CONDITIONAL, [videos[j].embeds for j in present])]
            if do_cfg:
                branches.append((UNCONDITIONAL, [videos[j].negative for j in present]))
            preds = {}
            self.controller.branches = 1
            for branch, embeds in branches:
                self.controller.branch = branch if do_cfg else None
                with self._sub_batches(model, [states[j][0] for j in present], [states[j][1] for j in present],
                                       apart):
                    preds[branch] = model(hidden_states=model_input, timestep=timestep,
                                          encoder_hidden_states=torch.cat(embeds), return_dict=False)[0]
            self.controller.branch = None
            for row, j in enumerate(present):
                if videos[j].replay is not None:
                    continue
                pred = preds[CONDITIONAL][row : row + 1]
                if do_cfg:
                    uncond = preds[UNCONDITIONAL][row : row + 1]
                    pred = uncond + self.guidance_at(t, guidance_scale, guidance_scale_2) * (pred - uncond)
                latents[j] = schedulers[j].step(pred, t, latents[j], return_dict=False)[0]
            if on_step_end is not None:
                stepped = list(latents)
                on_step_end(i, latents)
                for j, (before, after) in enumerate(zip(stepped, latents)):
                    if after is not before and hasattr(schedulers[j], "last_sample"):
                        # Latents set from outside (a latent lock) are taken as they are: UniPC's
                        # corrector would rebuild the next sample from the previous one and undo them.
                        schedulers[j].last_sample = None
        self.controller.clear()
        return latents

    @contextmanager
    def _sub_batches(self, model, states: list[VideoState], depths: list[int | None], apart: bool = False):
        """As `CogVideoXBackbone._sub_batches`, on Wan's blocks (one row per video: the CFG branches
        are separate forwards). A video of depth d leaves the batch before block d; with `apart`,
        each block runs the videos that feed others before, and apart from, the rest."""
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
            key = (tuple(videos), tuple(within))
            if key not in row_indices:
                row_indices[key] = torch.tensor([within.index(k) for k in videos]).to(device)
            return row_indices[key]

        def wrap(index, forward):
            def run(hidden_states, encoder_hidden_states, temb, rotary_emb):
                nonlocal alive
                if index in cuts:
                    keep = [k for k in alive if depths[k] != index]
                    hidden_states = hidden_states[rows(keep, alive)]
                    alive = keep
                # Unlike CogVideoX's blocks, Wan's do not hand the text on: every block gets the
                # whole batch's text and time embeddings, so each picks its live rows.
                everyone = list(range(len(states)))
                encoder_hidden_states = encoder_hidden_states[rows(alive, everyone)]
                temb = temb[rows(alive, everyone)]
                parts = [[k for k in alive if k in feeders], [k for k in alive if k not in feeders]] if split \
                    else [alive]
                parts = [part for part in parts if part]
                if len(parts) == 1:
                    self.controller.use([states[k] for k in alive])
                    return forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
                outputs, order = [], [k for part in parts for k in part]
                for part in parts:
                    picked = rows(part, alive)
                    self.controller.use([states[k] for k in part])
                    outputs.append(forward(hidden_states[picked], encoder_hidden_states[picked], temb[picked],
                                           rotary_emb))
                joined = torch.cat(outputs)
                if order != alive:
                    joined = joined[rows(alive, order)]
                return joined
            return run

        def refill(module, args):
            hidden = args[0]
            if hidden.shape[0] == len(states):
                return None
            full = hidden.new_zeros((len(states), *hidden.shape[1:]))
            full[rows(alive, list(range(len(states))))] = hidden
            return (full, *args[1:])

        blocks = model.blocks
        saved = [block.__dict__.get("forward") for block in blocks]
        handle = model.norm_out.register_forward_pre_hook(refill)
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
        """Frames of final latents, as stock WanPipeline decodes them: float (F, H, W, 3) in [0, 1]."""
        vae = self.pipe.vae
        latents = latents.to(vae.device, dtype=vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        video = vae.decode(latents / std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")[0]


# Random full-size Wan pipelines (bench) ---------------------------------------------------------

RANDOM_WAN = {
    # name: (bundled transformer config, experts)
    "wan2.1-t2v-1.3b": ("wan2.1-t2v-1.3b", 1),
    "wan2.1-t2v-14b": ("wan2.1-t2v-14b", 1),
    "wan2.2-t2v-a14b": ("wan2.1-t2v-14b", 2),  # two experts of the 14B shape, switched at boundary_ratio 0.875
}


def bundled_wan_config(name: str) -> dict:
    """A Wan config shipped with bachvid (configs/NAME.json: transformers of Wan2.1-T2V-1.3B, -14B and
    Wan2.2-TI2V-5B, the Wan 2.1 VAE), as diffusers' Wan-AI/*-Diffusers folders have them."""
    import json
    from importlib.resources import files

    return json.loads(files("bachvid").joinpath("configs", f"{name}.json").read_text())


def random_wan_pipeline(name: str = "wan2.1-t2v-1.3b", *, dtype=torch.bfloat16, device="cpu", num_layers=None,
                        num_heads=None, seed: int = 0):
    """A real Wan architecture with random weights, built on `device` in `dtype`: times and fills
    memory like the real weights (Wan2.1-T2V-1.3B: 30 layers of 12 x 128) without a download.

    The transformer(s) come from the bundled configs (num_layers / num_heads shrink them for CPU
    smoke runs), the VAE is Wan 2.1's; the text encoder is a one-layer umT5 of the real output
    width (4096) and the real 512-token context, since text encoding is a negligible part of a
    video's cost. wan2.2-t2v-a14b: two 14B-shaped experts (other weights) at boundary_ratio 0.875."""
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    from .tiny import BASIC_WORDS, build_word_tokenizer, random_modules, shrunk, wan_scheduler

    if name not in RANDOM_WAN:
        raise ValueError(f"no random Wan {name!r}; known: {', '.join(RANDOM_WAN)}")
    config_name, experts = RANDOM_WAN[name]
    config = shrunk(bundled_wan_config(config_name), num_layers, num_heads)
    with random_modules(dtype, device, seed):
        transformers = [WanTransformer3DModel.from_config(config).eval() for _ in range(experts)]
    with torch.device(device):
        vae = AutoencoderKLWan.from_config(bundled_wan_config("wan2.1-vae")).eval()  # float32, as Wan's examples
    for transformer in transformers:  # as from_pretrained(torch_dtype=...) keeps them: norms, time embedder in fp32
        keep = transformer._keep_in_fp32_modules or []
        for param_name, param in transformer.named_parameters():
            if any(part in keep for part in param_name.split(".")):
                param.data = param.data.float()
    tokenizer = build_word_tokenizer(BASIC_WORDS, model_max_length=DEFAULT_TEXT_LENGTH)
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=config["text_dim"], d_kv=64, d_ff=1024, num_layers=1, num_heads=8,
        relative_attention_num_buckets=32, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)).eval()
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.to(device, dtype), vae=vae,
        transformer=transformers[0], transformer_2=transformers[1] if experts == 2 else None,
        scheduler=wan_scheduler(), boundary_ratio=0.875 if experts == 2 else None)
