"""What a BachVid run will cost before it runs: from a CogVideoX or Wan transformer config alone.

Weights, activations, what each identity mode keeps, the extra attention injection adds and
the time of a story (identity + n shots) relative to plain generation of the same videos. No
weights are loaded and torch is not imported: the parameter count is analytic (the tests check
it against diffusers' own model) and the rest is a small model of where memory and FLOPs go,
checked against measurements on an H100 (BACHVID.md "Scale facts"; tests/test_budget.py).

Conventions. A *row* is one batch element of a transformer call (a video has one row per CFG
branch). A *unit* is one row's hidden states, (text + video tokens) x inner dim x dtype bytes.
Time is counted in *forwards*: one transformer forward of one video with all its CFG branches.
A forward costs the same per video at batch 2, 4 and 8 (0.916 / 0.923 / 0.928 s on an H100),
so rows batched together add up, and a part of a forward costs its share of the FLOPs.

What it leaves out: the text encoder and the VAE (their own memory, before and after the
denoising loop), mask reading (video queries x text keys: < 1% of a forward), token merge
(elementwise), kernel efficiency (injected attention runs split SDPA calls and gathers: on the
H100 1.50x plain time for 1.34x the query-key pairs) and host transfers of a cache kept off the
GPU. Where it models today's implementation rather than the method, the docstring says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .method.config import BachVidConfig, step_index

GIB = 2**30
CONFIG_DIR = Path(__file__).parent / "configs"
BUNDLED = {"cogvideox-5b": "cogvideox-5b.json", "cogvideox-2b": "cogvideox-2b.json",
           "wan2.1-t2v-1.3b": "wan2.1-t2v-1.3b.json", "wan2.1-t2v-14b": "wan2.1-t2v-14b.json",
           "wan2.2-t2v-a14b": "wan2.1-t2v-14b.json", "wan2.2-ti2v-5b": "wan2.2-ti2v-5b.json"}
BUNDLED_VAE = "cogvideox-vae.json"
WAN_VAE = {  # what plan needs of each bundled Wan's VAE (diffusers' AutoencoderKLWan config keys)
    "wan2.1-t2v-1.3b": "wan2.1-vae.json", "wan2.1-t2v-14b": "wan2.1-vae.json", "wan2.2-t2v-a14b": "wan2.1-vae.json",
    "wan2.2-ti2v-5b": {"z_dim": 48, "scale_factor_spatial": 16, "scale_factor_temporal": 4},  # Wan 2.2's VAE
}
WAN_EXPERTS = {"wan2.2-t2v-a14b": 2}  # Wan 2.2 A14B: two 14B experts, both resident
WAN_SIZES = {8: (81, 480, 832), 16: (121, 704, 1280)}  # WanPipeline's defaults; TI2V-5B's 720p example
MODES = ("cache", "lockstep", "replay")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
GATED_ACTIVATIONS = ("geglu", "swiglu")  # diffusers FeedForward: in-projection twice as wide


class BudgetError(ValueError):
    """A model config or a run that cannot be estimated, with a message for the user."""


# The model -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tokens:
    text: int
    grid: tuple[int, int, int]  # (token frames, tokens high, tokens wide)
    latent_elements: int  # one video's latent (channels x latent frames x h/8 x w/8)
    joint: bool = True  # text tokens in self-attention (CogVideoX); Wan's text lives in cross-attention

    @property
    def video(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def total(self) -> int:
        """Tokens of self-attention: [text ; video] (CogVideoX), or video only (Wan)."""
        return (self.text if self.joint else 0) + self.video


class _Backbone:
    """What both transformers' cost models share: width, and a forward's FLOPs from its parts
    (each subclass gives `embed_flops`, `block_flops` and `patch_volume`)."""

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    def forward_flops(self, tokens: Tokens) -> int:
        head = 2 * tokens.video * self.dim * self.patch_volume * self.out_channels
        return self.embed_flops(tokens) + self.layers * self.block_flops(tokens).total + head

    def prefix_fraction(self, blocks: int, tokens: Tokens) -> float:
        """Share of a forward spent embedding and running the first `blocks` blocks (replay's price)."""
        if blocks <= 0:
            return 0.0
        return (self.embed_flops(tokens) + blocks * self.block_flops(tokens).total) / self.forward_flops(tokens)


@dataclass(frozen=True)
class Transformer(_Backbone):
    """The shape facts of a diffusers `CogVideoXTransformer3DModel` that cost anything."""

    separate_cfg = False  # CFG branches are rows of one forward
    experts = 1
    default_guidance = 6.0  # CogVideoXPipeline's

    layers: int
    heads: int
    head_dim: int
    in_channels: int
    out_channels: int
    text_embed_dim: int
    time_embed_dim: int
    text_length: int
    patch_size: int
    patch_size_t: int | None
    rope: bool
    learned_positions: bool
    activation: str
    attention_bias: bool
    patch_bias: bool
    norm_affine: bool
    ofs_embed_dim: int | None
    sample_frames: int
    sample_height: int  # latent pixels (x spatial_compression for the video)
    sample_width: int
    temporal_compression: int
    spatial_compression: int = 8

    @classmethod
    def from_config(cls, config: dict, vae: dict | None = None) -> "Transformer":
        """From a transformer `config.json` (missing keys take diffusers' defaults) and optionally
        the VAE's, whose block count sets the spatial compression."""
        name = config.get("_class_name", "CogVideoXTransformer3DModel")
        if name != "CogVideoXTransformer3DModel":
            raise BudgetError(f"plan knows CogVideoX and Wan transformers only, this config is a {name}")
        get = config.get
        try:
            spatial = 2 ** (len(vae["block_out_channels"]) - 1) if vae and "block_out_channels" in vae else 8
            return cls(
                layers=int(get("num_layers", 30)), heads=int(get("num_attention_heads", 30)),
                head_dim=int(get("attention_head_dim", 64)), in_channels=int(get("in_channels", 16)),
                out_channels=int(get("out_channels") or get("in_channels", 16)),
                text_embed_dim=int(get("text_embed_dim", 4096)), time_embed_dim=int(get("time_embed_dim", 512)),
                text_length=int(get("max_text_seq_length", 226)), patch_size=int(get("patch_size", 2)),
                patch_size_t=get("patch_size_t"), rope=bool(get("use_rotary_positional_embeddings", False)),
                learned_positions=bool(get("use_learned_positional_embeddings", False)),
                activation=str(get("activation_fn", "gelu-approximate")),
                attention_bias=bool(get("attention_bias", True)), patch_bias=bool(get("patch_bias", True)),
                norm_affine=bool(get("norm_elementwise_affine", True)), ofs_embed_dim=get("ofs_embed_dim"),
                sample_frames=int(get("sample_frames", 49)), sample_height=int(get("sample_height", 60)),
                sample_width=int(get("sample_width", 90)),
                temporal_compression=int(get("temporal_compression_ratio", 4)), spatial_compression=spatial,
            )
        except (TypeError, ValueError) as error:
            raise BudgetError(f"not a usable CogVideoX transformer config: {error}") from None

    @property
    def ff_dim(self) -> int:
        return 4 * self.dim  # CogVideoXBlock's FeedForward: inner_dim = 4 x dim

    @property
    def ff_in_dim(self) -> int:
        return 2 * self.ff_dim if self.activation in GATED_ACTIVATIONS else self.ff_dim

    @property
    def patch_volume(self) -> int:
        return self.patch_size * self.patch_size * (self.patch_size_t or 1)

    def parameter_count(self) -> int:
        """Every parameter of the diffusers model, summed module by module."""
        d, t, hd = self.dim, self.time_embed_dim, self.head_dim

        def linear(i: int, o: int, bias: bool = True) -> int:
            return i * o + (o if bias else 0)

        norm = 2 * d if self.norm_affine else 0  # a LayerNorm's weight and bias
        block = (
            2 * (linear(t, 6 * d) + norm)  # norm1, norm2: adaLN-zero modulation and LayerNorm
            + 3 * linear(d, d, self.attention_bias) + linear(d, d)  # q, k, v; out (always biased)
            + 2 * 2 * hd  # LayerNorm of q and of k per head
            + linear(d, self.ff_in_dim) + linear(self.ff_dim, d)  # feed-forward
        )
        if self.patch_size_t is None:
            patch = self.in_channels * d * self.patch_size**2 + (d if self.patch_bias else 0)  # Conv2d
        else:
            patch = linear(self.in_channels * self.patch_volume, d)
        ofs = 2 * linear(self.ofs_embed_dim, self.ofs_embed_dim) if self.ofs_embed_dim else 0
        return (patch + linear(self.text_embed_dim, d) + linear(d, t) + linear(t, t) + ofs
                + self.layers * block + norm  # norm_final
                + linear(t, 2 * d) + norm  # norm_out
                + linear(d, self.patch_volume * self.out_channels))  # proj_out

    def position_table_elements(self) -> int:
        """The sin-cos (2B) or learned position table: a buffer, resident beside the weights."""
        if self.rope and not self.learned_positions:
            return 0
        frames = (self.sample_frames - 1) // self.temporal_compression + 1
        patches = (self.sample_height // self.patch_size) * (self.sample_width // self.patch_size) * frames
        return (self.text_length + patches) * self.dim

    def tokens(self, frames: int, height: int, width: int) -> Tokens:
        """Token grid as the pipeline builds it: latent frames (F-1)//4+1, spatial /(8 x patch)."""
        step = self.spatial_compression * self.patch_size
        if height % step or width % step:
            raise BudgetError(f"height and width must be multiples of {step} for this model, got {height}x{width}")
        latent_frames = (frames - 1) // self.temporal_compression + 1
        token_frames = latent_frames if self.patch_size_t is None else -(-latent_frames // self.patch_size_t)
        latent_pixels = (height // self.spatial_compression) * (width // self.spatial_compression)
        return Tokens(self.text_length, (token_frames, height // step, width // step),
                      self.out_channels * latent_frames * latent_pixels)

    # FLOPs (multiply-adds x 2), per row --------------------------------------------------------
    def block_flops(self, tokens: Tokens) -> "BlockFlops":
        n, d = tokens.total, self.dim
        return BlockFlops(projections=8 * n * d * d,  # q, k, v and out: 2 n d^2 each
                          attention=4 * n * n * d,  # q k^T and p v
                          feed_forward=2 * n * d * self.ff_in_dim + 2 * n * self.ff_dim * d)

    def embed_flops(self, tokens: Tokens) -> int:
        patches = 2 * tokens.video * self.in_channels * self.patch_volume * self.dim
        return patches + 2 * tokens.text * self.text_embed_dim * self.dim

    # Activations -------------------------------------------------------------------------------
    def activation_units(self, tokens: Tokens, rows: int, dtype_bytes: int, injected: bool = False,
                         extra_key_share: float = 0.0) -> float:
        """Peak live activations of one transformer call, in units (one row's hidden states).

        The largest live set of a block under BachVid's processor, per row:
        - feed-forward: the caller's input, the attention output, the residual stream, the FF input,
          the FF in-projection and its activation: 4 + 2 x ff_dim/dim (12 for CogVideoX);
        - RoPE (5B layout), at the key's rotation: the caller's input, the normed input, [text; video],
          q, k, v, the rotated q, the rotated-half copy and three fp32 temporaries of the video part
          (diffusers' apply_rotary_emb): 7 + fv x (1 + 3 x 4/bytes), fv = video share of the tokens;
          without RoPE the attention part peaks lower (6 + SDPA output + its reshaped copy + out);
        - injection (today's split SDPA): the 6 + rotated q, k before it, the output buffer, and one
          row's own + extra keys and values at a time.
        SDPA itself takes O(N) memory (flash / memory-efficient kernels with 4-D inputs).
        """
        fv = tokens.video / tokens.total
        feed_forward = rows * (4 + (self.ff_in_dim + self.ff_dim) / self.dim)
        if self.rope:
            attention = rows * (7 + fv * (1 + 3 * max(4, dtype_bytes) / dtype_bytes))
        else:
            attention = rows * 9
        if injected:
            attention = max(attention, rows * 9 + 2 * (1 + extra_key_share * fv))
        return max(feed_forward, attention)

    def unit_bytes(self, tokens: Tokens, dtype_bytes: int) -> int:
        return tokens.total * self.dim * dtype_bytes


@dataclass(frozen=True)
class WanTransformer(_Backbone):
    """The shape facts of a diffusers `WanTransformer3DModel` (Wan 2.1 / 2.2) that cost anything.

    Wan differs from CogVideoX where it costs: self-attention (`attn1`) runs over video tokens
    only, text enters through cross-attention (`attn2`, video queries x 512 umT5 tokens); a unit is
    a row's video hidden states; CFG runs as two forwards per step, so a call has one row per
    video; Wan 2.2 A14B keeps two experts resident (parameters and weights count both; a forward
    runs one)."""

    layers: int
    heads: int
    head_dim: int
    in_channels: int
    out_channels: int
    text_embed_dim: int
    freq_dim: int
    ffn_dim: int
    patch: tuple[int, int, int]
    cross_attn_norm: bool
    image_dim: int | None
    added_kv_proj_dim: int | None
    pos_embed_seq_len: int | None
    text_length: int = 512  # WanPipeline's max_sequence_length
    sample_frames: int = 81
    sample_height: int = 60  # latent pixels (x spatial_compression for the video)
    sample_width: int = 104
    temporal_compression: int = 4
    spatial_compression: int = 8
    experts: int = 1

    rope = True
    learned_positions = False
    separate_cfg = True
    default_guidance = 5.0  # WanPipeline's

    @classmethod
    def from_config(cls, config: dict, vae: dict | None = None, experts: int = 1) -> "WanTransformer":
        """From a transformer `config.json` (missing keys take diffusers' defaults) and optionally the
        VAE's (`scale_factor_spatial`: 8 for Wan 2.1's VAE, 16 for Wan 2.2's)."""
        get = config.get
        try:
            patch = tuple(int(p) for p in get("patch_size", (1, 2, 2)))
            if len(patch) != 3:
                raise ValueError(f"patch_size {list(patch)} is not 3D")
            spatial = int((vae or {}).get("scale_factor_spatial") or 8)
            temporal = int((vae or {}).get("scale_factor_temporal") or 4)
            frames, height, width = WAN_SIZES.get(spatial, WAN_SIZES[8])
            return cls(
                layers=int(get("num_layers", 40)), heads=int(get("num_attention_heads", 40)),
                head_dim=int(get("attention_head_dim", 128)), in_channels=int(get("in_channels", 16)),
                out_channels=int(get("out_channels") or get("in_channels", 16)),
                text_embed_dim=int(get("text_dim", 4096)), freq_dim=int(get("freq_dim", 256)),
                ffn_dim=int(get("ffn_dim", 13824)), patch=patch, cross_attn_norm=bool(get("cross_attn_norm", True)),
                image_dim=get("image_dim"), added_kv_proj_dim=get("added_kv_proj_dim"),
                pos_embed_seq_len=get("pos_embed_seq_len"), sample_frames=frames,
                sample_height=height // spatial, sample_width=width // spatial, temporal_compression=temporal,
                spatial_compression=spatial, experts=experts,
            )
        except (TypeError, ValueError) as error:
            raise BudgetError(f"not a usable Wan transformer config: {error}") from None

    @property
    def patch_volume(self) -> int:
        return self.patch[0] * self.patch[1] * self.patch[2]

    def expert_parameter_count(self) -> int:
        """Every parameter of one diffusers WanTransformer3DModel, summed module by module."""
        d, f = self.dim, self.ffn_dim

        def linear(i: int, o: int, bias: bool = True) -> int:
            return i * o + (o if bias else 0)

        attention = 4 * linear(d, d) + 2 * d  # q, k, v, out; RMSNorm of q and of k (across heads)
        cross = attention
        if self.added_kv_proj_dim is not None:  # I2V: image keys and values in attn2
            cross += 2 * linear(self.added_kv_proj_dim, d) + d
        block = (attention + cross + (2 * d if self.cross_attn_norm else 0)  # norm2 (affine); norm1/3 are not
                 + linear(d, f) + linear(f, d)  # feed-forward (gelu-approximate)
                 + 6 * d)  # scale_shift_table
        image = 0
        if self.image_dim is not None:  # WanImageEmbedding: norms, a 1x feed-forward, optional positions
            i = self.image_dim
            image = 2 * i + linear(i, i) + linear(i, d) + 2 * d + (self.pos_embed_seq_len or 0) * i
        return (self.in_channels * self.patch_volume * d + d  # patch embedding (Conv3d)
                + linear(self.freq_dim, d) + linear(d, d)  # time embedder
                + linear(d, 6 * d)  # time projection
                + linear(self.text_embed_dim, d) + linear(d, d)  # text embedder
                + image
                + self.layers * block
                + linear(d, self.patch_volume * self.out_channels)  # proj_out (norm_out has no weights)
                + 2 * d)  # scale_shift_table of the output

    def parameter_count(self) -> int:
        """All experts' parameters (Wan 2.2 A14B keeps both resident)."""
        return self.experts * self.expert_parameter_count()

    def position_table_elements(self) -> int:
        return 0  # 3D RoPE: its cos/sin tables are step state (fp32), not weights

    def tokens(self, frames: int, height: int, width: int) -> Tokens:
        """Token grid as WanPipeline builds it: 4k+1 frames -> k+1 latent frames, spatial /(VAE x patch)."""
        _, p_h, p_w = self.patch
        step = self.spatial_compression * max(p_h, p_w)
        multiple = math.lcm(step, 16)
        if height % multiple or width % multiple:
            raise BudgetError(f"height and width must be multiples of {multiple} for this model, got {height}x{width}")
        t = self.temporal_compression
        if (frames - 1) % t:
            below = (frames - 1) // t * t + 1
            raise BudgetError(f"frames must be {t}k+1 for Wan, got {frames}; use {below} or {below + t}")
        latent_frames = (frames - 1) // t + 1
        latent_pixels = (height // self.spatial_compression) * (width // self.spatial_compression)
        grid = (latent_frames // self.patch[0], height // self.spatial_compression // p_h,
                width // self.spatial_compression // p_w)
        return Tokens(self.text_length, grid, self.out_channels * latent_frames * latent_pixels, joint=False)

    # FLOPs (multiply-adds x 2), per row --------------------------------------------------------
    def block_flops(self, tokens: Tokens) -> "BlockFlops":
        n, t, d = tokens.video, tokens.text, self.dim
        return BlockFlops(projections=8 * n * d * d + 4 * n * d * d + 4 * t * d * d,  # attn1 q k v o; attn2 q o, k v
                          attention=4 * n * n * d + 4 * n * t * d,  # self-attention; video x text
                          feed_forward=4 * n * d * self.ffn_dim)

    def embed_flops(self, tokens: Tokens) -> int:
        patches = 2 * tokens.video * self.in_channels * self.patch_volume * self.dim
        return patches + 2 * tokens.text * (self.text_embed_dim + self.dim) * self.dim

    # Activations -------------------------------------------------------------------------------
    ATTENTION_UNITS = 12.2
    """Per row, the attention part of a block under BachVid's processor: residual stream, normed
    input, q/k/v, the rotated q and k and fp32 RoPE temporaries (Wan applies its fp32 tables to
    bf16 halves), the output. Counted tensor by tensor on a bf16 forward (tests/test_budget.py)."""
    FEED_FORWARD_BASE = 4.2
    """Per row, the feed-forward part besides its two ffn_dim-wide tensors (in-projection and GELU):
    residual stream, normed input and Wan's fp32 norm and gating temporaries. Counted likewise."""

    def activation_units(self, tokens: Tokens, rows: int, dtype_bytes: int, injected: bool = False,
                         extra_key_share: float = 0.0) -> float:
        """Peak live activations of one transformer call, in units (one row's video hidden states):
        the larger of the feed-forward's (4.2 + 2 ffn_dim/dim per row: 15.9 for 1.3B, 9.6 for 14B)
        and attention's (12.2 per row); injection (split SDPA) adds one row's own and extra keys
        and values at a time. The RoPE tables are step state."""
        feed_forward = rows * (self.FEED_FORWARD_BASE + 2 * self.ffn_dim / self.dim)
        attention = rows * self.ATTENTION_UNITS
        if injected:
            attention += 2 * (1 + extra_key_share)
        return max(feed_forward, attention)

    def unit_bytes(self, tokens: Tokens, dtype_bytes: int) -> int:
        return tokens.video * self.dim * dtype_bytes


@dataclass(frozen=True)
class BlockFlops:
    projections: int
    attention: int
    feed_forward: int

    @property
    def total(self) -> int:
        return self.projections + self.attention + self.feed_forward


# The schedule --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """BachVid's layers and steps for one model and run length (as bachvid.method.plan.Schedule counts them)."""

    steps: int
    vital: tuple[int, ...]
    mask: tuple[int, ...]
    match: tuple[int, ...]
    inject: range
    mask_step: int
    match_step: int
    merge_steps: tuple[int, ...]  # injected steps whose merge weight is > 0
    shared_background: bool

    @classmethod
    def of(cls, config: BachVidConfig, layers: int, steps: int) -> "Schedule":
        vital, middle = default_layers(layers)

        def pick(given, default, what):
            chosen = tuple(sorted(set(default if given is None else given)))
            if not chosen or not all(0 <= x < layers for x in chosen):
                raise BudgetError(f"{what} layers {list(chosen)} do not fit a model of {layers} layers")
            return chosen

        last = steps - 1
        inject = range(step_index(config.inject_start, steps), step_index(config.inject_end, steps))
        start, d0, d1 = (step_index(f, steps) for f in
                         (config.merge_start, config.merge_decay_start, config.merge_decay_end))

        def merge_weight(s: int) -> float:
            if not config.token_merge or s < start or s >= d1:
                return 0.0
            if s < d0:
                return config.merge_strength
            return config.merge_strength * 0.5 * (1 + math.cos(math.pi * (s - d0) / (d1 - d0)))

        return cls(steps, pick(config.vital_layers, vital, "vital"), pick(config.mask_layers, middle, "mask"),
                   pick(config.match_layers, middle, "match"), inject,
                   min(step_index(config.tau_mask, steps), last), min(step_index(config.tau_match, steps), last),
                   tuple(s for s in inject if merge_weight(s) > 0), config.shared_background)

    @property
    def prerun_steps(self) -> int:
        return max(self.mask_step, self.match_step) + 1

    def kept_outputs(self) -> int:
        """(step, layer) attention outputs an identity keeps: vital layers on merge steps, match
        layers at the match step."""
        merges = set(self.merge_steps)
        return sum(len(set(self.vital if s in merges else ()) | set(self.match if s == self.match_step else ()))
                   for s in range(self.steps))

    def replay_depths(self) -> tuple[list[int], list[int]]:
        """Blocks the identity must be re-run through at each pre-run step and each real-run step:
        down to the last layer anything is read from (0: not needed)."""
        deepest_vital = max(self.vital) + 1
        prerun = []
        for s in range(self.prerun_steps):
            depth = deepest_vital if (s in self.inject and self.shared_background) else 0
            if s == self.match_step:
                depth = max(depth, max(self.match) + 1)
            prerun.append(depth)
        return prerun, [deepest_vital if s in self.inject else 0 for s in range(self.steps)]


def default_layers(layers: int) -> tuple[range, range]:
    """CogVideoX backbone defaults: vital = the first round(15/42 L) layers (the paper's 15 of 42),
    mask and match = the middle half."""
    return range(max(1, round(layers * 15 / 42))), range(layers // 4, max(layers // 4 + 1, (3 * layers) // 4))


# The run -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """One story: an identity video and `shots` later videos, `group` shots per batch."""

    frames: int = 49
    height: int = 480
    width: int = 720
    steps: int = 50
    guidance: float = 6.0
    dtype_bytes: int = 2
    shots: int = 3
    group: int | None = None  # None: all shots in one batch
    foreground: float = 0.3
    """Share of video tokens that are the character (in the identity and in each shot)."""
    background_both: float = 0.6
    """Share of video tokens that are background in the identity and not foreground now."""

    def __post_init__(self):
        if min(self.frames, self.height, self.width, self.steps, self.shots) < 1:
            raise BudgetError("frames, height, width, steps and shots must be >= 1")
        if self.group is not None and not 1 <= self.group <= self.shots:
            raise BudgetError(f"group must lie in 1..{self.shots} (the number of shots), got {self.group}")
        if not 0 <= self.foreground <= 1 or not 0 <= self.background_both <= 1:
            raise BudgetError("foreground and background_both are shares of the video tokens, in [0, 1]")

    @property
    def branches(self) -> int:
        return 2 if self.guidance > 1 else 1  # diffusers: CFG when guidance_scale > 1

    @property
    def group_size(self) -> int:
        return self.group or self.shots

    @property
    def groups(self) -> int:
        return -(-self.shots // self.group_size)


# The answer ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModeCost:
    mode: str
    identity_bytes: int  # kept across steps (cache: on its storage device)
    step_peak_bytes: int  # weights + activations of the largest call + identity + step state
    matching_peak_bytes: int  # weights + identity + point-matching working set
    forwards: float  # the whole story, in forwards
    time_ratio: float  # forwards / vanilla's

    @property
    def peak_bytes(self) -> int:
        return max(self.step_peak_bytes, self.matching_peak_bytes)


@dataclass(frozen=True)
class Budget:
    model: str
    workload: Workload
    schedule: Schedule
    parameters: int
    weight_bytes: int  # parameters + position table, in the run's dtype
    tokens: Tokens
    activation_bytes: int  # one plain forward of one video (all CFG rows)
    step_state_bytes: int  # latents, text embeddings and RoPE tables around the transformer
    block_flops: BlockFlops  # per row
    forward_flops: int  # per row
    vital_fraction: float  # share of a forward up to the last vital layer
    prerun_pairs_ratio: float  # attention pairs of an injected pre-run layer / plain
    run_pairs_ratio: float  # same for the real run
    prerun_step_ratio: float  # a pre-run step with injection / a plain step
    injected_step_ratio: float  # a real-run step with injection / a plain step
    matching_forwards: float  # point matching, once per shot, in forwards (its FLOPs)
    vanilla: ModeCost
    modes: dict[str, ModeCost] = field(default_factory=dict)
    experts: int = 1  # resident transformers (Wan 2.2 A14B: 2; parameters count both, a forward runs one)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["schedule"].update(inject=[self.schedule.inject.start, self.schedule.inject.stop],
                                prerun_steps=self.schedule.prerun_steps, kept_outputs=self.schedule.kept_outputs())
        data["tokens"].update(video=self.tokens.video, total=self.tokens.total)
        data["block_flops"]["total"] = self.block_flops.total
        data["workload"].update(branches=self.workload.branches, group=self.workload.group_size,
                                groups=self.workload.groups)
        for cost in [data["vanilla"], *data["modes"].values()]:
            cost["peak_bytes"] = max(cost["step_peak_bytes"], cost["matching_peak_bytes"])
        return data


def estimate(model: Transformer | WanTransformer, work: Workload, config: BachVidConfig | None = None,
             name: str = "cogvideox") -> Budget:
    """The budget of one story (time: see `_story_forwards`).

    Memory per mode, what stays for the whole story plus the largest transient:
    - identity kept: cache = keys (before RoPE) and values of text + video tokens at the vital
      layers x injected steps x CFG rows, plus attention outputs of the video tokens at the vital
      layers on merge steps and at the match layers at the match step; replay = one latent per
      step, the text embeddings and the timesteps; lockstep = the pre-run steps' latents only
      (the identity is replayed for the pre-runs, then denoised live beside each group, one
      layer's K/V alive at a time);
    - step peak = weights + kept + step state + the largest call's activations: a group's shots,
      with the identity's rows in lockstep and replay;
    - matching peak = the step peak + point matching's working set, streamed during the reading
      step (per shot a video x video similarity sum).
    """
    config = config or BachVidConfig()
    schedule = Schedule.of(config, model.layers, work.steps)
    tokens = model.tokens(work.frames, work.height, work.width)
    b, rows = work.dtype_bytes, work.branches
    call = 1 if model.separate_cfg else rows  # rows a video adds to one transformer call
    g = work.group_size
    unit = model.unit_bytes(tokens, b)
    params = model.parameter_count()
    weights = (params + model.position_table_elements()) * b
    state = (2 * tokens.video * model.head_dim * 4  # RoPE cos/sin tables (fp32)
             + rows * tokens.text * model.text_embed_dim * b  # prompt embeddings
             + 4 * rows * tokens.latent_elements * 4)  # latents, model input and output, guidance (fp32)

    # Attention pairs per row and injected layer; fractions of video tokens as documented in Workload.
    nv, n = tokens.video, tokens.total
    fg, bg = work.foreground, (1 - work.foreground)
    prerun_extra = (bg * nv) ** 2 if schedule.shared_background else 0.0  # the identity's mask stands in
    run_extra = (bg * nv * work.background_both * nv if schedule.shared_background else 0.0) + (fg * nv) ** 2
    extra_key_share = max((fg, *((bg, work.background_both) if schedule.shared_background else ())))
    forward = model.forward_flops(tokens)
    per_layer = 4 * model.dim / forward  # a forward's share per extra query-key pair and layer
    prerun_extra_fwd = len(schedule.vital) * prerun_extra * per_layer
    run_extra_fwd = len(schedule.vital) * run_extra * per_layer
    matching = 2 * nv * nv * model.dim * len(schedule.match) / forward

    def activations(videos: int, injected: bool) -> int:
        return round(model.activation_units(tokens, videos * call, b, injected, extra_key_share) * unit)

    # What an identity keeps.
    kv_entry = rows * 2 * n * model.dim * b  # keys (before RoPE) and values, per step and layer
    out_entry = rows * nv * model.dim * b  # attention output of the video tokens
    latent = tokens.latent_elements * b
    text = rows * tokens.text * model.text_embed_dim * b
    mask = nv  # one bool per video token
    kept = {
        "cache": len(schedule.inject) * len(schedule.vital) * kv_entry + schedule.kept_outputs() * out_entry + mask,
        "replay": work.steps * (latent + 8) + text + mask,
        "lockstep": schedule.prerun_steps * (latent + 8) + text + mask,
    }

    # Point matching, streamed during the reading step (MatchAccumulator): per shot of the group a
    # video x video similarity sum (float16 for half-precision models, else float32), plus one
    # layer's fp32-normalised features of a pair and a chunk of fp32 similarities.
    sum_bytes = nv * nv * (2 if b == 2 else 4)

    def matching_set() -> int:
        return g * sum_bytes + 2 * nv * model.dim * 4 + min(config.chunk_size, nv) * nv * 4

    forwards = _story_forwards(model, tokens, schedule, work, prerun_extra_fwd, run_extra_fwd, matching)
    vanilla_forwards = (1 + work.shots) * work.steps
    vanilla_step = weights + activations(1, False) + state
    vanilla = ModeCost("vanilla", 0, vanilla_step, 0, vanilla_forwards, 1.0)
    modes = {}
    for mode in MODES:
        if mode == "cache":
            peak_call = activations(g, True)
        elif mode == "replay" or g == 1:
            # The live identity's rows run apart inside each block (modes.run_story): the block
            # peaks at one part's rows, while the identity's layer (keys, values, output) and the
            # other part's hidden states wait.
            peak_call = activations(max(g, 1), True) + (3 + g) * call * unit
        else:  # one batch: the identity's rows ride beside the group's
            peak_call = activations(g + 1, True)
        step = weights + kept[mode] + state + max(activations(1, False), peak_call)
        match = step + matching_set()
        modes[mode] = ModeCost(mode, kept[mode], step, match, forwards[mode], forwards[mode] / vanilla_forwards)

    return Budget(
        model=name, workload=work, schedule=schedule, parameters=params, weight_bytes=weights, tokens=tokens,
        activation_bytes=activations(1, False), step_state_bytes=state,
        block_flops=model.block_flops(tokens), forward_flops=forward,
        vital_fraction=model.prefix_fraction(max(schedule.vital) + 1, tokens),
        prerun_pairs_ratio=1 + prerun_extra / n**2, run_pairs_ratio=1 + run_extra / n**2,
        prerun_step_ratio=1 + prerun_extra_fwd, injected_step_ratio=1 + run_extra_fwd,
        matching_forwards=matching, vanilla=vanilla, modes=modes, experts=model.experts,
    )


def _story_forwards(model: Transformer, tokens: Tokens, s: Schedule, work: Workload,
                    prerun_extra: float, run_extra: float, matching: float) -> dict[str, float]:
    """Forwards of a story of an identity and n shots in G groups of g, V steps, P pre-run steps.

    Common to every mode, per shot: P pre-run steps + V real steps, plus the extra attention
    of injected steps (vital layers only; `prerun_extra`, `run_extra` per step) and the point
    matching once (`matching`). Then:
    - vanilla  = (1 + n) V.
    - cache    = V (identity, recorded) + shots.
    - replay   = V (identity, its latents stored) + shots + G x R, where R re-runs the identity's
                 rows only through the blocks up to the deepest layer read at that step (last vital
                 layer on injected steps, last match layer at the match step), i.e. the sum of
                 those prefix fractions over the pre-run's and the real run's steps.
    - lockstep = P (identity alone, pre-run steps, its latents kept) + shots
                 + G x (R_prerun + V): per group the pre-runs replay the identity as above, then the
                 identity is denoised again, in full, in the same batch as the group's real runs.
    Time ratio = forwards / vanilla's.
    """
    n, v, p = work.shots, work.steps, s.prerun_steps
    injected_prerun = sum(1 for step in range(p) if step in s.inject) if s.shared_background else 0
    shots = n * (p + v + injected_prerun * prerun_extra + len(s.inject) * run_extra + matching)
    prerun_depths, run_depths = s.replay_depths()
    replay_prerun = sum(model.prefix_fraction(d, tokens) for d in prerun_depths)
    replay_run = sum(model.prefix_fraction(d, tokens) for d in run_depths)
    return {
        "cache": v + shots,
        "replay": v + shots + work.groups * (replay_prerun + replay_run),
        "lockstep": p + shots + work.groups * (replay_prerun + v),
    }


# Loading configs -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    """A transformer config found by name or path, with what else its folder says."""

    name: str
    transformer: Transformer
    defaults: dict  # the folder's bachvid.json (steps, guidance, size, "bachvid" knobs), or {}

    def bachvid_config(self) -> BachVidConfig:
        knobs = dict(self.defaults.get("bachvid", {}))
        for layers in ("vital_layers", "mask_layers", "match_layers"):
            if knobs.get(layers) is not None:
                knobs[layers] = tuple(knobs[layers])
        try:
            return BachVidConfig(**knobs)
        except (TypeError, ValueError) as error:
            raise BudgetError(f"{self.name}: bachvid.json has an unusable BachVid setting: {error}") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise BudgetError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise BudgetError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise BudgetError(f"{path} holds no JSON object")
    return data


def load_model(name_or_path: str) -> ModelSource:
    """A bundled name (cogvideox-5b, cogvideox-2b, wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.2-t2v-a14b,
    wan2.2-ti2v-5b), a transformer config.json, or a model folder (diffusers pipeline folder with
    transformer/config.json, or a transformer folder)."""
    if name_or_path in WAN_VAE:
        vae = WAN_VAE[name_or_path]
        vae = _read_json(CONFIG_DIR / vae) if isinstance(vae, str) else vae
        return ModelSource(name_or_path, WanTransformer.from_config(
            _read_json(CONFIG_DIR / BUNDLED[name_or_path]), vae, WAN_EXPERTS.get(name_or_path, 1)), {})
    if name_or_path in BUNDLED:
        return ModelSource(name_or_path, Transformer.from_config(_read_json(CONFIG_DIR / BUNDLED[name_or_path]),
                                                                 _read_json(CONFIG_DIR / BUNDLED_VAE)), {})
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        candidates = [path / "transformer" / "config.json", path / "config.json"]
        config_file = next((c for c in candidates if c.is_file()), None)
        if config_file is None:
            raise BudgetError(f"{path} has no transformer/config.json or config.json")
    elif path.is_file():
        config_file = path
    else:
        raise BudgetError(f"no model config {name_or_path!r}: give {' or '.join(BUNDLED)}, "
                          f"a config.json or a model folder")
    root = config_file.parent.parent if config_file.parent.name == "transformer" else config_file.parent
    vae = _read_json(root / "vae" / "config.json") if (root / "vae" / "config.json").is_file() else None
    defaults = _read_json(root / "bachvid.json") if (root / "bachvid.json").is_file() else {}
    config = _read_json(config_file)
    if config.get("_class_name") == "WanTransformer3DModel":
        # Wan 2.2 A14B folders hold a second expert (transformer_2) beside the first
        index = _read_json(root / "model_index.json") if (root / "model_index.json").is_file() else {}
        experts = 2 if isinstance(index.get("transformer_2"), list) and index["transformer_2"][0] else 1
        return ModelSource(str(name_or_path), WanTransformer.from_config(config, vae, experts), defaults)
    if "num_layers" not in config or "num_attention_heads" not in config:
        raise BudgetError(f"{config_file} is not a CogVideoX transformer config (no num_layers / num_attention_heads)")
    return ModelSource(str(name_or_path), Transformer.from_config(config, vae), defaults)
