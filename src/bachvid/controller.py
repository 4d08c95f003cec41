"""Carries out the current step plan at every attention call.

Backbones hand over one `AttentionCall` per attention layer: queries, keys (before RoPE) and
values of [text ; video] tokens, plus the backbone's RoPE. The controller applies RoPE, keeps
what the identity must keep, builds the extra key groups of the plan's injections, runs the
injected attention, reads masks and match features, and merges outputs. It knows nothing about
which model it runs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .attention import KeyGroup, injected_attention
from .identity import CachedIdentity, IdentityRecord
from .mask import MaskReader
from .plan import PLAIN, Injection, StepPlan


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


class Controller:
    """Per-run state: the plan of the current step and where readings and kept tensors go."""

    def __init__(self):
        self.plan: StepPlan = PLAIN
        self.source: IdentityRecord | None = None  # identity answering the plan's injections and merges
        self.target: CachedIdentity | None = None  # identity being recorded in this run
        self.mask_reader: MaskReader | None = None
        self.match_features: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self.__init__()

    def attend(self, call: AttentionCall) -> torch.Tensor:
        plan, layer, t = self.plan, call.layer, call.text_length
        query, key, value = call.query, call.key, call.value
        if call.rope is not None:
            query = torch.cat([query[:, :, :t], call.rope.rotate(query[:, :, t:])], dim=2)
            key = torch.cat([key[:, :, :t], call.rope.rotate(key[:, :, t:])], dim=2)

        if layer in plan.keep_key_value:
            self.target.keep_key_value(plan.step, layer, call.key, value)

        groups = None
        if layer in plan.inject_layers and plan.injections:
            groups = self._key_groups(plan, layer, call)
        out = injected_attention(query, key, value, groups)

        if layer in plan.read_mask:  # masks come from the conditional (last) CFG branch
            self.mask_reader.add(layer, query[-1, :, t:], key[-1, :, :t])
        video_out = out[:, :, t:]
        if layer in plan.read_match:
            cond = video_out[-1]
            self.match_features[layer] = cond.transpose(0, 1).reshape(cond.shape[1], -1)
        if layer in plan.keep_output:
            self.target.keep_output(plan.step, layer, video_out)
        if plan.merge is not None and layer in plan.merge_layers:
            out = self._merge(plan, layer, out, t)
        return out

    def _key_groups(self, plan: StepPlan, layer: int, call: AttentionCall) -> list[list[KeyGroup]]:
        id_key, id_value = self.source.key_value(plan.step, layer)
        if id_key.shape[0] != call.key.shape[0]:
            raise ValueError(
                f"the identity has {id_key.shape[0]} CFG branches but this run has {call.key.shape[0]}: "
                "generate the identity and the shots with the same guidance setting"
            )
        device = call.key.device
        groups = [[] for _ in range(call.key.shape[0])]
        for injection in plan.injections:
            keys = id_key.to(device)[:, :, injection.sources.to(device)]
            values = id_value.to(device)[:, :, injection.sources.to(device)]
            keys = self._position(keys, injection, call.rope)
            for b in range(len(groups)):
                groups[b].append(KeyGroup(injection.queries.to(device), keys[b], values[b]))
        return groups

    @staticmethod
    def _position(keys: torch.Tensor, injection: Injection, rope: Rope | None) -> torch.Tensor:
        """Give injected keys the RoPE of their target positions (text keys keep none)."""
        if rope is None:
            return keys
        positions = injection.positions.to(keys.device)
        video = positions >= 0
        if bool(video.all()):
            return rope.rotate(keys, positions)
        keys = keys.clone()
        keys[:, :, video] = rope.rotate(keys[:, :, video], positions[video])
        return keys

    def _merge(self, plan: StepPlan, layer: int, out: torch.Tensor, t: int) -> torch.Tensor:
        merge = plan.merge
        identity_out = self.source.output(plan.step, layer).to(out.device)
        current = merge.current.to(out.device) + t
        weight = merge.weight.to(out.device, out.dtype)[:, None]
        out = out.clone()
        out[:, :, current] = (1 - weight) * out[:, :, current] + weight * identity_out[:, :, merge.identity.to(out.device)]
        return out
