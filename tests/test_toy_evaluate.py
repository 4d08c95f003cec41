"""The pixel-only evaluator reads rendered clips right (>= 98%), also when degraded."""

import numpy as np
import pytest
import torch

from bachvid.toy import world
from bachvid.toy.evaluate import iou, score_clip


def sample(n, seed):
    rng = np.random.default_rng(seed)
    combos = world.all_combinations()
    for _ in range(n):
        combo = combos[rng.integers(len(combos))]
        yield combo, world.render_clip(*combo, seed=int(rng.integers(1 << 30)))


def degrade(frames, rng):
    x = frames.astype(np.float32)
    x = (x + np.roll(x, 1, 1) + np.roll(x, -1, 1) + np.roll(x, 1, 2) + np.roll(x, -1, 2)) / 5  # blur ~1 px
    return np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("degraded, floor, iou_floor", [(False, 0.98, 0.9), (True, 0.95, 0.85)])
def test_evaluator_accuracy_on_rendered_clips(degraded, floor, iou_floor):
    rng = np.random.default_rng(1)
    n, right, ious = 200 if not degraded else 100, np.zeros(3), []
    for combo, clip in sample(n, seed=7 + degraded):
        frames = degrade(clip.frames, rng) if degraded else clip.frames
        score = score_clip(frames)
        right += [score.background_kind == combo[0], score.character_kind == combo[1], score.action == combo[2]]
        ious.append(iou(score.mask, clip.mask))
    assert (right / n).min() >= floor, right / n
    assert np.mean(ious) >= iou_floor


def test_evaluator_is_not_fooled_by_an_empty_scene():
    clip = world.render_clip("city", "robot", "stand", seed=0)
    score = score_clip(clip.background)
    assert score.background_kind == "city" and score.character_share < 0.01


def test_quality_prompts_come_from_the_asked_combinations_and_refuse_others():
    """The bars are measured on held-out combinations; `--combinations training` asks the same of the
    training ones (fit against generalisation); each sample has its own seed, the same on a rerun."""
    from bachvid.toy import quality, world

    training, held_out = world.split_combinations()
    held = quality.held_out_prompts(32, seed=3)
    fit = quality.held_out_prompts(32, seed=3, combinations="training")
    assert {c for c, _ in held} == set(held_out) and {c for c, _ in fit} <= set(training)
    assert len({c for c, _ in fit}) == 32 and held == quality.held_out_prompts(32, seed=3)
    assert len({s for _, s in held}) == 32
    with pytest.raises(ValueError, match="held-out"):
        quality.held_out_prompts(4, combinations="train")


def test_action_binding_counts_wrong_actions_that_training_paired_with_the_scene():
    from bachvid.toy import quality

    trained = {}
    for b, c, a in world.split_combinations()[0]:
        trained.setdefault((b, c), set()).add(a)
    (b, c, held), *_ = world.split_combinations()[1]
    paired = sorted(trained[b, c] - {held})
    unpaired = sorted(set(world.ACTIONS) - trained[b, c] - {held})
    record = lambda shown: {"combo": [b, c, held], "action": shown}  # noqa: E731
    records = [record(held), record(paired[0]), record(paired[-1])] + [record(a) for a in unpaired]
    binding = quality.action_binding(records)
    assert binding["wrong"] == 2 + len(unpaired) and binding["from_trained_pair"] == 2
    assert binding["chance"] == pytest.approx(len(paired) / (len(world.ACTIONS) - 1))
    assert quality.action_binding([record(held)]) == {"wrong": 0, "from_trained_pair": 0, "chance": None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_quality_on_a_missing_gpu_says_so_before_loading(tmp_path):
    """`quality --device cuda` (the GPU recipe's check) on a CPU machine ends with a sentence, not a
    CUDA traceback after the model has loaded."""
    from bachvid.toy import quality

    with pytest.raises(SystemExit, match="no CUDA device"):
        quality.main(["--device", "cuda", "--samples", "1", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_quality_comparison_pairs_samples_by_prompt_and_seed_and_resamples_combinations():
    from bachvid.toy import quality

    held = quality.held_out_prompts(32, seed=0)
    right = lambda items, ok: [{"combo": list(c), "seed": s, "action": c[2] if ok(c) else "none"}  # noqa: E731
                               for c, s in items]
    first_half = {c for c, _ in held[:8]}
    better = right(held, lambda c: True)
    worse = right(held, lambda c: c in first_half)
    d = quality.compare_actions(better, worse)
    assert d["mean"] == pytest.approx(0.5) and d["n"] == 16 and d["samples"] == 32
    assert 0 < d["low"] < 0.5 < d["high"] < 1 and d["significant"]
    assert quality.compare_actions(better, better)["mean"] == 0 and not quality.compare_actions(better, better)["significant"]
    other_seeds = right(quality.held_out_prompts(32, seed=1), lambda c: True)
    assert quality.compare_actions(better, other_seeds) is None
