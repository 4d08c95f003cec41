"""Carries out each video's step plan at every attention call.

Backbones hand over one `AttentionCall` per attention layer: queries, keys (before RoPE) and
values of [text ; video] tokens for a batch of videos, plus the backbone's RoPE. A backbone whose
self-attention holds video tokens only (Wan) hands over text_length 0 there, and its separate
video-to-text cross-attention as a `TextAttentionCall`, where masks are read. The batch holds
one or more videos, each as `branches` consecutive rows (CFG: [uncond, cond]); `videos` lists
their states in batch order. A backbone that runs the CFG branches as separate forwards (Wan) sets
`branch` for each: its calls hold one row per video, of that branch. For every video the
controller applies RoPE, keeps what an identity record must keep, builds the extra key groups of the plan's injections, runs the
injected attention, reads masks and matches, and merges outputs. An identity denoised or
replayed in the same batch feeds its `LiveIdentity` before the shots of the same call read it.
It knows nothing about which model it runs in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from .attention import KeyGroup, injected_attention
from .identity import CONDITIONAL, UNCONDITIONAL, IdentityRecord  # noqa: F401  (branch names, used by backbones)
from .mask import TextAttentionReader
from .match import MatchAccumulator
from .plan import PLAIN, Injection, StepPlan, TokenMerge


class Rope(Protocol):
    def rotate(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate (..., M, D) video queries/keys by the RoPE of grid positions (all, in order, if None)."""


@dataclass
class AttentionCall:
    layer: int
    query: torch.Tensor  # (B, H, N, D), before RoPE
    key: torch.Tensor  # (B, H, N, D), before RoPE
    value: torch.Tensor  # (B, H, N, D)
    text_length: int  # the first text_length tokens are text
    rope: Rope | None


@dataclass
class TextAttentionCall:
    """Cross-attention from video queries to text keys (a backbone whose text is not in its
    self-attention). The controller reads masks here and runs it as stock attention."""

    layer: int
    query: torch.Tensor  # (B, H, Nv, D) video queries
    key: torch.Tensor  # (B, H, T, D) text keys
    value: torch.Tensor  # (B, H, T, D)


@dataclass
class VideoState:
    """One video of the batch: its plan for the current step and where its readings go."""

    plan: StepPlan = PLAIN
    source: IdentityRecord | None = None  # identity answering the plan's injections, merges and matches
    target: object | None = None  # identity record this video feeds (CachedIdentity or LiveIdentity)
    mask_reader: TextAttentionReader | None = None  # MaskReader, or a research recorder
    matcher: MatchAccumulator | None = None
    probe: Callable[..., None] | None = None
    """Research hook: probe(step, layer, query, key, groups) sees the conditional row's rotated
    (H, N, D) queries and own keys and its injected key groups, at every injected attention call."""


@dataclass
class Controller:
    """The videos of the current batch, in batch order, and how many CFG rows each has."""

    videos: list[VideoState] = field(default_factory=lambda: [VideoState()])
    branches: int = 1  # set by the backbone for each forward: rows per video
    branch: int | None = None
    """Set by the backbone for each forward. None: each video's rows are all its CFG branches in
    one call. UNCONDITIONAL or CONDITIONAL: the backbone runs the branches as separate forwards and
    this one holds that branch only (one row per video); identity records file what they keep under
    it, a shot's branch reads the identity's same branch, and masks and matches are read in the
    conditional forward only."""
    _device_copies: dict = field(default_factory=dict, repr=False)

    def use(self, videos: list[VideoState]) -> None:
        self.videos = list(videos)

    def clear(self) -> None:
        self.videos = [VideoState()]
        self.branch = None
        self._device_copies.clear()

    @property
    def single(self) -> VideoState:
        """The state of a one-video run."""
        if len(self.videos) != 1:
            raise RuntimeError(f"the controller runs {len(self.videos)} videos, not one")
        return self.videos[0]

    def _rows(self, index: int) -> slice:
        return slice(index * self.branches, (index + 1) * self.branches)

    @property
    def _conditional(self) -> bool:
        """Whether this call holds the conditional branch (the last row of each video), where
        masks and matches are read."""
        return self.branch is None or self.branch == CONDITIONAL

    def attend_text(self, call: TextAttentionCall) -> torch.Tensor:
        """Video-to-text cross-attention: stock attention; masks read on the plans' mask layers."""
        if call.query.shape[0] != len(self.videos) * self.branches:
            raise RuntimeError(f"batch of {call.query.shape[0]} rows for {len(self.videos)} videos "
                               f"x {self.branches} branches")
        if self._conditional:
            for i, video in enumerate(self.videos):
                if call.layer in video.plan.read_mask:
                    cond = self._rows(i).stop - 1
                    video.mask_reader.add(call.layer, call.query[cond], call.key[cond], step=video.plan.step)
        return F.scaled_dot_product_attention(call.query, call.key, call.value)

    def attend(self, call: AttentionCall) -> torch.Tensor:
        layer, t = call.layer, call.text_length
        if call.query.shape[0] != len(self.videos) * self.branches:
            raise RuntimeError(f"batch of {call.query.shape[0]} rows for {len(self.videos)} videos "
                               f"x {self.branches} branches")
        query, key, value = call.query, call.key, call.value
        if call.rope is not None:
            query = torch.cat([query[:, :, :t], call.rope.rotate(query[:, :, t:])], dim=2)
            key = torch.cat([key[:, :, :t], call.rope.rotate(key[:, :, t:])], dim=2)

        # Identities first: what they keep here, shots of the same call read.
        rotated = {}  # id(record) -> the rotated keys of an identity in this batch
        for i, video in enumerate(self.videos):
            if layer in video.plan.keep_key_value:
                rows = self._rows(i)
                video.target.keep_key_value(video.plan.step, layer, call.key[rows], call.value[rows],
                                            **self._branch_kw)
                rotated[id(video.target)] = key[rows]

        groups = [[] for _ in range(call.query.shape[0])]
        for i, video in enumerate(self.videos):
            plan = video.plan
            if layer in plan.inject_layers and plan.injections:
                row_groups = self._key_groups(video, call, rotated.get(id(video.source)))
                for row, groups_of_row in zip(range(*self._rows(i).indices(len(groups))), row_groups):
                    groups[row] = groups_of_row
        out = injected_attention(query, key, value, groups)
        video_out = out[:, :, t:]
        for i, video in enumerate(self.videos):
            cond = self._rows(i).stop - 1
            if video.probe is not None and groups[cond] and self._conditional:
                video.probe(video.plan.step, layer, query[cond], key[cond], groups[cond])

        for i, video in enumerate(self.videos):
            if layer in video.plan.keep_output:
                video.target.keep_output(video.plan.step, layer, video_out[self._rows(i)], **self._branch_kw)
        for i, video in enumerate(self.videos):
            plan, rows = video.plan, self._rows(i)
            cond = rows.stop - 1  # masks and matches come from the conditional (last) CFG branch
            # Masks are read where video queries meet text keys: here when the call holds text
            # tokens, else in the backbone's `TextAttentionCall`.
            if layer in plan.read_mask and t and self._conditional:
                video.mask_reader.add(layer, query[cond, :, t:], key[cond, :, :t], step=plan.step)
            if layer in plan.read_match and self._conditional:
                identity = video.source.output(plan.step, layer, **self._branch_kw)[-1]
                video.matcher.add(layer, _features(video_out[cond]), _features(identity))
            if plan.merge is not None and layer in plan.merge_layers:
                # In place: `out` is this call's own tensor, and a shot's rows are read by no one
                # else (identities keep their own rows' outputs; they have no merge).
                self._merge(video, layer, out[rows], t)
        for video in self.videos:  # readers are done with their sources' tensors of this layer
            if video.source is not None:
                video.source.end_call(video.plan.step, layer)
        return out

    @property
    def _branch_kw(self) -> dict:
        """The branch an identity record files this call's tensors under (none for a joint call)."""
        return {} if self.branch is None else {"branch": self.branch}

    def _key_groups(self, video: VideoState, call: AttentionCall,
                    rotated_key: torch.Tensor | None = None) -> list[list[KeyGroup]]:
        """Per CFG branch, the plan's key groups. `rotated_key`: the source identity's keys as its
        own attention in this call rotated them, reused for injections whose keys sit at source."""
        plan = video.plan
        id_key, id_value = video.source.key_value(plan.step, call.layer, **self._branch_kw)
        if id_key.shape[0] != self.branches:
            raise ValueError(
                f"the identity has {id_key.shape[0]} CFG branches but this run has {self.branches}: "
                "generate the identity and the shots with the same guidance setting"
            )
        device = call.key.device
        groups = [[] for _ in range(self.branches)]
        for injection in plan.injections:
            queries, sources, positions, all_video = self._on_device(injection, device)
            if injection.at_source and rotated_key is not None:
                keys = rotated_key[:, :, sources]
            else:
                keys = self._position(id_key.to(device)[:, :, sources], positions, all_video, call.rope)
            values = id_value.to(device)[:, :, sources]
            for b in range(self.branches):  # one query tensor for all branches: they run as one call
                groups[b].append(KeyGroup(queries, keys[b], values[b], injection.bias, sources, injection.kind))
        return groups

    def _on_device(self, injection: Injection, device) -> tuple:
        """An injection's index sets on the attention's device (and whether all its keys are video
        tokens), moved once per run, not per layer and step: a host-to-device copy of a pageable
        tensor waits for the GPU's queue to drain, and per layer that stall adds up."""
        cached = self._device_copies.get(id(injection))
        if cached is None or cached[0] is not injection or cached[1].device != device:
            all_video = bool((injection.positions >= 0).all())
            cached = (injection, *(x.to(device) for x in (injection.queries, injection.sources, injection.positions)),
                      all_video)
            self._device_copies[id(injection)] = cached
        return cached[1:]

    def _merge_on_device(self, merge: TokenMerge, device, dtype) -> tuple:
        """A token merge's indices and weights on the device, moved once per step (see `_on_device`)."""
        cached = self._device_copies.get(id(merge))
        if cached is None or cached[0] is not merge or cached[1].device != device:
            cached = (merge, merge.current.to(device), merge.identity.to(device), merge.weight.to(device, dtype)[:, None])
            self._device_copies[id(merge)] = cached
        return cached[1:]

    @staticmethod
    def _position(keys: torch.Tensor, positions: torch.Tensor, all_video: bool, rope: Rope | None) -> torch.Tensor:
        """Give injected keys the RoPE of their target positions (text keys, position -1, keep none)."""
        if rope is None or keys.shape[2] == 0:
            return keys
        if all_video:
            return rope.rotate(keys, positions)
        video = positions >= 0
        keys = keys.clone()
        keys[:, :, video] = rope.rotate(keys[:, :, video], positions[video])
        return keys

    def _merge(self, video: VideoState, layer: int, out: torch.Tensor, t: int) -> None:
        """Blend the plan's matched tokens of `out` (one video's rows, a view) toward the identity's, in place."""
        current, identity, weight = self._merge_on_device(video.plan.merge, out.device, out.dtype)
        identity_out = video.source.output(video.plan.step, layer, **self._branch_kw).to(out.device)
        out[:, :, current + t] = torch.lerp(out[:, :, current + t], identity_out[:, :, identity], weight)


def _features(video_out: torch.Tensor) -> torch.Tensor:
    """(H, Nv, D) attention output of one row -> (Nv, H*D) matching features."""
    return video_out.transpose(0, 1).reshape(video_out.shape[1], -1)
