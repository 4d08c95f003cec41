"""Phrase steering: a one-step read of how much each prompt phrase changes a toy model's guess."""

import pytest

from bachvid.method.prompt import PART_SEPARATOR
from bachvid.toy import steering


def test_each_swap_changes_exactly_its_own_phrase():
    pairs = steering.swapped_prompt_pairs(6, seed=3)
    assert set(pairs) == set(steering.KINDS)
    for k, kind in enumerate(steering.KINDS):
        assert len(pairs[kind]) == 6
        for first, second in pairs[kind]:
            a, b = first.split(PART_SEPARATOR), second.split(PART_SEPARATOR)
            assert [i for i in range(3) if a[i] != b[i]] == [k]


@pytest.fixture(scope="module")
def shipped():
    from bachvid.toy.quality import load

    pipe, defaults, _ = load()
    return pipe, defaults


def test_the_shipped_model_is_steered_by_every_phrase(shipped):
    pipe, defaults = shipped
    figures = steering.phrase_steering(pipe, defaults["num_frames"], defaults["size"], pairs=4)
    assert all(figures[kind] > 0.1 for kind in steering.KINDS), figures


def test_a_prompt_steers_nothing_when_its_swap_is_itself(shipped, monkeypatch):
    pipe, defaults = shipped
    same = {kind: [(a, a) for a, _ in swaps] for kind, swaps in steering.swapped_prompt_pairs(2).items()}
    monkeypatch.setattr(steering, "swapped_prompt_pairs", lambda pairs, seed=0: same)
    figures = steering.phrase_steering(pipe, defaults["num_frames"], defaults["size"], pairs=2)
    assert all(value < 1e-6 for value in figures.values()), figures


def test_action_word_encoding_tells_a_composing_encoder_from_a_scene_bound_one(shipped):
    from types import SimpleNamespace

    from bachvid.backbones.tiny import tiny_text_encoder
    from bachvid.toy.train import world_tokenizer

    pipe, _ = shipped
    composing = steering.action_word_encoding(pipe)  # the v1 model composes held-out combinations
    assert composing["same_action"] > composing["same_pair"] + 0.3, composing
    tokenizer = world_tokenizer()
    token_only = SimpleNamespace(tokenizer=tokenizer, text_encoder=tiny_text_encoder(len(tokenizer), 64, num_layers=0))
    assert steering.action_word_encoding(token_only)["same_action"] == pytest.approx(1.0)
