"""Chunked masks and matches equal their dense references on small sizes."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bachvid.method.mask import MaskReader, carry_mask, open_mask, text_attention_scores
from bachvid.method.match import Matches, best_matches


@settings(max_examples=20, deadline=None)
@given(nv=st.integers(1, 50), chunk=st.integers(1, 64), real=st.integers(3, 10), seed=st.integers(0, 1000))
def test_chunked_text_attention_equals_dense(nv, chunk, real, seed):
    g = torch.Generator().manual_seed(seed)
    heads, dim, text = 3, 8, 12
    q = torch.randn(heads, nv, dim, generator=g)
    k = torch.randn(heads, text, dim, generator=g)
    background, foreground = torch.tensor([0, 1]), torch.arange(2, real)
    bg, fg = text_attention_scores(q, k, real, background, foreground, chunk)
    # Dense: the whole (video x all text) score matrix, padding masked out by -inf.
    scores = q @ k.transpose(1, 2) / dim**0.5
    scores[:, :, real:] = float("-inf")
    probs = torch.softmax(scores, -1).sum(0)
    assert torch.allclose(bg, probs[:, background].mean(-1), atol=1e-5)
    assert torch.allclose(fg, probs[:, foreground].mean(-1), atol=1e-5)


def test_padding_tokens_do_not_change_the_scores():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    a = text_attention_scores(q, k, 4, torch.tensor([0]), torch.tensor([1, 2]))
    k2 = k.clone()
    k2[:, 4:] = torch.randn(2, 2, 4, generator=g) * 100
    b = text_attention_scores(q, k2, 4, torch.tensor([0]), torch.tensor([1, 2]))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def reference_open(mask, kernel):
    frames, h, w = mask.shape
    r = kernel // 2
    eroded = torch.zeros_like(mask)
    for f in range(frames):
        for i in range(h):
            for j in range(w):
                window = mask[f, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
                # cells outside the frame count as foreground, so erosion does not eat the border
                eroded[f, i, j] = bool(window.all())
    opened = torch.zeros_like(mask)
    for f in range(frames):
        for i in range(h):
            for j in range(w):
                opened[f, i, j] = bool(eroded[f, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].any())
    return opened


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), kernel=st.sampled_from([1, 3, 5]))
def test_open_mask_equals_loop_reference(seed, kernel):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(2, 7, 9, generator=g) > 0.4
    assert torch.equal(open_mask(mask, kernel), mask if kernel == 1 else reference_open(mask, kernel))


def test_opening_removes_specks_and_keeps_blocks():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:6, 2:6] = True
    mask[0, 0, 7] = True  # a speck
    opened = open_mask(mask, 3)
    assert not opened[0, 0, 7]
    assert opened[0, 2:6, 2:6].all()


def test_mask_reader_averages_layers_and_shapes_grid():
    g = torch.Generator().manual_seed(3)
    reader = MaskReader(torch.tensor([0]), torch.tensor([1, 2]), real_length=4, chunk_size=5)
    qs = [torch.randn(2, 12, 4, generator=g) for _ in range(2)]
    ks = [torch.randn(2, 6, 4, generator=g) for _ in range(2)]
    for layer, (q, k) in enumerate(zip(qs, ks)):
        reader.add(layer, q, k)
    parts = [text_attention_scores(q, k, 4, torch.tensor([0]), torch.tensor([1, 2])) for q, k in zip(qs, ks)]
    bg = (parts[0][0] + parts[1][0]) / 2
    fg = (parts[0][1] + parts[1][1]) / 2
    assert torch.equal(reader.mask((3, 2, 2), open_kernel=1), (fg >= bg).reshape(3, 2, 2))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 40), layers=st.integers(1, 3), chunk=st.integers(1, 50),
       seed=st.integers(0, 1000))
def test_chunked_matching_equals_dense(n, m, layers, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    cur = [torch.randn(n, 6, generator=g) for _ in range(layers)]
    ident = [torch.randn(m, 6, generator=g) for _ in range(layers)]
    matches = best_matches(cur, ident, chunk)
    dense = sum(F.normalize(c, dim=-1) @ F.normalize(i, dim=-1).T for c, i in zip(cur, ident)) / layers
    value, index = dense.max(-1)
    assert torch.equal(matches.index, index)
    assert torch.allclose(matches.similarity, value, atol=1e-6)


def test_matching_finds_a_permuted_copy():
    g = torch.Generator().manual_seed(4)
    ident = torch.randn(30, 16, generator=g)
    perm = torch.randperm(30, generator=g)
    matches = best_matches([ident[perm] + 0.01 * torch.randn(30, 16, generator=g)], [ident], chunk_size=7)
    assert torch.equal(matches.index, perm)
    assert (matches.similarity > 0.99).all()


def test_foreground_pairs_keep_valid_foreground_matches_only():
    matches = Matches(index=torch.tensor([0, 1, 2, 3]), similarity=torch.tensor([0.9, 0.9, 0.3, 0.9]))
    current_fg = torch.tensor([True, True, True, False])
    identity_fg = torch.tensor([True, False, True, True])
    cur, ident, sim = matches.foreground_pairs(current_fg, identity_fg, threshold=0.5)
    # token 1 matches identity background, token 2 is below threshold, token 3 is not foreground now
    assert cur.tolist() == [0] and ident.tolist() == [0] and torch.equal(sim, matches.similarity[:1])


def test_match_accumulator_half_features_keep_a_half_sum_with_the_same_argmax():
    """bf16 features: the similarity sum is float16 (half the memory at 5B size) and picks the
    float32 reference's match wherever the best beats the runner-up by a visible margin."""
    import torch

    from bachvid.method.match import MatchAccumulator, best_matches

    g = torch.Generator().manual_seed(3)
    layers = [(torch.randn(300, 64, generator=g), torch.randn(200, 64, generator=g)) for _ in range(6)]
    half = MatchAccumulator(chunk_size=64)
    for layer, (current, identity) in enumerate(layers):
        half.add(layer, current.bfloat16(), identity.bfloat16())
    assert half.total.dtype == torch.float16
    reference = best_matches([c for c, _ in layers], [i for _, i in layers])
    ids = [torch.nn.functional.normalize(i, dim=-1) for _, i in layers]
    sims = sum(torch.nn.functional.normalize(c, dim=-1) @ i.T for (c, _), i in zip(layers, ids)) / len(layers)
    top2 = sims.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02
    got = half.result()
    assert clear.sum() > 100
    assert torch.equal(got.index[clear], reference.index[clear])
    assert torch.allclose(got.similarity, reference.similarity, atol=0.02)


def test_live_identity_lets_go_of_a_call_when_it_ends():
    """Nothing of one layer (views of the whole batch's keys, values, outputs) outlives its call."""
    import pytest
    import torch

    from bachvid.method.identity import LiveIdentity

    live = LiveIdentity(text_length=2)
    key = value = torch.zeros(2, 1, 5, 4)
    live.keep_key_value(3, 0, key, value)
    live.keep_output(3, 0, torch.zeros(2, 1, 3, 4))
    assert live.key_value(3, 0)[0] is key
    live.end_call(3, 0)
    with pytest.raises(KeyError, match="layer 0 at step 3"):
        live.key_value(3, 0)
    with pytest.raises(KeyError):
        live.output(3, 0)


def test_an_identity_says_which_step_layer_and_branch_it_lacks():
    import pytest
    import torch

    from bachvid.method.identity import CachedIdentity

    cached = CachedIdentity(text_length=2)
    cached.keep_key_value(4, 1, torch.ones(1, 1, 5, 4), torch.ones(1, 1, 5, 4), branch=1)
    assert torch.equal(cached.key_value(4, 1, branch=1)[0], torch.ones(1, 1, 5, 4))
    with pytest.raises(KeyError, match="no keys/values for step 4, layer 1, CFG branch 0 .*same guidance"):
        cached.key_value(4, 1, branch=0)
    with pytest.raises(KeyError, match=r"no attention output for step 2, layer 0'"):
        cached.output(2, 0)


def test_a_carried_mask_takes_the_identity_mask_at_each_tokens_match():
    """shot_mask="matches": a shot's mask is the identity's, moved to where the matches say each body
    point went, then opened like read masks."""
    grid = (1, 6, 6)
    identity_fg = torch.zeros(grid, dtype=torch.bool)
    identity_fg[0, 1:4, 1:4] = True  # a 3 x 3 character at the left
    index = torch.arange(36).reshape(grid).roll(2, dims=2).reshape(-1)  # each token matches two columns left
    expected = torch.zeros(grid, dtype=torch.bool)
    expected[0, 1:4, 3:6] = True  # the same character, two columns to the right
    assert torch.equal(carry_mask(identity_fg, index, grid, open_kernel=3), expected)
    assert carry_mask(identity_fg, torch.full((36,), 14), grid, open_kernel=1).all()  # all match a character token
    specks = torch.full((36,), 0)
    specks[[0, 20]] = 14  # two isolated tokens match the character: opening removes them
    assert not carry_mask(identity_fg, specks, grid, open_kernel=3).any()


def test_shot_mask_must_be_a_known_source():
    import pytest

    from bachvid.method.config import BachVidConfig

    assert BachVidConfig().shot_mask == "attention"  # the paper's
    with pytest.raises(ValueError, match="shot_mask"):
        BachVidConfig(shot_mask="pixels")



def _between_class_variance(values, threshold):
    import numpy as np

    v = np.asarray(values, np.float64)
    low, high = v[v <= threshold], v[v > threshold]
    return 0.0 if not len(low) or not len(high) else len(low) * len(high) * (low.mean() - high.mean()) ** 2


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(0, 1, allow_nan=False, width=32), min_size=2, max_size=60))
def test_otsu_threshold_splits_as_well_as_the_best_brute_force_split(values):
    """Otsu's split, checked against every split between distinct sorted values."""
    import numpy as np

    from bachvid.method.mask import otsu_threshold

    v = np.unique(np.asarray(values, np.float64))
    best = max((_between_class_variance(values, (a + b) / 2) for a, b in zip(v[:-1], v[1:])), default=0.0)
    got = otsu_threshold(torch.tensor(values))
    assert _between_class_variance(values, got) >= best * (1 - 1e-9)
    if len(v) == 1:  # one distinct value: nothing lies above the threshold
        assert not (v > got).any()


def test_otsu_rule_keeps_a_well_ranked_character_that_fg_over_bg_loses():
    """The case the rule is for: attention ranks the character's tokens first, but every token still
    attends more to the background's words, so the paper's fg >= bg keeps none of them."""
    from bachvid.method.mask import foreground_tokens

    g = torch.Generator().manual_seed(0)
    character = torch.zeros(200, dtype=torch.bool)
    character[40:70] = True
    background = torch.full((200,), 0.6)
    foreground = torch.where(character, 0.45, 0.15) + 0.02 * torch.randn(200, generator=g)
    assert not foreground_tokens(background, foreground).any()
    assert torch.equal(foreground_tokens(background, foreground, "otsu"), character)
    with pytest.raises(ValueError, match="mask rule"):
        foreground_tokens(background, foreground, "kmeans")


def test_mask_reader_reads_with_the_configured_rule():
    from bachvid.method.config import BachVidConfig

    reader = MaskReader(torch.tensor([0]), torch.tensor([1]), real_length=2, chunk_size=8)
    reader.bg_sum, reader.fg_sum, reader.layers = torch.full((8,), 0.7), torch.tensor([.1, .1, .3, .3] * 2), [0]
    assert not reader.mask((2, 2, 2), 1).any()
    assert reader.mask((2, 2, 2), 1, "otsu").reshape(-1).tolist() == [False, False, True, True] * 2
    assert BachVidConfig().mask_rule == "fg_over_bg"  # the paper's
    with pytest.raises(ValueError, match="mask_rule"):
        BachVidConfig(mask_rule="kmeans")


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), share=st.floats(0.1, 0.9))
def test_tokens_from_pixels_equals_the_toy_worlds_token_mask(seed, share):
    """The method's pixel -> token mapping (any causal video VAE) against the toy world's own (its
    64 px frames, 8 px tokens, 4 frames a latent frame after frame 0)."""
    import numpy as np

    from bachvid.method.mask import tokens_from_pixels
    from bachvid.toy import world

    pixels = np.random.default_rng(seed).random((17, 64, 64)) < share
    truth = world.latent_token_mask(pixels)
    assert np.array_equal(tokens_from_pixels(pixels, truth.shape).numpy(), truth)


def test_tokens_from_pixels_refuses_a_mask_that_does_not_fit_the_grid():
    from bachvid.method.mask import tokens_from_pixels

    assert tokens_from_pixels(torch.ones(9, 32, 32, dtype=torch.bool), (3, 2, 2)).all()
    for shape in ((10, 32, 32), (9, 31, 32)):
        with pytest.raises(ValueError, match="does not map onto"):
            tokens_from_pixels(torch.ones(shape, dtype=torch.bool), (3, 2, 2))
