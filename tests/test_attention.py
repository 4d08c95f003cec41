"""The partitioned injected attention equals one dense masked SDPA, and the controller's
injection (identity keys re-positioned with RoPE) equals a hand-built dense reference."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bachvid.backbones.cogvideox import CogVideoXRope
from bachvid.method.attention import KeyGroup, dense_masked_attention, injected_attention
from bachvid.method.controller import AttentionCall, Controller, VideoState
from bachvid.method.identity import CachedIdentity
from bachvid.method.plan import Injection, StepPlan, TokenMerge


def random_groups(generator, batch, n, heads, dim, sizes):
    groups = []
    for _ in range(batch):
        order = torch.randperm(n, generator=generator)
        cuts, batch_groups, start = sizes, [], 0
        for q_count, m in cuts:
            queries = order[start : start + q_count]
            start += q_count
            batch_groups.append(KeyGroup(queries, torch.randn(heads, m, dim, generator=generator),
                                         torch.randn(heads, m, dim, generator=generator)))
        groups.append(batch_groups)
    return groups


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(4, 40),
    seed=st.integers(0, 10_000),
    group_sizes=st.lists(st.tuples(st.integers(0, 8), st.integers(1, 12)), min_size=0, max_size=3),
    method=st.sampled_from(["merge", "partition"]),
)
def test_injected_attention_equals_dense_masked_sdpa(n, seed, group_sizes, method):
    g = torch.Generator().manual_seed(seed)
    batch, heads, dim = 2, 3, 8
    # keep query sets disjoint and within n
    total, sizes = 0, []
    for q_count, m in group_sizes:
        q_count = min(q_count, n - total)
        total += q_count
        sizes.append((q_count, m))
    q, k, v = (torch.randn(batch, heads, n, dim, generator=g) for _ in range(3))
    groups = random_groups(g, batch, n, heads, dim, sizes)
    fast = injected_attention(q, k, v, groups, method=method)
    dense = dense_masked_attention(q, k, v, groups)
    assert torch.allclose(fast, dense, atol=1e-5), (fast - dense).abs().max()


@pytest.mark.parametrize("method", ["merge", "partition"])
def test_rows_sharing_query_sets_need_not_be_neighbours(method):
    """Rows 0 and 2 share one query tensor (one call for both), row 1 has none, row 3 its own."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(4, 2, 10, 4, generator=g) for _ in range(3))
    shared = torch.tensor([1, 3, 8])

    def group(queries, m, bias=0.0):
        return KeyGroup(queries, torch.randn(2, m, 4, generator=g), torch.randn(2, m, 4, generator=g), bias)

    groups = [[group(shared, 4, 0.7)], [], [group(shared, 4, 0.7)], [group(torch.tensor([0, 9]), 6)]]
    out = injected_attention(q, k, v, groups, method=method)
    assert torch.allclose(out, dense_masked_attention(q, k, v, groups), atol=1e-5)
    assert torch.equal(out[1], torch.nn.functional.scaled_dot_product_attention(q[1:2], k[1:2], v[1:2])[0])
    # "auto" takes the merge on a CPU (measured faster there; partition on CUDA)
    assert torch.equal(injected_attention(q, k, v, groups), injected_attention(q, k, v, groups, method="merge"))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), bias=st.floats(-3, 3))
def test_logit_bias_on_injected_keys_equals_dense_reference_and_duplication(seed, bias):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 9, 4, generator=g) for _ in range(3))
    keys, values = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    groups = [[KeyGroup(torch.tensor([1, 4, 7]), keys, values, bias)]]
    for method in ("merge", "partition"):
        fast = injected_attention(q, k, v, groups, method=method)
        assert torch.allclose(fast, dense_masked_attention(q, k, v, groups), atol=1e-5)
    # a bias of log 2 weighs every injected key like two copies of it
    if abs(bias) < 1e-9:
        return
    doubled = [[KeyGroup(torch.tensor([1, 4, 7]), keys.repeat(1, 2, 1), values.repeat(1, 2, 1))]]
    logtwo = [[KeyGroup(torch.tensor([1, 4, 7]), keys, values, float(torch.log(torch.tensor(2.0))))]]
    assert torch.allclose(injected_attention(q, k, v, doubled), injected_attention(q, k, v, logtwo), atol=1e-5)


def test_groups_change_only_their_queries():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 10, 4, generator=g) for _ in range(3))
    group = KeyGroup(torch.tensor([2, 5]), torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g) * 10)
    plain = injected_attention(q, k, v, None)
    injected = injected_attention(q, k, v, [[group]])
    changed = (plain - injected).abs().amax(dim=(0, 1, 3)) > 1e-6
    assert changed.nonzero().flatten().tolist() == [2, 5]


def test_overlapping_groups_are_refused():
    q = k = v = torch.zeros(1, 1, 4, 2)
    g = KeyGroup(torch.tensor([1, 2]), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2))
    h = KeyGroup(torch.tensor([2]), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2))
    try:
        injected_attention(q, k, v, [[g, h]])
    except ValueError as error:
        assert "disjoint" in str(error)
    else:
        raise AssertionError("overlapping query sets must be refused")


def rope_table(nv, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(nv, dim // 2, generator=g) * 6.28
    cos = torch.cos(angles).repeat_interleave(2, dim=-1)
    sin = torch.sin(angles).repeat_interleave(2, dim=-1)
    return CogVideoXRope(cos, sin)


def test_controller_injection_matches_dense_reference_with_rope_repositioning():
    g = torch.Generator().manual_seed(1)
    batch, heads, dim, text, nv = 2, 2, 8, 3, 12
    n = text + nv
    rope = rope_table(nv, dim)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=g) for _ in range(3))
    id_k, id_v = torch.randn(batch, heads, n, dim, generator=g), torch.randn(batch, heads, n, dim, generator=g)
    record = CachedIdentity(text_length=text)
    record.keep_key_value(0, 0, id_k, id_v)

    background = Injection(queries=torch.tensor([3, 4, 9]) , sources=torch.tensor([3, 4, 5]) , positions=torch.tensor([0, 1, 2]))
    foreground = Injection(queries=torch.tensor([10, 11, 12]), sources=torch.tensor([14, 6]), positions=torch.tensor([8, 9]))
    video = VideoState(source=record)
    controller = Controller([video], branches=batch)
    video.plan = StepPlan(step=0, inject_layers=frozenset({0}), injections=(background, foreground))
    out = controller.attend(AttentionCall(0, q, k, v, text, rope))

    # Dense reference, built by hand: rotate everything, append extra keys, mask per query.
    def rot(x):
        return torch.cat([x[:, :, :text], rope.rotate(x[:, :, text:])], dim=2)

    rq, rk = rot(q), rot(k)
    groups = []
    for b in range(batch):
        batch_groups = []
        for inj in (background, foreground):
            keys = rope.rotate(id_k[b][:, inj.sources], inj.positions)
            batch_groups.append(KeyGroup(inj.queries, keys, id_v[b][:, inj.sources]))
        groups.append(batch_groups)
    reference = dense_masked_attention(rq, rk, v, groups)
    assert torch.allclose(out, reference, atol=1e-5)

    # Re-positioning matters: the same tokens at their source positions give another result.
    moved = Injection(foreground.queries, foreground.sources, foreground.sources - text)
    video.plan = StepPlan(step=0, inject_layers=frozenset({0}), injections=(background, moved))
    other = controller.attend(AttentionCall(0, q, k, v, text, rope))
    assert (other - out).abs().max() > 1e-3


def test_token_merge_blends_only_matched_tokens_per_branch():
    g = torch.Generator().manual_seed(2)
    batch, heads, dim, text, nv = 2, 1, 4, 2, 6
    q, k, v = (torch.randn(batch, heads, text + nv, dim, generator=g) for _ in range(3))
    record = CachedIdentity(text_length=text)
    identity_out = torch.randn(batch, heads, nv, dim, generator=g)
    record.keep_output(0, 0, identity_out)
    video = VideoState(source=record)
    controller = Controller([video], branches=batch)
    plain = controller.attend(AttentionCall(0, q, k, v, text, None))
    merge = TokenMerge(current=torch.tensor([1, 4]), identity=torch.tensor([0, 5]), weight=torch.tensor([0.5, 1.0]))
    video.plan = StepPlan(step=0, merge_layers=frozenset({0}), merge=merge)
    merged = controller.attend(AttentionCall(0, q, k, v, text, None))
    assert torch.allclose(merged[:, :, text + 1], 0.5 * plain[:, :, text + 1] + 0.5 * identity_out[:, :, 0])
    assert torch.allclose(merged[:, :, text + 4], identity_out[:, :, 5])
    untouched = [i for i in range(text + nv) if i not in (text + 1, text + 4)]
    assert torch.equal(merged[:, :, untouched], plain[:, :, untouched])


def test_empty_injections_leave_attention_plain():
    """An identity with no background token (its character fills the frame) gives an empty
    background injection; a shot with no foreground an empty foreground one. Both must just work."""
    g = torch.Generator().manual_seed(3)
    batch, heads, dim, text, nv = 2, 2, 8, 3, 12
    rope = rope_table(nv, dim)
    q, k, v = (torch.randn(batch, heads, text + nv, dim, generator=g) for _ in range(3))
    record = CachedIdentity(text_length=text)
    record.keep_key_value(0, 0, torch.randn(batch, heads, text + nv, dim), torch.randn(batch, heads, text + nv, dim))
    empty = torch.zeros(0, dtype=torch.long)
    no_background = Injection(queries=torch.arange(text, text + nv), sources=empty, positions=empty, at_source=True)
    no_queries = Injection(queries=empty, sources=torch.tensor([4, 5]), positions=torch.tensor([1, 2]))
    video = VideoState(source=record, plan=StepPlan(step=0, inject_layers=frozenset({0}),
                                                    injections=(no_background, no_queries)))
    out = Controller([video], branches=batch).attend(AttentionCall(0, q, k, v, text, rope))
    plain = Controller([VideoState()], branches=batch).attend(AttentionCall(0, q, k, v, text, rope))
    assert torch.allclose(out, plain, atol=1e-6)


def test_conditional_outputs_are_the_prompts_branch_in_both_cfg_layouts():
    """A joint call keeps [uncond, cond] rows; a per-branch backbone (Wan) keeps each branch apart:
    both give the conditional row, and the unconditional branch's own call is left out."""
    from bachvid.method.identity import CONDITIONAL, UNCONDITIONAL

    joint, split = CachedIdentity(text_length=2), CachedIdentity(text_length=0)
    uncond, cond = torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3)
    joint.keep_output(3, 1, torch.cat([uncond, cond]))
    split.keep_output(3, 1, uncond, branch=UNCONDITIONAL)
    split.keep_output(3, 1, cond, branch=CONDITIONAL)
    for record in (joint, split):
        kept = record.conditional_outputs()
        assert list(kept) == [(3, 1)] and torch.equal(kept[3, 1], cond[0])
