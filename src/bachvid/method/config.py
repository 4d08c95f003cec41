"""Every knob of BachVid in one object, with the defaults and why.

Steps are given as fractions of the denoising schedule (0 = first step, 1 = past the last), so
one config works for 50 steps on CogVideoX-5B and for 20 on a small model: step index =
round(fraction * num_steps). Layer choices default to `None`, meaning "the backbone's
default", because the right layers depend on the model (see calibration).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

from .prompt import FOREGROUND_SPANS

SHOT_MASKS = ("attention", "matches")  # BachVidConfig.shot_mask
MASK_RULES = ("fg_over_bg", "otsu")  # BachVidConfig.mask_rule (method/mask.py's foreground_tokens)


@dataclass(frozen=True)
class BachVidConfig:
    # Switches
    enabled: bool = True
    """False: every shot is generated on its own, exactly as the stock diffusers pipeline would."""
    shared_background: bool = True
    """Inject the identity's background too; False switches backgrounds and keeps only the character."""
    token_merge: bool = True
    """Blend matched foreground outputs toward the identity's after attention (CharaConsist's adaptive merge)."""
    foreground_injection: bool = True
    """Inject the matched identity character tokens (point-tracking attention); False is an ablation
    that keeps background injection and token merge only."""
    background_merge: float = 0.0
    """Beyond the paper: token merge also blends background-in-both tokens toward the identity's
    token at the same position, with this multiple of the merge weight (the paper's merge blends
    matched character tokens only). 0 is the paper. Needs shared_background and token_merge."""
    background_latents_until: float = 0.0
    """Beyond the paper: until this fraction of the schedule, a shot's latents at background-in-both
    tokens are set to the identity's latents of the same step after every step (see
    `latent_lock`). 0 is the paper. Needs shared_background; assumes a still camera."""
    background_latents_weight: float = 1.0
    """How far the background lock moves those latents toward the identity's after each step: 1 sets
    them (blended-latent inpainting), w < 1 blends (1 - w) * shot + w * identity, a softer pull that
    leaves the model room to move the character into them."""
    background_lock_agreement: float = 0.0
    """Beyond the paper: where the background lock holds. 0: background-in-both tokens (outside the
    identity's mask and the shot's). a > 0: every video token whose latent at the end of the shot's
    pre-run lies within a x the median token distance of the identity's latent at that step, masks
    ignored (what the pre-run already shares with the identity, background or not). Works with shots
    on the identity's seed (`shot_seeds="identity"`): latents drawn from other noise do not agree, so
    a shot on its own seed gets no background lock."""
    background_injection_window: int | None = None
    """Beyond the paper: where an injected background key may be seen from. None (the paper): every
    background query sees the identity's whole shared background. r >= 0: the frame is cut into tiles of
    r + 1 tokens a side and a tile's queries see only the identity's background keys within r tokens of
    the tile (in every frame), so the injection can copy the identity's background only from near the
    query's place (a model whose attention spreads over the injected keys copies an average otherwise)."""
    character_latents_until: float = 0.0
    """Beyond the paper: until this fraction of the schedule, a shot's matched character tokens are
    set to the identity's latent tokens they match after every step (see `latent_lock`). 0 is the
    paper."""
    injected_logit_bias: float = 0.0
    """Added to the attention logits of every injected identity key. 0 is the paper's plain
    concatenation; b > 0 weighs each injected key e^b times (beyond the paper: a strength knob)."""
    foreground_logit_bias: float | None = None
    """The foreground injection's own logit bias (None: injected_logit_bias, the paper's 0). Beyond
    the paper: b < 0 weakens the character's injected keys alone (e^b), for backbones where the
    full-strength foreground injection costs actions (measured on the toy Wan model)."""

    # Layers (None: backbone default)
    vital_layers: tuple[int, ...] | None = None
    """Layers where identity keys/values are injected. Paper: first 15 of CogVideoX-5B's 42."""
    mask_layers: tuple[int, ...] | None = None
    """Layers whose video->text attention makes the foreground mask."""
    match_layers: tuple[int, ...] | None = None
    """Layers whose attention outputs are compared to match points."""

    # Steps (fractions of the schedule)
    tau_mask: float = 0.2
    """When the foreground mask is read (paper: step 10 of 50)."""
    tau_match: float = 0.2
    """When point matches are read."""
    inject_start: float = 0.0
    inject_end: float = 0.8
    """Injection runs at steps in [inject_start, inject_end)."""
    merge_strength: float = 0.8
    merge_start: float = 0.02
    merge_decay_start: float = 0.22
    merge_decay_end: float = 0.62
    """Merge weight a(step): merge_strength from merge_start, cosine decay to 0 between the two
    decay points (CharaConsist: 0.8 from step 1, decaying over steps 11..31 of 50)."""

    # Mask and matching
    mask_foreground: str = "after_background"
    """Text tokens that stand for the foreground: 'after_background' (character + action,
    CharaConsist) or 'character'."""
    mask_rule: str = "fg_over_bg"
    """Which tokens the mask read keeps: 'fg_over_bg' (the paper: those attending at least as much to
    the foreground's words as to the background's) or 'otsu' (beyond the paper: those whose foreground
    share fg / (fg + bg) lies above the video's own Otsu threshold; for models whose attention ranks the
    character well but whose fg = bg line is off, see `bachvid analyze --mask-rule`)."""
    mask_open_kernel: int = 3
    """Erosion then dilation per latent frame with a k x k window; 1 turns cleaning off."""
    shot_mask: str = "attention"
    """Where a shot's foreground mask comes from: 'attention' (the paper: its own video-to-text
    attention in its pre-run) or 'matches' (beyond the paper: the identity's mask carried through
    the shot's matches, each token taking the identity mask at the token it matches; the
    identity's mask is then the only one read from text attention)."""
    prerun_stride: int = 1
    """Coarse pre-run: shots' pre-runs take every k-th step of the schedule (a k-times coarser
    schedule reaching the same noise level at the mask/match step), so they cost ~1/k of the
    paper's pre-run (11 of 50 steps on CogVideoX-5B). 1 is the paper's pre-run. Used only where k
    divides the steps and the read steps; else the largest stride that does."""
    match_threshold: float = 0.5
    """Cosine similarity a match needs to count (CharaConsist: 0.5)."""
    chunk_size: int = 2048
    """Video queries per chunk when reading masks and matches: bounds memory at real scale."""

    extra: dict = field(default_factory=dict, compare=False)
    """Free-form notes carried into manifests (not read by the method)."""

    def __post_init__(self):
        for name in ("tau_mask", "tau_match", "inject_start", "inject_end", "merge_start",
                     "merge_decay_start", "merge_decay_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a fraction of the schedule and must lie in [0, 1], got {value}")
        if self.inject_end < self.inject_start:
            raise ValueError("inject_end must not come before inject_start")
        if not self.merge_decay_start <= self.merge_decay_end:
            raise ValueError("merge_decay_start must not come after merge_decay_end")
        if self.mask_foreground not in FOREGROUND_SPANS:
            raise ValueError(f"mask_foreground must be {' or '.join(map(repr, FOREGROUND_SPANS))}")
        if self.mask_rule not in MASK_RULES:
            raise ValueError(f"mask_rule must be {' or '.join(map(repr, MASK_RULES))}, not {self.mask_rule!r}")
        if self.shot_mask not in SHOT_MASKS:
            raise ValueError(f"shot_mask must be {' or '.join(map(repr, SHOT_MASKS))}, not {self.shot_mask!r}")
        if self.mask_open_kernel < 1 or self.mask_open_kernel % 2 == 0:
            raise ValueError("mask_open_kernel must be an odd number >= 1")
        if not math.isfinite(self.injected_logit_bias):
            raise ValueError("injected_logit_bias must be a finite number")
        if self.foreground_logit_bias is not None and not math.isfinite(self.foreground_logit_bias):
            raise ValueError("foreground_logit_bias must be a finite number (or None)")
        if not 0.0 <= self.background_merge <= 1.0:
            raise ValueError("background_merge is a multiple of the merge weight and must lie in [0, 1]")
        for name in ("background_latents_until", "character_latents_until"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a fraction of the schedule and must lie in [0, 1]")
        if not 0.0 < self.background_latents_weight <= 1.0:
            raise ValueError("background_latents_weight is a blend weight and must lie in (0, 1]")
        if not (math.isfinite(self.background_lock_agreement) and self.background_lock_agreement >= 0):
            raise ValueError("background_lock_agreement is a multiple of the median token distance and must be >= 0")
        if self.background_injection_window is not None and self.background_injection_window < 0:
            raise ValueError("background_injection_window is a number of tokens and must be >= 0 (or None)")
        if self.prerun_stride < 1:
            raise ValueError("prerun_stride must be >= 1")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")

    def replace(self, **changes) -> "BachVidConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def step_index(fraction: float, num_steps: int) -> int:
    """The denoising step a schedule fraction stands for."""
    return min(num_steps, max(0, round(fraction * num_steps)))


def read_step(fraction: float, num_steps: int) -> int:
    """The step at which a reading scheduled at `fraction` (tau_mask, tau_match) happens: its
    step_index, at most the last step (a reading needs a step to happen in)."""
    return min(step_index(fraction, num_steps), num_steps - 1)


def parse_knob(text: str) -> tuple[str, object]:
    """'name=value' (a command line's --set) -> (name, value); the value is read as JSON (numbers,
    lists, true/false) or kept as text, lists become tuples."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in BachVidConfig.__dataclass_fields__ or name == "extra":
        raise ValueError(f"--set {text!r}: expected KNOB=VALUE with a BachVidConfig knob")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return name, tuple(parsed) if isinstance(parsed, list) else parsed
