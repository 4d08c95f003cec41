"""Attention with extra keys that only some queries may see.

Injection appends identity keys/values to the current ones, but each extra set is visible to
one set of queries only (background queries see background keys, foreground queries see matched
foreground keys, text queries see none). A dense (N x (N + M)) mask would cost O(N^2) memory at
CogVideoX-5B scale. Because the query sets are disjoint, the same result comes from
partitioning the queries: each part runs one plain SDPA over [own keys ; its extra keys], and
queries outside every part run SDPA over the own keys. No mask, no approximation.

Every SDPA call here takes 4-D (batch, heads, tokens, dim) tensors: PyTorch's fused kernels
(flash, memory-efficient; CUDA and CPU) accept nothing else, and a 3-D call silently falls back
to the math kernel, which builds the whole query x key matrix (18.7 GiB for one injected call
at CogVideoX-5B size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KeyGroup:
    """Extra keys/values (already positioned) visible to one set of queries.

    queries: long (Q,) indices into the sequence; keys, values: (H, M, D).
    """

    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    bias: float = 0.0  # added to the logits of these keys only


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of (H, Q, D) queries over (H, K, D) keys, run as a 4-D call (fused kernels).

    key_bias: optional (K,) logit offsets per key, passed as a (1, 1, 1, K) additive mask that
    broadcasts over heads and queries (the memory-efficient kernels take it; no Q x K tensor)."""
    mask = None if key_bias is None else key_bias.to(query.dtype)[None, None, None, :]
    return F.scaled_dot_product_attention(query[None], key[None], value[None], attn_mask=mask)[0]


def injected_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    groups: list[list[KeyGroup]] | None,
) -> torch.Tensor:
    """SDPA over (B, H, N, D) where batch element b's queries in groups[b][g] also see that group's keys.

    Query sets within one batch element must be disjoint. Batch elements without groups run
    together in one batched call.
    """
    if not groups or not any(groups):
        return F.scaled_dot_product_attention(query, key, value)
    if len(groups) != query.shape[0]:
        raise ValueError(f"{len(groups)} group lists for a batch of {query.shape[0]}")
    out = torch.empty_like(query)
    plain = [b for b, batch_groups in enumerate(groups) if not batch_groups]
    if plain:
        rows = torch.tensor(plain, device=query.device)
        out[rows] = F.scaled_dot_product_attention(query[rows], key[rows], value[rows])
    n = query.shape[2]
    for b, batch_groups in enumerate(groups):
        if not batch_groups:
            continue
        q, k, v = query[b], key[b], value[b]
        covered = torch.zeros(n, dtype=torch.bool, device=query.device)
        for group in batch_groups:
            if group.queries.numel() == 0:
                continue
            if covered[group.queries].any():
                raise ValueError("injection groups of one batch element must have disjoint queries")
            covered[group.queries] = True
            if group.keys.shape[1] == 0:
                out[b][:, group.queries] = sdpa(q[:, group.queries], k, v)
                continue
            keys = torch.cat([k, group.keys.to(k.dtype)], dim=1)
            values = torch.cat([v, group.values.to(v.dtype)], dim=1)
            key_bias = None
            if group.bias:
                key_bias = torch.zeros(keys.shape[1], device=keys.device)
                key_bias[k.shape[1]:] = group.bias
            out[b][:, group.queries] = sdpa(q[:, group.queries], keys, values, key_bias)
        rest = (~covered).nonzero(as_tuple=True)[0]
        if rest.numel():
            out[b][:, rest] = sdpa(q[:, rest], k, v)
    return out


def dense_masked_attention(query, key, value, groups: list[list[KeyGroup]]) -> torch.Tensor:
    """Reference: one SDPA over all own and extra keys with an explicit boolean mask. Small sizes only."""
    outputs = []
    n = query.shape[2]
    for b, batch_groups in enumerate(groups):
        keys, values = [key[b]], [value[b]]
        allowed = [torch.zeros(n, key.shape[2], device=query.device)]
        for group in batch_groups:
            keys.append(group.keys.to(key.dtype))
            values.append(group.values.to(value.dtype))
            visible = torch.full((n, group.keys.shape[1]), float("-inf"), device=query.device)
            visible[group.queries] = group.bias
            allowed.append(visible)
        mask = torch.cat(allowed, dim=1).to(query.dtype)
        outputs.append(
            F.scaled_dot_product_attention(
                query[b : b + 1], torch.cat(keys, 1)[None], torch.cat(values, 1)[None], attn_mask=mask
            )[0]
        )
    return torch.stack(outputs)
