"""Token spans come from tokenizer offsets and refuse prompts whose background or character is cut."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bachvid.backbones.tiny import build_word_tokenizer
from bachvid.method.prompt import PromptTooLong, compose_prompt, token_spans

WORDS = "a green meadow red robot walks to the left big old house , .".split()


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(WORDS, model_max_length=32)


def test_spans_cover_each_part(tokenizer):
    spans = token_spans(tokenizer, "a green meadow", "a red robot", "walks to the left", max_length=32)
    ids = tokenizer(spans.prompt).input_ids
    decode = lambda idx: tokenizer.decode([ids[i] for i in idx])  # noqa: E731
    assert decode(spans.background) == "a green meadow"
    assert decode(spans.character) == "a red robot"
    assert decode(spans.action) == "walks to the left"
    assert spans.real_length == len(ids)  # content + </s>
    assert spans.foreground("character") == spans.character
    assert spans.foreground() == spans.character + spans.action


def test_background_cut_by_the_limit_is_refused(tokenizer):
    background = " ".join(["big old house"] * 4)
    with pytest.raises(PromptTooLong, match="background"):
        token_spans(tokenizer, background, "a red robot", "walks", max_length=8)


def test_character_cut_by_the_limit_is_refused(tokenizer):
    with pytest.raises(PromptTooLong, match="character"):
        token_spans(tokenizer, "a green meadow", "a big old red robot", "walks", max_length=8)


def test_cut_action_is_tolerated(tokenizer):
    spans = token_spans(tokenizer, "a meadow", "a robot", "walks to the left to the left", max_length=8)
    assert spans.background and spans.character and max(spans.action) < 7


@settings(max_examples=40, deadline=None)
@given(parts=st.lists(st.lists(st.sampled_from(WORDS[:-2]), min_size=1, max_size=5), min_size=3, max_size=3))
def test_spans_are_disjoint_ordered_and_decode_to_their_parts(tokenizer, parts):
    background, character, action = (" ".join(p) for p in parts)
    spans = token_spans(tokenizer, background, character, action, max_length=64)
    assert spans.prompt == compose_prompt(background, character, action)
    assert max(spans.background) < min(spans.character) <= max(spans.character) < min(spans.action)
    ids = tokenizer(spans.prompt).input_ids
    assert tokenizer.decode([ids[i] for i in spans.character]) == character
