"""Step plans follow the method: who may see which identity tokens, when, and at which layers."""

import pytest
import torch

from bachvid.method.config import BachVidConfig
from bachvid.method.match import Matches
from bachvid.method.plan import Layers, PlanMaker, Schedule, background_injection, foreground_injection

LAYERS = Layers(vital=frozenset({0, 1}), mask=frozenset({2}), match=frozenset({2, 3}))
TEXT = 5


def masks():
    identity_fg = torch.tensor([False, True, True, False, False, False])
    current_fg = torch.tensor([False, False, True, True, False, False])
    return identity_fg, current_fg


def test_schedule_turns_fractions_into_steps_and_merge_weights():
    s = Schedule.of(BachVidConfig(), 50)
    assert (s.mask_step, s.match_step, s.inject) == (10, 10, range(0, 40))
    assert s.prerun_steps == 11
    w = s.merge_weights
    assert w[0] == 0 and w[1] == pytest.approx(0.8) and w[10] == pytest.approx(0.8)
    assert w[11] == pytest.approx(0.8) and 0 < w[20] < 0.8 and w[31] == 0 and w[49] == 0
    assert all(a >= b for a, b in zip(w[11:32], w[12:32]))  # cosine decay never rises
    assert all(x == 0 for x in Schedule.of(BachVidConfig(token_merge=False), 50).merge_weights)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="fraction"):
        BachVidConfig(tau_mask=1.5)
    with pytest.raises(ValueError, match="odd"):
        BachVidConfig(mask_open_kernel=2)
    with pytest.raises(ValueError, match="do not exist"):
        Layers.resolve(BachVidConfig(vital_layers=(0, 9)), LAYERS, num_layers=4)


def test_background_injection_uses_shared_background_positions_for_background_queries():
    identity_fg, current_fg = masks()
    inj = background_injection(identity_fg, current_fg, TEXT)
    assert inj.positions.tolist() == [0, 4, 5]  # background in both
    assert inj.sources.tolist() == [TEXT + 0, TEXT + 4, TEXT + 5]  # same position in the identity
    assert inj.queries.tolist() == [TEXT + i for i in (0, 1, 4, 5)]  # current background only, no text


def test_foreground_injection_repositions_matched_tokens_at_current_positions():
    _, current_fg = masks()
    inj = foreground_injection(current_fg, torch.tensor([2, 3]), torch.tensor([1, 2]), TEXT)
    assert inj.sources.tolist() == [TEXT + 1, TEXT + 2]
    assert inj.positions.tolist() == [2, 3]  # RoPE of the current tokens (point tracking)
    assert inj.queries.tolist() == [TEXT + 2, TEXT + 3]


def test_identity_keeps_what_shots_use_and_nothing_else():
    maker = PlanMaker(BachVidConfig(), LAYERS, num_steps=10, text_length=TEXT)
    plans = maker.identity_plans()
    assert plans(0).keep_key_value == LAYERS.vital and plans(7).keep_key_value == LAYERS.vital
    assert plans(8).keep_key_value == frozenset()  # inject_end = 0.8
    assert plans(2).read_mask == LAYERS.mask and plans(3).read_mask == frozenset()
    assert plans(2).keep_output >= LAYERS.match  # matching reads the identity's outputs at tau_match
    assert plans(9).is_plain


def test_shot_plans_switch_background_off_and_gate_by_step():
    identity_fg, current_fg = masks()
    matches = Matches(index=torch.tensor([0, 0, 1, 2, 0, 0]), similarity=torch.full((6,), 0.9))
    shared = PlanMaker(BachVidConfig(), LAYERS, 10, TEXT).shot_plans(identity_fg, current_fg, matches)
    switched = PlanMaker(BachVidConfig(shared_background=False), LAYERS, 10, TEXT).shot_plans(
        identity_fg, current_fg, matches)
    assert len(shared(0).injections) == 2 and len(switched(0).injections) == 1
    assert switched(0).injections[0].positions.tolist() == [2, 3]  # foreground only
    assert shared(1).merge is not None and shared(1).merge.current.tolist() == [2, 3]
    assert shared(9).is_plain  # past inject_end
    prerun = PlanMaker(BachVidConfig(), LAYERS, 10, TEXT).prerun_plans(identity_fg)
    assert len(prerun(0).injections) == 1 and prerun(2).read_mask == LAYERS.mask and prerun(2).read_match == LAYERS.match


def test_background_merge_adds_same_position_background_pairs_only_when_asked():
    """background_merge (beyond the paper) also blends background-in-both tokens toward the
    identity's token at the same position, at that multiple of the merge weight; 0 is the paper."""
    import pytest
    import torch

    from bachvid.method.config import BachVidConfig
    from bachvid.method.match import Matches
    from bachvid.method.plan import Layers, PlanMaker

    identity_fg = torch.tensor([[[True, False], [False, False]]])
    current_fg = torch.tensor([[[False, True], [False, False]]])
    matches = Matches(torch.tensor([0, 0, 0, 0]), torch.ones(4))
    layers = Layers(frozenset({0}), frozenset({0}), frozenset({0}))
    step = 1  # full merge weight (merge_strength 0.8)

    def merge(**knobs):
        maker = PlanMaker(BachVidConfig(**knobs), layers, num_steps=10, text_length=3)
        return maker.shot_plans(identity_fg, current_fg, matches)(step).merge

    paper = merge()
    assert paper.current.tolist() == [1] and paper.identity.tolist() == [0]
    both = merge(background_merge=0.5)
    assert both.current.tolist() == [1, 2, 3] and both.identity.tolist() == [0, 2, 3]
    assert both.weight.tolist() == pytest.approx([0.8, 0.4, 0.4])
    assert merge(background_merge=0.5, shared_background=False).current.tolist() == [1]
    with pytest.raises(ValueError, match="background_merge"):
        BachVidConfig(background_merge=1.5)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_background_merge_follows_the_matches_device_and_dtype(device, dtype):
    """Masks stay on the host while matches (and their float16 similarities) may live on the GPU:
    the merge's indices and weights follow the matches, whatever background_merge adds (the first
    GPU run of background_merge died in torch.cat mixing a CPU background with CUDA matches)."""
    identity_fg, current_fg = masks()
    matches = Matches(index=torch.tensor([0, 0, 1, 2, 0, 0], device=device),
                      similarity=torch.full((6,), 0.9, dtype=dtype, device=device))
    maker = PlanMaker(BachVidConfig(background_merge=1.0), LAYERS, 10, TEXT)
    merge = maker.shot_plans(identity_fg, current_fg, matches)(1).merge
    assert merge.current.tolist() == [2, 3, 0, 4, 5]  # matched foreground, then background in both
    for tensor in (merge.current, merge.identity, merge.weight):
        assert tensor.device.type == device
    assert merge.weight.dtype == dtype


# A background injection by place (beyond the paper): each tile's queries see nearby identity keys only

def test_a_windowed_background_injection_shows_each_query_only_keys_near_its_tile():
    from bachvid.method.plan import background_injections

    g = torch.Generator().manual_seed(0)
    identity_fg, current_fg = torch.rand(2, 6, 7, generator=g) < 0.3, torch.rand(2, 6, 7, generator=g) < 0.3
    whole = background_injection(identity_fg, current_fg, TEXT)
    for window in (0, 1, 2):
        parts = background_injections(identity_fg, current_fg, TEXT, window=window)
        queries = torch.cat([p.queries for p in parts])
        assert queries.unique().numel() == queries.numel()  # every query in one tile only
        assert set(queries.tolist()) <= set(whole.queries.tolist())
        for p in parts:
            assert p.at_source and torch.equal(p.sources, p.positions + TEXT)
            assert set(p.positions.tolist()) <= set(whole.positions.tolist())  # background in both only
            qy, qx = ((p.queries - TEXT) % 42) // 7, (p.queries - TEXT) % 7
            ky, kx = (p.positions % 42) // 7, p.positions % 7
            # keys lie within `window` of the tile (the tile spans window + 1 tokens a side)
            assert (ky.max() - qy.min() <= 2 * window) and (qy.max() - ky.min() <= 2 * window)
            assert (kx.max() - qx.min() <= 2 * window) and (qx.max() - kx.min() <= 2 * window)
    # a query whose nearby identity background is empty sees no extra key: it is in no tile's set
    assert len(background_injections(identity_fg, current_fg, TEXT, window=0)) > len(
        background_injections(identity_fg, current_fg, TEXT, window=2))


def test_a_window_as_large_as_the_frame_is_the_whole_injection():
    from bachvid.method.plan import background_injections

    identity_fg, current_fg = torch.zeros(2, 3, 4, dtype=torch.bool), torch.zeros(2, 3, 4, dtype=torch.bool)
    identity_fg[:, 1, 1] = True
    current_fg[:, 2, 3] = True
    whole = background_injection(identity_fg, current_fg, TEXT)
    (one,) = background_injections(identity_fg, current_fg, TEXT, window=4)
    assert torch.equal(one.queries, whole.queries) and torch.equal(one.sources, whole.sources)
    (same,) = background_injections(identity_fg, current_fg, TEXT)
    assert torch.equal(same.positions, whole.positions)


def test_background_injection_window_must_be_a_non_negative_number_of_tokens():
    with pytest.raises(ValueError, match="background_injection_window"):
        BachVidConfig(background_injection_window=-1)


@pytest.mark.usefixtures("one_thread")
def test_a_windowed_injection_runs_and_a_frame_wide_window_changes_nothing(tiny_pipe, settings):
    from conftest import make_story

    story = make_story(actions=("stands still", "walks to the left"))

    def latents(**knobs):
        return [r.latents for r in tiny_pipe.generate(story, settings, BachVidConfig(**knobs), progress=False)]

    paper, wide, local = latents(), latents(background_injection_window=64), latents(background_injection_window=0)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(paper, wide))
    assert torch.equal(paper[0], local[0])  # the identity is not touched
    assert (paper[1] - local[1]).abs().max() > 1e-4  # the shot's background injection is by place now
