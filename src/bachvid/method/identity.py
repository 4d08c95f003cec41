"""What later shots need from the identity video, behind one small interface.

A shot asks the identity for three things: its keys and values (before RoPE) at a vital layer
and step, its attention output at a layer and step (for matching and token merge), and its
foreground mask. `IdentityRecord` is that interface; `CachedIdentity` answers it from memory.
At CogVideoX-5B scale a raw cache is ~260 GB (BACHVID.md, scale facts), so `LiveIdentity`
answers the same questions from an identity that runs in the same batch as the shots (denoised
in lockstep, or replayed from its stored latents): it holds only the current attention call's
tensors. The method does not change.
"""

from __future__ import annotations

from typing import Protocol

import torch

UNCONDITIONAL, CONDITIONAL = 0, 1
"""CFG branch indices, in the order of a joint call's rows ([uncond, cond]); records file what a
backbone that runs the branches as separate calls kept under these."""


class IdentityRecord(Protocol):
    foreground: torch.Tensor | None
    """bool (F, h, w) identity foreground over the video token grid."""
    text_length: int

    def key_value(self, step: int, layer: int, branch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, N, D) keys before RoPE and values, text then video tokens, per CFG branch.

        branch None: all CFG branches as one call kept them (B = branches); an index: the one
        branch a backbone running CFG branches as separate calls kept (B = 1)."""

    def output(self, step: int, layer: int, branch: int | None = None) -> torch.Tensor:
        """(B, H, Nv, D) attention output of the video tokens, per CFG branch (see `key_value`)."""


def _slot(step: int, layer: int, branch: int | None) -> tuple:
    """Where a record files a tensor: (step, layer), and the CFG branch of a one-branch call."""
    return (step, layer) if branch is None else (step, layer, branch)


class CachedIdentity:
    """An identity record that keeps what the plan asks for, where the model computed it (when that
    would not fit, the pipeline picks replay, which keeps only latents: `identity_mode`)."""

    def __init__(self, text_length: int):
        self.text_length = text_length
        self.foreground: torch.Tensor | None = None
        self._kv: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._out: dict[tuple[int, int], torch.Tensor] = {}
        self.trajectory: list[torch.Tensor] | None = None
        """The identity's latent before every step, then its final one: kept only for a latent
        lock (`latent_lock`), which sets some of a shot's latents to them."""

    @staticmethod
    def _store(x: torch.Tensor) -> torch.Tensor:
        return x.detach().clone()  # the caller's tensor may be a view of a buffer the next call reuses

    def keep_key_value(self, step: int, layer: int, key: torch.Tensor, value: torch.Tensor,
                       branch: int | None = None) -> None:
        self._kv[_slot(step, layer, branch)] = (self._store(key), self._store(value))

    def keep_output(self, step: int, layer: int, output: torch.Tensor, branch: int | None = None) -> None:
        self._out[_slot(step, layer, branch)] = self._store(output)

    def end_call(self, step: int, layer: int) -> None:
        """A reader's call is over. Nothing to drop: a cache keeps what it was given."""

    def key_value(self, step: int, layer: int, branch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return _look_up(self._kv, step, layer, branch, f"the identity kept no keys/values for step {step}, layer {layer}")

    def output(self, step: int, layer: int, branch: int | None = None) -> torch.Tensor:
        return _look_up(self._out, step, layer, branch,
                        f"the identity kept no attention output for step {step}, layer {layer}")

    def conditional_outputs(self) -> dict[tuple[int, int], torch.Tensor]:
        """{(step, layer): (H, Nv, D)} every attention output kept, of the conditional branch (the
        prompt's), whichever way the backbone ran the CFG branches: for analyses of what was kept."""
        return {slot[:2]: out[-1] for slot, out in self._out.items() if len(slot) == 2 or slot[2] == CONDITIONAL}

    @property
    def nbytes(self) -> int:
        tensors = [t for kv in self._kv.values() for t in kv] + list(self._out.values()) + (self.trajectory or [])
        return sum(t.numel() * t.element_size() for t in tensors)


class LiveIdentity:
    """An identity record fed by an identity video running in the same batch as the shots.

    The identity's attention call at a layer hands it that layer's keys/values and outputs; the
    shots read them in the same call, or in the next one when the backbone runs the identity's
    rows apart, and the end of their call drops them. It never holds more than one layer's
    tensors, so no per-step buffer exists, and nothing of one layer (views of the whole batch's
    keys, values and outputs) stays alive while the next runs.
    """

    def __init__(self, text_length: int, foreground: torch.Tensor | None = None):
        self.text_length = text_length
        self.foreground = foreground
        self._kv: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._out: dict[tuple[int, int], torch.Tensor] = {}

    def keep_key_value(self, step: int, layer: int, key: torch.Tensor, value: torch.Tensor,
                       branch: int | None = None) -> None:
        self._kv = {_slot(step, layer, branch): (key, value)}

    def keep_output(self, step: int, layer: int, output: torch.Tensor, branch: int | None = None) -> None:
        self._out = {_slot(step, layer, branch): output}

    def end_call(self, step: int, layer: int) -> None:
        """Its readers' call is over: let go."""
        self._kv, self._out = {}, {}

    def key_value(self, step: int, layer: int, branch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return _look_up(self._kv, step, layer, branch,
                        f"the live identity did not run layer {layer} at step {step} in this call")

    def output(self, step: int, layer: int, branch: int | None = None) -> torch.Tensor:
        return _look_up(self._out, step, layer, branch,
                        f"the live identity kept no output of layer {layer} at step {step} in this batch")

    @property
    def nbytes(self) -> int:
        return 0


def _look_up(table: dict, step: int, layer: int, branch: int | None, missing: str):
    """A record's tensor for (step, layer, branch), or a KeyError that says what is missing."""
    try:
        return table[_slot(step, layer, branch)]
    except KeyError:
        note = "" if branch is None else f", CFG branch {branch} (was the identity made with the same guidance?)"
        raise KeyError(missing + note) from None
