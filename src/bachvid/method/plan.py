"""Per-step plans: what BachVid does at each attention layer of one denoising step.

A `StepPlan` is a small, explicit state object: which layers the identity keeps, which layers
feed the mask and the matches, which identity tokens are injected for which queries and where
their keys are positioned, and which outputs are merged. `PlanMaker` derives the plans of the
identity pass, the pre-run and the real run of a shot from the config and what is known so far
(identity mask, current mask, matches). The controller only carries plans out.

Token indices in plans are sequence indices (text tokens first, then video tokens); positions
are video-grid indices whose RoPE an injected key takes (-1: none, for text tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .config import BachVidConfig, read_step, step_index
from .match import Matches


@dataclass(frozen=True)
class Injection:
    """Identity tokens that one set of current queries may see, and where their keys sit."""

    queries: torch.Tensor  # long (Q,) current sequence indices
    sources: torch.Tensor  # long (M,) identity sequence indices
    positions: torch.Tensor  # long (M,) video-grid positions for RoPE, -1 = no RoPE
    bias: float = 0.0  # added to these keys' attention logits (0: the paper's plain concatenation)
    at_source: bool = False
    """Every key sits at its own position (sources = positions + text length, text unrotated): its
    rotated key is the identity's own, which a live identity in the same call already has."""
    kind: str = "background"  # "background", "foreground" or "copy": for probes that report per kind


@dataclass(frozen=True)
class TokenMerge:
    """out[current] <- (1 - w) out[current] + w identity_out[identity], on video tokens."""

    current: torch.Tensor  # long (P,) video token indices
    identity: torch.Tensor  # long (P,) identity video token indices
    weight: torch.Tensor  # float (P,)


@dataclass(frozen=True)
class StepPlan:
    step: int
    keep_key_value: frozenset[int] = frozenset()
    keep_output: frozenset[int] = frozenset()
    read_mask: frozenset[int] = frozenset()
    read_match: frozenset[int] = frozenset()
    inject_layers: frozenset[int] = frozenset()
    injections: tuple[Injection, ...] = ()
    merge_layers: frozenset[int] = frozenset()
    merge: TokenMerge | None = None

    @property
    def is_plain(self) -> bool:
        return not (self.keep_key_value or self.keep_output or self.read_mask or self.read_match
                    or (self.inject_layers and self.injections) or (self.merge_layers and self.merge is not None))


PLAIN = StepPlan(step=-1)


@dataclass(frozen=True)
class Layers:
    vital: frozenset[int]
    mask: frozenset[int]
    match: frozenset[int]

    @classmethod
    def resolve(cls, config: BachVidConfig, defaults: "Layers", num_layers: int) -> "Layers":
        def pick(given, default):
            layers = frozenset(default if given is None else given)
            bad = sorted(x for x in layers if not 0 <= x < num_layers)
            if bad:
                raise ValueError(f"layers {bad} do not exist: the model has layers 0..{num_layers - 1}")
            if not layers:
                raise ValueError("a layer set must not be empty")
            return layers

        return cls(pick(config.vital_layers, defaults.vital), pick(config.mask_layers, defaults.mask),
                   pick(config.match_layers, defaults.match))


@dataclass(frozen=True)
class Schedule:
    """The config's step fractions turned into step indices for one run length."""

    num_steps: int
    mask_step: int
    match_step: int
    inject: range
    merge_weights: tuple[float, ...] = field(repr=False)

    @classmethod
    def of(cls, config: BachVidConfig, num_steps: int) -> "Schedule":
        mask_step, match_step = read_step(config.tau_mask, num_steps), read_step(config.tau_match, num_steps)
        inject = range(step_index(config.inject_start, num_steps), step_index(config.inject_end, num_steps))
        start, d0, d1 = (step_index(f, num_steps) for f in
                         (config.merge_start, config.merge_decay_start, config.merge_decay_end))
        weights = []
        for s in range(num_steps):
            if not config.token_merge or s < start or s >= d1:
                weights.append(0.0)
            elif s < d0:
                weights.append(config.merge_strength)
            else:
                weights.append(config.merge_strength * 0.5 * (1 + math.cos(math.pi * (s - d0) / (d1 - d0))))
        return cls(num_steps, mask_step, match_step, inject, tuple(weights))

    @property
    def prerun_steps(self) -> int:
        """Steps the pre-run needs so that both the mask and the matches have been read."""
        return max(self.mask_step, self.match_step) + 1


def background_injection(identity_fg: torch.Tensor, current_fg: torch.Tensor, text_length: int,
                         bias: float = 0.0) -> Injection:
    """Identity background at the same positions, for current background queries only."""
    identity_fg, current_fg = identity_fg.reshape(-1), current_fg.reshape(-1)
    positions = (~identity_fg & ~current_fg).nonzero(as_tuple=True)[0]
    queries = (~current_fg).nonzero(as_tuple=True)[0] + text_length
    return Injection(queries=queries, sources=positions + text_length, positions=positions, bias=bias,
                     at_source=True)


def background_injections(identity_fg: torch.Tensor, current_fg: torch.Tensor, text_length: int,
                          bias: float = 0.0, window: int | None = None) -> tuple[Injection, ...]:
    """The background injection, whole (window None, the paper) or by place: (F, h, w) masks cut into
    tiles of `window` + 1 tokens a side, each tile's background queries seeing the identity's shared
    background within `window` tokens of the tile, in every frame (`BachVidConfig.background_injection_window`)."""
    if window is None:
        return (background_injection(identity_fg, current_fg, text_length, bias),)
    if identity_fg.dim() != 3:
        raise ValueError(f"a windowed background injection needs (frames, h, w) masks, got {tuple(identity_fg.shape)}")
    identity_fg, current_fg = identity_fg.bool(), current_fg.bool()
    both, free = ~identity_fg & ~current_fg, ~current_fg
    _, h, w = identity_fg.shape
    side, injections = window + 1, []
    for y in range(0, h, side):
        for x in range(0, w, side):
            tile = torch.zeros(h, w, dtype=torch.bool, device=identity_fg.device)
            tile[y:y + side, x:x + side] = True
            near = torch.zeros(h, w, dtype=torch.bool, device=identity_fg.device)
            near[max(0, y - window):y + side + window, max(0, x - window):x + side + window] = True
            queries = (free & tile).reshape(-1).nonzero(as_tuple=True)[0]
            positions = (both & near).reshape(-1).nonzero(as_tuple=True)[0]
            if queries.numel() and positions.numel():
                injections.append(Injection(queries=queries + text_length, sources=positions + text_length,
                                            positions=positions, bias=bias, at_source=True))
    return tuple(injections)


def foreground_injection(current_fg: torch.Tensor, current: torch.Tensor, identity: torch.Tensor,
                         text_length: int, bias: float = 0.0) -> Injection:
    """Matched identity tokens, re-positioned at their current token (point-tracking attention)."""
    queries = current_fg.reshape(-1).nonzero(as_tuple=True)[0] + text_length
    return Injection(queries=queries, sources=identity + text_length, positions=current, bias=bias, kind="foreground")


def full_copy_injection(num_tokens: int, text_length: int) -> Injection:
    """Every query sees a copy of every identity token at its own position (the doubled-keys check)."""
    everything = torch.arange(num_tokens)
    positions = torch.cat([torch.full((text_length,), -1), torch.arange(num_tokens - text_length)])
    return Injection(queries=everything, sources=everything, positions=positions, at_source=True, kind="copy")


class PlanMaker:
    """Builds the step plans of the identity pass, a shot's pre-run and a shot's real run."""

    def __init__(self, config: BachVidConfig, layers: Layers, num_steps: int, text_length: int):
        self.config, self.layers, self.text_length = config, layers, text_length
        self.schedule = Schedule.of(config, num_steps)

    def _reads(self, step: int) -> dict:
        s = self.schedule
        return {
            "read_mask": self.layers.mask if step == s.mask_step else frozenset(),
            "read_match": self.layers.match if step == s.match_step else frozenset(),
        }

    def identity_plans(self) -> Callable[[int], StepPlan]:
        """The identity pass keeps K/V where shots inject, outputs where they merge or match."""
        s, layers = self.schedule, self.layers

        def plan(step: int) -> StepPlan:
            injecting = step in s.inject
            merging = injecting and s.merge_weights[step] > 0
            keep_output = (layers.vital if merging else frozenset()) | (
                layers.match if step == s.match_step else frozenset())
            return StepPlan(step=step, keep_key_value=layers.vital if injecting else frozenset(),
                            keep_output=keep_output, read_mask=self._reads(step)["read_mask"])

        return plan

    def mask_plans(self) -> Callable[[int], StepPlan]:
        """An identity that keeps nothing (its shots read it live later): only its mask is read."""
        return lambda step: StepPlan(step=step, read_mask=self._reads(step)["read_mask"])

    def source_plans(self, prerun: bool) -> Callable[[int], StepPlan]:
        """An identity running in the shots' batch (lockstep or replay) keeps, at each step, what
        the shots' pre-runs (prerun=True) or real runs read in that same step, and nothing else."""
        s, layers = self.schedule, self.layers

        def plan(step: int) -> StepPlan:
            injecting = step in s.inject
            if prerun:
                keep_kv = layers.vital if injecting and self.config.shared_background else frozenset()
                keep_output = layers.match if step == s.match_step else frozenset()
            else:
                keep_kv = layers.vital if injecting else frozenset()
                keep_output = layers.vital if injecting and s.merge_weights[step] > 0 else frozenset()
            return StepPlan(step=step, keep_key_value=keep_kv, keep_output=keep_output)

        return plan

    def prerun_plans(self, identity_fg: torch.Tensor) -> Callable[[int], StepPlan]:
        """Reads the shot's mask and matches; before its own mask exists, the identity's stands in."""
        injections = ()
        if self.config.shared_background:
            injections = background_injections(identity_fg, identity_fg, self.text_length,
                                               self.config.injected_logit_bias, self.config.background_injection_window)

        reads_mask = self.config.shot_mask == "attention"  # "matches": the mask is carried, not read

        def plan(step: int) -> StepPlan:
            injecting = step in self.schedule.inject
            reads = self._reads(step)
            return StepPlan(step=step, inject_layers=self.layers.vital if injecting else frozenset(),
                            injections=injections, read_match=reads["read_match"],
                            read_mask=reads["read_mask"] if reads_mask else frozenset())

        return plan

    def shot_plans(self, identity_fg: torch.Tensor, current_fg: torch.Tensor,
                   matches: Matches) -> Callable[[int], StepPlan]:
        """The real run: background and point-tracked foreground injection, then token merge."""
        s = self.schedule
        current, identity, similarity = matches.foreground_pairs(current_fg, identity_fg, self.config.match_threshold)
        injections = []
        bias = self.config.injected_logit_bias
        foreground_bias = bias if self.config.foreground_logit_bias is None else self.config.foreground_logit_bias
        if self.config.shared_background:
            injections.extend(background_injections(identity_fg, current_fg, self.text_length, bias,
                                                    self.config.background_injection_window))
        if current.numel() and self.config.foreground_injection:
            injections.append(foreground_injection(current_fg, current, identity, self.text_length, foreground_bias))
        injections = tuple(injections)
        # Matches may live on the GPU while masks stay on the host: merge indices and weights
        # follow the matches (device and dtype), so the token merge never mixes devices.
        background = torch.zeros(0, dtype=torch.long, device=current.device)
        if self.config.shared_background and self.config.background_merge > 0:
            both = ~identity_fg.reshape(-1) & ~current_fg.reshape(-1)
            background = both.to(current.device).nonzero(as_tuple=True)[0]

        def plan(step: int) -> StepPlan:
            if step not in s.inject:
                return StepPlan(step=step)
            weight = s.merge_weights[step]
            merge = None
            if weight > 0 and (current.numel() or background.numel()):
                bg_weight = torch.full((background.numel(),), weight * self.config.background_merge,
                                       dtype=similarity.dtype, device=similarity.device)
                merge = TokenMerge(current=torch.cat([current, background]), identity=torch.cat([identity, background]),
                                   weight=torch.cat([weight * similarity.clamp(0, 1), bg_weight]))
            return StepPlan(step=step, inject_layers=self.layers.vital, injections=injections,
                            merge_layers=self.layers.vital if merge is not None else frozenset(), merge=merge)

        return plan
