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


def injected_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    groups: list[list[KeyGroup]] | None,
) -> torch.Tensor:
    """SDPA over (B, H, N, D) where batch element b's queries in groups[b][g] also see that group's keys.

    Query sets within one batch element must be disjoint. Batch elements without groups run
    together in one batched call, and so do elements whose groups share their query index
    tensors (the CFG branches of one shot): one call per query set for all of them.
    """
    if not groups or not any(groups):
        return F.scaled_dot_product_attention(query, key, value)
    if len(groups) != query.shape[0]:
        raise ValueError(f"{len(groups)} group lists for a batch of {query.shape[0]}")
    out = torch.empty_like(query)
    buckets: dict[tuple, list[int]] = {}
    for b, batch_groups in enumerate(groups):
        signature = tuple((id(g.queries), g.keys.shape[1], g.bias) for g in batch_groups)
        buckets.setdefault(signature, []).append(b)
    for signature, rows in buckets.items():
        index = torch.tensor(rows, device=query.device)
        q, k, v = query[index], key[index], value[index]
        if not signature:
            out[index] = F.scaled_dot_product_attention(q, k, v)
            continue
        out[index] = _partitioned(q, k, v, [[groups[b][g] for b in rows] for g in range(len(signature))])
    return out


def _partitioned(q, k, v, groups: list[list[KeyGroup]]) -> torch.Tensor:
    """(R, H, N, D) rows sharing query sets: groups[g][r] is row r's group g (same queries for every r)."""
    out = torch.empty_like(q)
    n = q.shape[2]
    covered = torch.zeros(n, dtype=torch.bool, device=q.device)
    for per_row in groups:
        queries = per_row[0].queries
        if queries.numel() == 0:
            continue
        if covered[queries].any():
            raise ValueError("injection groups of one batch element must have disjoint queries")
        covered[queries] = True
        extra_k = torch.stack([g.keys for g in per_row]).to(k.dtype)
        if extra_k.shape[2] == 0:
            out[:, :, queries] = F.scaled_dot_product_attention(q[:, :, queries], k, v)
            continue
        keys = torch.cat([k, extra_k], dim=2)
        values = torch.cat([v, torch.stack([g.values for g in per_row]).to(v.dtype)], dim=2)
        mask = None
        if per_row[0].bias:
            mask = torch.zeros(keys.shape[2], device=q.device, dtype=q.dtype)
            mask[k.shape[2]:] = per_row[0].bias
            mask = mask[None, None, None, :]
        out[:, :, queries] = F.scaled_dot_product_attention(q[:, :, queries], keys, values, attn_mask=mask)
    rest = (~covered).nonzero(as_tuple=True)[0]
    if rest.numel():
        out[:, :, rest] = F.scaled_dot_product_attention(q[:, :, rest], k, v)
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
