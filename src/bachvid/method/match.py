"""Point matching between a shot and its identity video.

Each current video token is matched to the identity token whose attention output is most
similar (cosine, averaged over the matching layers). At CogVideoX-5B scale the similarity
matrix has ~3e8 entries, so it is computed in chunks of current tokens and only the argmax and
the max are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Matches:
    """For every current video token: its best identity token and their similarity."""

    index: torch.Tensor  # long (Nv,)
    similarity: torch.Tensor  # float (Nv,)

    def foreground_pairs(
        self, current_fg: torch.Tensor, identity_fg: torch.Tensor, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(current tokens, identity tokens, similarities) of valid foreground matches.

        Valid: the current token is foreground, its match lies in the identity's foreground,
        and the similarity reaches the threshold.
        """
        current_fg = current_fg.reshape(-1).to(self.index.device)
        identity_fg = identity_fg.reshape(-1).to(self.index.device)
        keep = current_fg & identity_fg[self.index] & (self.similarity >= threshold)
        current = keep.nonzero(as_tuple=True)[0]
        return current, self.index[current], self.similarity[current]


def best_matches(current: list[torch.Tensor], identity: list[torch.Tensor], chunk_size: int = 2048) -> Matches:
    """Match (Nv, C) features of the current video to (Nv', C) identity features, layer by layer.

    Similarities are averaged over the layers before the argmax.
    """
    if len(current) != len(identity) or not current:
        raise ValueError("need the same, non-zero number of layers for the current and identity features")
    ids = [F.normalize(x.float(), dim=-1) for x in identity]
    curs = [F.normalize(x.float(), dim=-1) for x in current]
    n = curs[0].shape[0]
    best_index, best_sim = [], []
    for start in range(0, n, chunk_size):
        sim = sum(c[start : start + chunk_size] @ i.T for c, i in zip(curs, ids)) / len(ids)
        value, index = sim.max(dim=-1)
        best_index.append(index)
        best_sim.append(value)
    return Matches(torch.cat(best_index), torch.cat(best_sim))


class MatchAccumulator:
    """Builds `best_matches` layer by layer, as the attention calls of one step go by.

    Keeping every matching layer's features for the current video and the identity costs
    ~2.3 GB each at CogVideoX-5B size (21 layers x 17,550 tokens x 3,072, bf16). Summing the
    per-layer similarities as they come needs one (Nv x Nv') matrix instead, and the identity's
    features are needed only during the call that produced them, so an identity running in the
    same batch never has to keep them. Same sum, same argmax. The sum is float32, or float16
    (0.6 GB instead of 1.2 at 5B size, per shot) when the features are half precision: their
    products carry bf16/fp16 rounding already, and float16 keeps ~3 decimal digits of a sum of
    similarities bounded by the number of layers.
    """

    def __init__(self, chunk_size: int = 2048):
        self.chunk_size = chunk_size
        self.total: torch.Tensor | None = None
        self.layers: list[int] = []

    def add(self, layer: int, current: torch.Tensor, identity: torch.Tensor) -> None:
        """current: (Nv, C) features of this video; identity: (Nv', C) of the identity, same layer and step.

        Products run in the features' own dtype when it is a half type (a float32 product of
        17,550 x 3,072 x 17,550 per layer is ~40 ms on an H100, 21 layers per shot), summed in float32."""
        half = current.dtype in (torch.float16, torch.bfloat16)
        dtype = current.dtype if half else torch.float32
        ids = F.normalize(identity.float(), dim=-1).to(dtype)
        if self.total is None:
            self.total = torch.zeros(current.shape[0], ids.shape[0], device=current.device,
                                     dtype=torch.float16 if half else torch.float32)
        for start in range(0, current.shape[0], self.chunk_size):
            chunk = F.normalize(current[start : start + self.chunk_size].float(), dim=-1).to(dtype)
            self.total[start : start + self.chunk_size] += chunk @ ids.T
        self.layers.append(layer)

    def result(self) -> Matches:
        if not self.layers:
            raise RuntimeError("no matching layer ran: check match_layers and tau_match against the model")
        value, index = self.total.max(dim=-1)
        return Matches(index, value.float() / len(self.layers))
