"""Attention with extra keys that only some queries may see.

Injection appends identity keys/values to the current ones, but each extra set is visible to
one set of queries only (background queries see background keys, foreground queries see matched
foreground keys, text queries see none). A dense (N x (N + M)) mask would cost O(N^2) memory at
CogVideoX-5B scale, so it is never built. Softmax over [own keys ; extra keys] splits exactly:

    out = own_out + (extra_out - own_out) * sigmoid(lse_extra - lse_own)

where *_out and lse_* are the attention output and log-sum-exp of each key set alone. So one
fused attention call runs over the whole batch's own keys (the very call a vanilla forward makes),
one more per query set runs over its extra keys only, and the two are merged per query: the extra
cost is exactly the extra query-key pairs, with no copy of the own keys. The other way, and the
faster one on an H100 (see `injected_attention`), partitions the queries: each set runs SDPA over
[own keys ; its extra keys]. Both are exact.

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
    sources: torch.Tensor | None = None
    """The identity sequence indices the keys came from, (M,): not read by the attention, kept for
    research probes that ask where in the identity the injected mass goes."""
    kind: str = ""
    """The injection's kind ("background", "foreground"; `plan.Injection.kind`), for the same probes."""


def injected_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    groups: list[list[KeyGroup]] | None,
    method: str = "auto",
) -> torch.Tensor:
    """SDPA over (B, H, N, D) where batch element b's queries in groups[b][g] also see that group's keys.

    Query sets within one batch element must be disjoint. Elements whose groups share their query
    index tensors (the CFG branches of one shot) run each query set in one call. method: "merge"
    (log-sum-exp merge), "partition", or "auto": partition on CUDA, merge elsewhere. Measured
    (`bachvid bench-attention`, one shot's call at CogVideoX-5B size, 30% foreground): on an H100
    in bf16, plain 18.0 ms, partition 1.76x, merge 2.18x (the kernels that return the LSE are
    slower there than the one plain SDPA picks); on a 2-core CPU in fp32 at 6,000 tokens, merge
    1.40x, partition 1.50x. The extra pairs alone would cost 1.57x and 1.54x.
    """
    if not groups or not any(groups):
        return F.scaled_dot_product_attention(query, key, value)
    if len(groups) != query.shape[0]:
        raise ValueError(f"{len(groups)} group lists for a batch of {query.shape[0]}")
    if method not in ("auto", "merge", "partition"):
        raise ValueError(f"method must be 'auto', 'merge' or 'partition', got {method!r}")
    for batch_groups in groups:
        _check_disjoint(batch_groups, query.shape[2])
    buckets: dict[tuple, list[int]] = {}
    for b, batch_groups in enumerate(groups):
        signature = tuple((id(g.queries), g.keys.shape[1], g.bias) for g in batch_groups)
        buckets.setdefault(signature, []).append(b)
    if method == "auto":
        method = "partition" if query.device.type == "cuda" else "merge"
    own = None if method == "partition" else attention_with_lse(query, key, value)
    if own is None:
        if method == "merge":
            raise RuntimeError(f"no fused attention kernel returns the log-sum-exp on {query.device.type}")
        return _partitioned_batch(query, key, value, groups, buckets)
    out, lse = own
    for signature, rows in buckets.items():
        for g in range(len(signature)):
            _merge_extra(out, lse, query, rows, [groups[b][g] for b in rows])
    return out


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(out, float32 log-sum-exp of the scaled logits (B, H, N)) from a fused kernel, or None.

    The kernels are the ones F.scaled_dot_product_attention dispatches to (flash on CPU; flash,
    else memory-efficient, on CUDA), called directly because the public function drops the LSE."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[:2]
        return out, lse
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
            try:
                result = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)
                return result[0], result[1]
            except RuntimeError:
                pass
        try:
            result = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)
            return result[0], result[1][..., : q.shape[2]]
        except RuntimeError:
            return None
    return None


def _merge_extra(out, lse, query, rows: list[int], per_row: list[KeyGroup]) -> None:
    """Fold one query set's extra keys into `out` (in place) for batch rows `rows`."""
    queries = per_row[0].queries
    if queries.numel() == 0 or per_row[0].keys.shape[1] == 0:
        return
    index = _rows(rows, query.device)
    keys = torch.stack([g.keys for g in per_row]).to(query.dtype)
    values = torch.stack([g.values for g in per_row]).to(query.dtype)
    extra = attention_with_lse(query[index][:, :, queries], keys, values)
    if extra is None:
        raise RuntimeError("the fused kernel that gave the own log-sum-exp failed on the extra keys")
    extra_out, extra_lse = extra
    # The extra keys' share of the softmax mass, per query; one lerp in the output's dtype keeps
    # the temporaries at one (rows, heads, queries, dim) tensor at CogVideoX-5B size.
    weight = torch.sigmoid(extra_lse.float() + per_row[0].bias - lse[index][:, :, queries].float())
    merged = torch.lerp(out[index][:, :, queries], extra_out.to(out.dtype), weight[..., None].to(out.dtype))
    if isinstance(index, slice):
        out[index, :, queries] = merged
    else:
        for i, b in enumerate(rows):
            out[b, :, queries] = merged[i]


def _rows(rows: list[int], device):
    """Batch rows as a slice when they are consecutive (a CFG pair: views, no copies)."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(rows, device=device)


def _check_disjoint(batch_groups: list[KeyGroup], n: int) -> None:
    """Query sets of one batch element must not overlap. Checked on CPU index tensors only: on a
    GPU the check would stall the launch queue at every layer (plans build them disjoint)."""
    if len(batch_groups) < 2 or batch_groups[0].queries.device.type != "cpu":
        return
    covered = torch.zeros(n, dtype=torch.int32)
    for group in batch_groups:
        covered[group.queries] += 1
    if bool((covered > 1).any()):
        raise ValueError("injection groups of one batch element must have disjoint queries")


def _partitioned_batch(query, key, value, groups, buckets) -> torch.Tensor:
    out = torch.empty_like(query)
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
