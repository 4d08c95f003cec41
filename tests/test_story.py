"""Story files: both forms parse, round-trip, and every mistake is reported with its file and line."""

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bachvid.io.story import Shot, Story, StoryError, _visible, load_stories, parse_story_mapping, parse_story_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TEXT = """a green meadow # a red robot # stands still
a green meadow # a red robot # walks to the left
a green meadow # a red robot # jumps

a sandy desert # a white ghost # stands still
a blue ocean # a white ghost # comes closer
"""


def test_text_stories_identity_shots_and_background_switching():
    first, second = parse_story_text(TEXT, "s.txt")
    assert first.name == "story-000" and second.name == "story-001" and first.character == "a red robot"
    assert first.identity == Shot("a green meadow", "stands still", 1)
    assert [s.action for s in first.shots] == ["walks to the left", "jumps"] and [s.line for s in first.shots] == [2, 3]
    assert first.shared_background and (first.path, first.line) == ("s.txt", 1)
    assert not second.shared_background and second.shots[0].background == "a blue ocean" and second.line == 5
    assert first.shot_seed(0, 10) == 11 and first.shot_seed(1, 10) == 12


def test_story_error_reads_like_a_compiler_error():
    assert str(StoryError("bad", "f.txt", 3)) == "f.txt:3: bad"
    assert str(StoryError("bad", "f.txt")) == "f.txt: bad"
    assert str(StoryError("bad", line=3)) == "3: bad"
    assert str(StoryError("bad")) == "bad" and isinstance(StoryError("bad"), ValueError)


@pytest.mark.parametrize("text, line, message", [
    ("a # b # c\na # b\n", 2, "3 parts"),
    ("a # b # c\na # b # c # d\n", 2, "3 parts"),
    ("a # b # c\na #  # c\n", 2, "character is empty"),
    ("a # b # c\n \t # b # c\n", 2, "background is empty"),
    ("a # b # c\n", 1, "at least one shot"),
    ("a # b # c\na # b # c\n\n\nd # e # f\n", 5, "at least one shot"),
    ("a # b # c\na # x # c\n", 2, "same character"),
    ("\n \n\t\n", None, "no stories"),
    ("", None, "no stories"),
])
def test_text_errors_name_the_line(text, line, message):
    with pytest.raises(StoryError, match=message) as info:
        parse_story_text(text, "bad.txt")
    assert info.value.line == line and info.value.path == "bad.txt"
    assert str(info.value).startswith("bad.txt:" if line is None else f"bad.txt:{line}:")


def test_line_numbers_follow_newlines_only():
    # a form feed is a line break to str.splitlines() but not to editors or grep -n
    with pytest.raises(StoryError) as info:
        parse_story_text("a\x0c # b # c\na # b # c\na # b\n")
    assert info.value.line == 3


# Fuzzing the text parser ----------------------------------------------------------------------

junk = st.text(alphabet="ab #\t\x0c\r", max_size=8)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.lists(junk, max_size=5).map("#".join), max_size=8))
def test_text_parser_never_crashes_and_errors_point_at_a_written_line(lines):
    try:
        stories = parse_story_text("\n".join(lines), "f.txt")
    except StoryError as error:
        assert error.path == "f.txt"
        if error.line is not None:
            assert lines[error.line - 1].strip()  # a real, non-blank line
        else:
            assert not any(line.strip() for line in lines)
    else:
        for story in stories:
            assert story.shots and story.character.strip()
            assert all(s.background.strip() and s.action.strip() for s in (story.identity, *story.shots))


WORDS = st.sampled_from(["a green meadow", "a red robot", "jumps", "x", "a b c"])
DEFECTS = {"missing": "3 parts", "extra": "3 parts", "empty": "is empty", "blank": "is empty",
           "character": "same character", "alone": "at least one shot"}


@st.composite
def text_with_one_defect(draw):
    """A file of good stories with exactly one mistake planted; returns (text, its line, kind)."""
    kind = draw(st.sampled_from(sorted(DEFECTS)))
    sizes = draw(st.lists(st.integers(2, 4), min_size=1, max_size=3))
    target = draw(st.integers(0, len(sizes) - 1))
    if kind == "alone":
        sizes[target] = 1
    row = draw(st.integers(1 if kind == "character" else 0, sizes[target] - 1)) if kind != "alone" else 0
    lines = [""] * draw(st.integers(0, 2))
    expected = None
    for b, size in enumerate(sizes):
        if b:
            lines += draw(st.lists(st.sampled_from(["", "  ", "\t"]), min_size=1, max_size=2))
        character = draw(WORDS)
        for r in range(size):
            parts = [draw(WORDS), character, draw(WORDS)]
            if (b, r) == (target, row):
                expected = len(lines) + 1
                which = draw(st.integers(0, 2))
                if kind == "missing":
                    parts = parts[:draw(st.integers(1, 2))]
                elif kind == "extra":
                    parts += draw(st.lists(WORDS, min_size=1, max_size=2))
                elif kind == "empty":
                    parts[which] = ""
                elif kind == "blank":
                    parts[which] = " \t "
                elif kind == "character":
                    parts[1] = character + " too"
            lines.append(draw(st.sampled_from([" # ", "#", "  #\t"])).join(parts))
    return "\n".join(lines), expected, kind


@settings(max_examples=150, deadline=None)
@given(case=text_with_one_defect())
def test_a_planted_mistake_is_reported_at_its_line(case):
    text, line, kind = case
    with pytest.raises(StoryError, match=DEFECTS[kind]) as info:
        parse_story_text(text, "f.txt")
    assert info.value.line == line and str(info.value).startswith(f"f.txt:{line}: ")


phrase = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="#\n"), min_size=1,
                 max_size=12).map(str.strip).filter(_visible)


@st.composite
def stories(draw):
    result = []
    for index in range(draw(st.integers(1, 3))):
        character = draw(phrase)
        shots = draw(st.lists(st.tuples(phrase, phrase), min_size=2, max_size=4))
        shots = tuple(Shot(b, a) for b, a in shots)
        result.append(Story(f"story-{index:03d}", character, shots[0], shots[1:],
                            shared_background=len({s.background for s in shots}) == 1))
    return result


def without_positions(story: Story) -> Story:
    strip = lambda shot: Shot(shot.background, shot.action)  # noqa: E731
    return Story(story.name, story.character, strip(story.identity), tuple(map(strip, story.shots)),
                 story.shared_background, story.seed, story.num_frames, story.height, story.width)


@settings(max_examples=100, deadline=None)
@given(written=stories())
def test_text_round_trip(written):
    text = "\n\n".join("\n".join(f"{s.background} # {story.character} # {s.action}"
                                 for s in (story.identity, *story.shots)) for story in written)
    assert [without_positions(s) for s in parse_story_text(text)] == written


@settings(max_examples=60, deadline=None)
@given(written=stories(), dump=st.sampled_from([yaml.safe_dump, json.dumps]), seed=st.none() | st.integers(0, 99))
def test_yaml_and_json_round_trip(written, dump, seed):
    entries = []
    for story in written:
        entry = {"name": story.name, "character": story.character, "background": story.identity.background,
                 "identity": story.identity.action, "actions": [s.action for s in story.shots],
                 "backgrounds": [s.background for s in story.shots]}
        if seed is not None:
            entry["seed"] = seed
        entries.append(entry)
    parsed = parse_story_mapping(dump({"stories": entries}))
    expected = [Story(**{**without_positions(s).__dict__, "seed": seed}) for s in written]
    assert [without_positions(s) for s in parsed] == expected


# YAML and JSON ----------------------------------------------------------------------------------

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
    assert a.name == "robot-day" and a.identity == Shot("a green meadow", "stands still", 5) and len(a.shots) == 2
    assert (a.seed, a.num_frames, a.height, a.width, a.line) == (3, 17, None, None, 2)
    assert a.shared_background and [s.line for s in a.shots] == [6, 6]
    assert b.name == "story-001" and b.identity == Shot("a sandy desert", "stands still", 12)
    assert b.shots == (Shot("a blue ocean", "comes closer", 13),) and not b.shared_background


def test_a_bare_list_and_character_only_injection():
    (story,) = parse_story_mapping("- background: m\n  character: r\n  actions: [a, b]\n  shared_background: false\n")
    assert story.identity.action == "a" and story.shots == (Shot("m", "b", 3),) and not story.shared_background


HEAD = "stories:\n  - background: a\n    character: b\n"


@pytest.mark.parametrize("text, line, message", [
    (HEAD + "    actions: [c, d]\n    sed: 1\n", 5, "unknown key 'sed'; did you mean 'seed'"),
    (HEAD + "    actions: [c, d]\n    colour: 1\n", 5, "unknown key 'colour'; known keys: name"),
    (HEAD + "    actions: [c, d]\n    character: e\n", 5, "'character' is given twice"),
    (HEAD + "    actions: [c, d]\n    seed: x\n", 5, "'seed' must be an integer >= 0, got 'x'"),
    (HEAD + "    actions: [c, d]\n    seed: true\n", 5, "'seed' must be an integer"),
    (HEAD + "    actions: [c, d]\n    width: 2.5\n", 5, "'width' must be an integer"),
    (HEAD + "    actions: [c, d]\n    shared_background: yes please\n", 5, "true or false"),
    (HEAD + "    actions: [c, d]\n    backgrounds: [e, f]\n", 5, "'backgrounds' has 2 entries but the story has 1"),
    (HEAD + "    actions: [c, d]\n    backgrounds: [e]\n    shared_background: true\n", 6, "different backgrounds"),
    (HEAD + "    actions: [c, d]\n    name: ..\n", 5, "'name' names a folder"),
    (HEAD + "    actions: [c, d]\n    name: a/b\n", 5, "'name' names a folder"),
    (HEAD + "    actions: [c, '']\n", 4, "each action must be a non-empty text"),
    (HEAD + "    actions: c\n", 4, "'actions' must be a non-empty list"),
    (HEAD + "    actions: [c]\n", 4, "at least two actions"),
    (HEAD + "    actions: [c, d]\n  - name: X\n    background: a\n    character: b\n    actions: [c, d]\n"
            "  - name: x\n    background: a\n    character: b\n    actions: [c, d]\n", 9, "first on line 5"),
    (HEAD + "    actions: [c, d]\n  - just text\n", 5, "must be a mapping"),
    ("stories:\n  - background: a\n    actions: [c, d]\n", 2, "needs a 'character'"),
    ("stories:\n  - background: a\n    character: ''\n    actions: [c, d]\n", 3, "non-empty"),
    ("stories:\n  - background: a\n    character: [b]\n    actions: [c, d]\n", 3, "non-empty text"),
    ("background: a\ncharacter: b\nactions: [c, d]\n", 1, "must still be listed"),
    ("stories: []\n", 1, "non-empty list"),
    ("storys: []\n", 1, "did you mean 'stories'"),
    ("stories: [\n", 2, "not valid"),
    ("", None, "no stories"),
])
def test_yaml_errors_name_the_line(text, line, message):
    with pytest.raises(StoryError, match=message) as info:
        parse_story_mapping(text, "bad.yaml")
    assert (info.value.line, info.value.path) == (line, "bad.yaml")


def test_json_is_read_with_line_numbers(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"stories": [\n {"background": "a", "character": "b",\n  "actions": ["c", "d"], "frames": 0}\n]}')
    with pytest.raises(StoryError, match="'frames' must be an integer >= 1") as info:
        load_stories(path)
    assert info.value.line == 3 and info.value.path == str(path)


def test_json_escaped_astral_characters_survive():
    (story,) = parse_story_mapping(json.dumps([{"background": "m", "character": "a robot \U0001F916",
                                                "actions": ["a", "b"]}]))
    assert story.character == "a robot \U0001F916"


def test_load_dispatches_on_suffix_and_reads_a_bom(tmp_path):
    (tmp_path / "s.TXT").write_text("\ufeffm # r # a\nm # r # b\n", encoding="utf-8")
    (story,) = load_stories(tmp_path / "s.TXT")
    assert story.identity.background == "m" and story.path == str(tmp_path / "s.TXT")
    (tmp_path / "s.yml").write_text("- background: m\n  character: r\n  actions: [a, b]\n")
    assert load_stories(tmp_path / "s.yml")[0].shots == (Shot("m", "b", 3),)


def test_unknown_suffix_missing_file_and_folder(tmp_path):
    (tmp_path / "s.csv").write_text("x")
    with pytest.raises(StoryError, match="unknown story file type '.csv'"):
        load_stories(tmp_path / "s.csv")
    with pytest.raises(StoryError, match="no such story file") as info:
        load_stories(tmp_path / "missing.txt")
    assert info.value.path == str(tmp_path / "missing.txt")
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(StoryError, match="folder"):
        load_stories(tmp_path / "d.txt")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9 # r # a\n")
    with pytest.raises(StoryError, match="cannot read"):
        load_stories(tmp_path / "latin.txt")


def test_examples_parse_and_speak_the_toy_world():
    from bachvid.toy import world

    text = load_stories(EXAMPLES / "story.txt")
    mapped = load_stories(EXAMPLES / "stories.yaml")
    assert len(text) == 1 and len(text[0].shots) == 3
    assert len(mapped) == 2 and not all(s.shared_background for s in mapped)
    for story in text + mapped:
        assert story.character in world.CHARACTERS.values()
        for shot in (story.identity, *story.shots):
            assert shot.background in world.BACKGROUNDS.values() and shot.action in world.ACTIONS.values()


def test_shot_seeds_option_and_its_errors():
    text = ("stories:\n  - background: a green meadow\n    character: a red robot\n"
            "    actions: [stands still, jumps, sits]\n    shot_seeds: identity\n")
    (story,) = parse_story_mapping(text, "s.yaml")
    assert story.shot_seeds == "identity" and [story.shot_seed(i, 7) for i in range(2)] == [7, 7]
    (plain,) = parse_story_mapping(text.replace("    shot_seeds: identity\n", ""), "s.yaml")
    assert [plain.shot_seed(i, 7) for i in range(2)] == [8, 9]
    with pytest.raises(StoryError) as info:
        parse_story_mapping(text.replace("identity\n", "same\n"), "s.yaml")
    assert info.value.line == 5 and "shot_seeds" in str(info.value)


def test_unknown_yaml_tags_fifos_and_invisible_text_are_clean_errors(tmp_path):
    import os

    for tag in ("!foo", "!!python/object:os.system"):
        with pytest.raises(StoryError) as info:
            parse_story_mapping(f"stories:\n  - background: {tag} a\n    character: x\n    actions: [a, b]\n",
                                "t.yaml")
        assert (info.value.path, info.value.line) == ("t.yaml", 2) and "not valid here" in str(info.value)
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(StoryError, match="not a regular file"):
        load_stories(fifo)
    with pytest.raises(StoryError, match="'character' must be a non-empty text"):
        parse_story_mapping('stories:\n  - background: a\n    character: "\\u200b\\u200d"\n    actions: [a, b]\n')
    with pytest.raises(StoryError, match="the character is empty"):
        parse_story_text("a meadow # \u200b # stands\na meadow # \u200b # jumps\n")
