"""Prompts and the token spans of their parts.

BachVid needs to know which text tokens describe the background and which the character: the
foreground mask compares a video token's attention to those two spans. The spans come from the
tokenizer's character offsets (not from re-tokenising prefixes, which shifts at word joins).
"""

from __future__ import annotations

from dataclasses import dataclass

PART_SEPARATOR = ", "


def compose_prompt(background: str, character: str, action: str) -> str:
    """The model prompt of one shot: background, character, action, in that order."""
    return PART_SEPARATOR.join(part.strip() for part in (background, character, action))


class PromptTooLong(ValueError):
    """The background or the character would be cut by the model's text-length limit."""

    def __init__(self, part: str, needed: int, limit: int):
        self.part, self.needed, self.limit = part, needed, limit
        super().__init__(
            f"the {part} would be cut by the text-length limit: it ends at token {needed} "
            f"but the model reads only {limit} tokens; shorten the {part} description"
        )


FOREGROUND_SPANS = ("after_background", "character")
"""The text spans a foreground mask may stand on (BachVidConfig.mask_foreground, PromptSpans.foreground)."""


@dataclass(frozen=True)
class PromptSpans:
    """Token indices (into the padded text sequence) of each prompt part.

    `real_length` counts every non-padding token, special tokens included: the mask's softmax
    runs over these and ignores padding.
    """

    prompt: str
    background: tuple[int, ...]
    character: tuple[int, ...]
    action: tuple[int, ...]
    real_length: int

    def foreground(self, which: str = "after_background") -> tuple[int, ...]:
        """Foreground tokens (one of FOREGROUND_SPANS): everything after the background
        (CharaConsist) or the character alone."""
        if which == "after_background":
            return self.character + self.action
        if which == "character":
            return self.character
        raise ValueError(f"unknown foreground span {which!r}: use {' or '.join(map(repr, FOREGROUND_SPANS))}")


def token_spans(tokenizer, background: str, character: str, action: str, max_length: int) -> PromptSpans:
    """Find the token spans of the three parts of `compose_prompt(...)`.

    Raises PromptTooLong when a background or character token would fall past the limit; a cut
    action only loses the end of the action, which the model tolerates (diffusers warns too).
    """
    prompt = compose_prompt(background, character, action)
    starts, parts = [], []
    cursor = 0
    for name, text in (("background", background), ("character", character), ("action", action)):
        text = text.strip()
        begin = prompt.index(text, cursor)
        starts.append((begin, begin + len(text)))
        parts.append(name)
        cursor = begin + len(text)

    encoded = tokenizer(
        prompt,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        add_special_tokens=True,
        truncation=False,
    )
    offsets = encoded["offset_mapping"]
    special = encoded["special_tokens_mask"]
    # Content tokens the model keeps: max_length minus the special tokens the tokenizer appends.
    keep = max_length - tokenizer.num_special_tokens_to_add(pair=False)

    found: dict[str, list[int]] = {name: [] for name in parts}
    for index, ((lo, hi), is_special) in enumerate(zip(offsets, special)):
        if is_special:
            continue
        for name, (begin, end) in zip(parts, starts):
            overlaps = lo < end and hi > begin
            empty_inside = lo == hi and begin <= lo < end
            if overlaps or empty_inside:
                found[name].append(index)
                break

    for name in ("background", "character"):
        if not found[name]:
            raise ValueError(f"the {name} {dict(zip(parts, (background, character, action)))[name]!r} has no tokens")
        if found[name][-1] >= keep:
            raise PromptTooLong(name, found[name][-1] + 1, keep)

    content = sum(1 for s in special if not s)
    real_length = min(content, keep) + tokenizer.num_special_tokens_to_add(pair=False)
    return PromptSpans(
        prompt=prompt,
        background=tuple(found["background"]),
        character=tuple(found["character"]),
        action=tuple(i for i in found["action"] if i < keep),
        real_length=real_length,
    )
