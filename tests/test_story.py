"""Story files: both forms parse, and every mistake is reported with its file and line."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bachvid.story import StoryError, load_stories, parse_story_mapping, parse_story_text

TEXT = """a green meadow # a red robot # stands still
a green meadow # a red robot # walks to the left
a green meadow # a red robot # jumps

a sandy desert # a white ghost # stands still
a blue ocean # a white ghost # comes closer
"""


def test_text_stories_identity_shots_and_background_switching():
    first, second = parse_story_text(TEXT, "s.txt")
    assert first.name == "story-000" and first.character == "a red robot"
    assert first.identity.action == "stands still" and [s.action for s in first.shots] == ["walks to the left", "jumps"]
    assert first.shared_background and [s.line for s in first.shots] == [2, 3]
    assert not second.shared_background and second.shots[0].background == "a blue ocean"
    assert first.shot_seed(0, 10) == 11 and first.shot_seed(1, 10) == 12


@pytest.mark.parametrize("text, line, message", [
    ("a # b # c\na # b\n", 2, "3 parts"),
    ("a # b # c\na # b # c # d\n", 2, "3 parts"),
    ("a # b # c\na #  # c\n", 2, "character is empty"),
    ("a # b # c\n", 1, "at least one shot"),
    ("a # b # c\na # x # c\n", 2, "same character"),
    ("\n\n", None, "no stories"),
])
def test_text_errors_name_the_line(text, line, message):
    with pytest.raises(StoryError, match=message) as info:
        parse_story_text(text, "bad.txt")
    assert info.value.line == line and info.value.path == "bad.txt"
    assert str(info.value).startswith("bad.txt")


part = st.text(alphabet="abc #\t", max_size=8)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.lists(part, min_size=0, max_size=5).map(lambda xs: "#".join(xs)), min_size=0, max_size=8))
def test_text_parser_never_crashes_and_errors_carry_a_real_line(lines):
    text = "\n".join(lines)
    try:
        stories = parse_story_text(text, "f.txt")
    except StoryError as error:
        assert error.path == "f.txt"
        assert error.line is None or 1 <= error.line <= max(1, len(lines))
        if error.line is not None:
            bad = lines[error.line - 1]
            assert bad.strip()  # errors point at a non-blank line
    else:
        for story in stories:
            assert story.shots and story.character.strip()
            assert all(s.background.strip() and s.action.strip() for s in (story.identity, *story.shots))


YAML = """stories:
  - name: robot-day
    background: a green meadow
    character: a red robot
    identity: stands still
    actions: [walks to the left, jumps]
    seed: 3
    frames: 17
  - background: a sandy desert
    character: a white ghost
    actions:
      - stands still
      - comes closer
    backgrounds: [a blue ocean]
    shared_background: false
"""


def test_yaml_stories_with_options():
    a, b = parse_story_mapping(YAML, "s.yaml")
    assert a.name == "robot-day" and a.identity.action == "stands still" and len(a.shots) == 2
    assert (a.seed, a.num_frames, a.height) == (3, 17, None)
    assert b.name == "story-001" and b.identity.action == "stands still" and b.identity.background == "a sandy desert"
    assert b.shots[0].background == "a blue ocean" and not b.shared_background


@pytest.mark.parametrize("text, line, message", [
    ("stories:\n  - background: a\n    character: b\n    actions: [c, d]\n    sed: 1\n", 5, "unknown key 'sed'"),
    ("stories:\n  - background: a\n    character: b\n    actions: [c, d]\n    seed: x\n", 5, "integer"),
    ("stories:\n  - background: a\n    actions: [c, d]\n", 2, "needs a 'character'"),
    ("stories:\n  - background: a\n    character: ''\n    actions: [c, d]\n", 3, "non-empty"),
    ("stories:\n  - background: a\n    character: b\n    actions: [c]\n", 4, "more action"),
    ("stories: [\n", 2, "not valid"),
])
def test_yaml_errors_name_the_line(text, line, message):
    with pytest.raises(StoryError, match=message) as info:
        parse_story_mapping(text, "bad.yaml")
    assert info.value.line == line


def test_json_is_read_with_line_numbers(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"stories": [\n {"background": "a", "character": "b",\n  "actions": ["c", "d"], "frames": 0}\n]}')
    with pytest.raises(StoryError, match="frames") as info:
        load_stories(path)
    assert info.value.line == 3 and info.value.path == str(path)


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "s.csv").write_text("x")
    with pytest.raises(StoryError, match="unknown story file type"):
        load_stories(tmp_path / "s.csv")
    with pytest.raises(StoryError, match="no such story file"):
        load_stories(tmp_path / "missing.txt")
