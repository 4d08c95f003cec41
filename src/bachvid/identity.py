"""What later shots need from the identity video, behind one small interface.

A shot asks the identity for three things: its keys and values (before RoPE) at a vital layer
and step, its attention output at a layer and step (for matching and token merge), and its
foreground mask. `IdentityRecord` is that interface; `CachedIdentity` answers it from memory.
At CogVideoX-5B scale a raw cache is ~260 GB (BACHVID.md, scale facts), so other records can
answer the same questions by running the identity in lockstep or by replaying its latents;
the method does not change.
"""

from __future__ import annotations

from typing import Protocol

import torch


class IdentityRecord(Protocol):
    foreground: torch.Tensor | None
    """bool (F, h, w) identity foreground over the video token grid."""
    text_length: int

    def key_value(self, step: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, N, D) keys before RoPE and values, text then video tokens, per CFG branch."""

    def output(self, step: int, layer: int) -> torch.Tensor:
        """(B, H, Nv, D) attention output of the video tokens, per CFG branch."""


class CachedIdentity:
    """An identity record that keeps what the plan asks for in memory (or on a device)."""

    def __init__(self, text_length: int, storage_device: str | torch.device | None = None):
        self.text_length = text_length
        self.storage_device = storage_device
        self.foreground: torch.Tensor | None = None
        self._kv: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._out: dict[tuple[int, int], torch.Tensor] = {}

    def _store(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        return x.to(self.storage_device) if self.storage_device is not None else x.clone()

    def keep_key_value(self, step: int, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self._kv[step, layer] = (self._store(key), self._store(value))

    def keep_output(self, step: int, layer: int, output: torch.Tensor) -> None:
        self._out[step, layer] = self._store(output)

    def key_value(self, step: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return self._kv[step, layer]
        except KeyError:
            raise KeyError(f"the identity kept no keys/values for step {step}, layer {layer}") from None

    def output(self, step: int, layer: int) -> torch.Tensor:
        try:
            return self._out[step, layer]
        except KeyError:
            raise KeyError(f"the identity kept no attention output for step {step}, layer {layer}") from None

    @property
    def nbytes(self) -> int:
        tensors = [t for kv in self._kv.values() for t in kv] + list(self._out.values())
        return sum(t.numel() * t.element_size() for t in tensors)
