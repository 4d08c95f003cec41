"""Stories: one character, an identity shot and the shots that must stay consistent with it.

Two file forms:
- text, CharaConsist style: one `background # character # action` per line, a blank line
  between stories; the first line of a story is its identity shot;
- YAML or JSON (both read by PyYAML, so both report line numbers) for per-story options.
Every error names the file and the line, because a batch of stories is written by hand and a
typo found after an hour of generation is an hour lost.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml


class StoryError(ValueError):
    """A mistake in a story file; str() reads `path:line: message` like a compiler error."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message, self.path, self.line = message, path, line
        where = ":".join(str(x) for x in (path, line) if x is not None)
        super().__init__(f"{where}: {message}" if where else message)


SHOT_SEEDS = ("own", "identity")


@dataclass(frozen=True)
class Shot:
    background: str
    action: str
    line: int | None = None  # where it was written, for errors found later (e.g. a prompt too long)


@dataclass(frozen=True)
class Story:
    name: str  # also the output folder's name
    character: str
    identity: Shot
    shots: tuple[Shot, ...]
    shared_background: bool = True  # False: backgrounds switch, only the character is carried over
    seed: int | None = None  # None: the command line's or the model's default
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    path: str | None = None
    line: int | None = None
    shot_seeds: str | None = None
    """"own": shot i uses seed + 1 + i, its own noise; "identity": every shot uses the identity's
    seed (the "same prompt, same seed" trick, under BachVid); None: the model's default
    (`GenerationSettings.shot_seeds`: the toy model's is "identity", +0.8 dB of background and
    +11 points of belt kept over "own" on the 32 held-out stories of docs/results)."""

    def __post_init__(self):
        if self.shot_seeds is not None and self.shot_seeds not in SHOT_SEEDS:
            raise StoryError(f"shot_seeds must be one of {', '.join(SHOT_SEEDS)}, got {self.shot_seeds!r}",
                             self.path, self.line)

    def shot_seed(self, index: int, base_seed: int, default: str = "own") -> int:
        """The identity uses the base seed; shot i uses base + 1 + i (its own noise) or, with
        shot_seeds="identity", the base seed too. `default`: the policy when the story names none."""
        return base_seed if (self.shot_seeds or default) == "identity" else base_seed + 1 + index


def load_stories(path) -> list[Story]:
    """Read a story file; the suffix picks the form (.txt, .yaml/.yml, .json)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".yaml", ".yml", ".json"):
        raise StoryError(f"unknown story file type {suffix or '(no suffix)'!r}: use .txt, .yaml, .yml or .json",
                         str(path))
    if path.is_dir():
        raise StoryError("this is a folder, not a story file", str(path))
    if not path.exists():
        raise StoryError("no such story file", str(path))
    if not path.is_file():  # a FIFO or a device would block or never end
        raise StoryError("not a regular file (a pipe or a device?): give a story file", str(path))
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM from a Windows editor is not text
    except (OSError, UnicodeDecodeError) as error:
        raise StoryError(f"cannot read the story file: {error}", str(path)) from error
    if suffix == ".txt":
        return parse_story_text(text, str(path))
    return parse_story_mapping(text, str(path))


def _visible(text: str) -> bool:
    """Whether text has a character one can see: not only spaces and invisible format characters
    (zero-width spaces and joiners, BOMs, direction marks: Unicode category Cf)."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text)


def _story_name(index: int) -> str:
    return f"story-{index:03d}"


# Text form -----------------------------------------------------------------------------------

PARTS = ("background", "character", "action")


def parse_story_text(text: str, path: str | None = None) -> list[Story]:
    """Stories from `background # character # action` lines, a blank line between stories."""
    blocks: list[list[tuple[int, str]]] = [[]]
    # split("\n"), not splitlines(): the latter also breaks at form feeds and other rare
    # characters, and line numbers must agree with the user's editor.
    for number, raw in enumerate(text.split("\n"), start=1):
        if raw.strip():
            blocks[-1].append((number, raw))
        elif blocks[-1]:
            blocks.append([])
    blocks = [b for b in blocks if b]
    if not blocks:
        raise StoryError("the story file has no stories", path)
    return [_story_from_lines(block, index, path) for index, block in enumerate(blocks)]


def _story_from_lines(block: list[tuple[int, str]], index: int, path: str | None) -> Story:
    rows = []
    for number, raw in block:
        parts = [p.strip() for p in raw.split("#")]
        if len(parts) != len(PARTS):
            raise StoryError(f"expected 'background # character # action' (3 parts), found {len(parts)}",
                             path, number)
        for name, part in zip(PARTS, parts):
            if not _visible(part):
                raise StoryError(f"the {name} is empty", path, number)
        rows.append((number, *parts))
    if len(rows) < 2:
        raise StoryError("a story needs an identity line and at least one shot line after it", path, rows[0][0])
    character = rows[0][2]
    for number, _, other, _ in rows[1:]:
        if other != character:
            raise StoryError(f"every line of a story must have the same character: {other!r} != {character!r}",
                             path, number)
    shots = [Shot(background, action, number) for number, background, _, action in rows]
    return Story(name=_story_name(index), character=character, identity=shots[0], shots=tuple(shots[1:]),
                 shared_background=len({s.background for s in shots}) == 1, path=path, line=rows[0][0])


# YAML / JSON form ----------------------------------------------------------------------------

KEYS = ("name", "background", "character", "identity", "actions", "backgrounds", "shared_background",
        "seed", "frames", "height", "width", "shot_seeds")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a folder name: no '..', no hidden or '-' names


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _value(node: yaml.Node):
    """The Python value of a composed node (kept as a node until then, for its line). A tag the
    safe loader does not know (`!foo`, `!!python/...`) is an error at the node's line (its path is
    filled in by `parse_story_mapping`)."""
    try:
        value = yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError as error:
        raise StoryError(f"not valid here: {getattr(error, 'problem', None) or error}", None, _line(node)) from error
    if isinstance(value, str):  # PyYAML reads JSON's "\ud83d\ude00" as two lone surrogates: rejoin them
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def parse_story_mapping(text: str, path: str | None = None) -> list[Story]:
    """Stories from YAML or JSON: `stories: [...]` or a bare list, one mapping per story."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise StoryError(f"not valid YAML/JSON: {getattr(error, 'problem', None) or error}", path,
                         mark.line + 1 if mark else None) from error
    if root is None:
        raise StoryError("the story file has no stories", path)
    if isinstance(root, yaml.MappingNode):
        if not any(k.value == "stories" for k, _ in root.value) and any(k.value in KEYS for k, _ in root.value):
            raise StoryError("a single story must still be listed: put it under 'stories:' as '- ...'",
                             path, _line(root))
        entries = _mapping(root, ("stories",), path)
        if "stories" not in entries:
            raise StoryError("the top level needs a 'stories' list", path, _line(root))
        root = entries["stories"]
    if not isinstance(root, yaml.SequenceNode) or not root.value:
        raise StoryError("expected a non-empty list of stories", path, _line(root))
    stories, names = [], {}
    for index, node in enumerate(root.value):
        try:
            story = _story_from_node(node, index, path)
        except StoryError as error:
            if error.path is None and path is not None:
                raise StoryError(error.message, path, error.line) from error
            raise
        folded = story.name.lower()  # folders collide on case-insensitive file systems
        if folded in names:
            raise StoryError(f"two stories are named {story.name!r} (the first on line {names[folded]})",
                             path, _line(node))
        names[folded] = _line(node)
        stories.append(story)
    return stories


def _mapping(node: yaml.MappingNode, known, path) -> dict[str, yaml.Node]:
    """Key -> value node; unknown and repeated keys are errors, since a typo must not pass silently."""
    fields = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            raise StoryError(f"unknown key {key!r}; {hint}", path, _line(key_node))
        if key in fields:
            raise StoryError(f"{key!r} is given twice", path, _line(key_node))
        fields[key] = value_node
    return fields


def _story_from_node(node, index: int, path: str | None) -> Story:
    if not isinstance(node, yaml.MappingNode):
        raise StoryError("each story must be a mapping (background, character, actions, ...)", path, _line(node))
    fields = _mapping(node, KEYS, path)

    def text(item_node, what: str) -> str:
        item = _value(item_node)
        if not isinstance(item, str) or not _visible(item):
            raise StoryError(f"{what} must be a non-empty text", path, _line(item_node))
        return item.strip()

    def required(key: str) -> yaml.Node:
        if key not in fields:
            raise StoryError(f"the story needs a {key!r}", path, _line(node))
        return fields[key]

    def text_list(key: str, what: str) -> list[tuple[str, int]]:
        list_node = required(key)
        if not isinstance(list_node, yaml.SequenceNode) or not list_node.value:
            raise StoryError(f"{key!r} must be a non-empty list", path, _line(list_node))
        return [(text(n, what), _line(n)) for n in list_node.value]

    def integer(key: str, minimum: int) -> int | None:
        if key not in fields:
            return None
        item = _value(fields[key])
        if not isinstance(item, int) or isinstance(item, bool) or item < minimum:
            raise StoryError(f"{key!r} must be an integer >= {minimum}, got {item!r}", path, _line(fields[key]))
        return item

    character = text(required("character"), "'character'")
    background = text(required("background"), "'background'")
    actions = text_list("actions", "each action")
    if "identity" in fields:
        identity = Shot(background, text(fields["identity"], "'identity'"), _line(fields["identity"]))
    else:
        if len(actions) < 2:
            raise StoryError("with no 'identity', the first action makes the identity video, so at least "
                             "two actions are needed", path, _line(fields["actions"]))
        identity = Shot(background, *actions[0])
        actions = actions[1:]
    if "backgrounds" in fields:  # one per shot; the identity keeps 'background'
        backgrounds = [b for b, _ in text_list("backgrounds", "each background")]
        if len(backgrounds) != len(actions):
            raise StoryError(f"'backgrounds' has {len(backgrounds)} entries but the story has {len(actions)} "
                             f"shots (one background per shot; the identity's is 'background')",
                             path, _line(fields["backgrounds"]))
    else:
        backgrounds = [background] * len(actions)
    shots = tuple(Shot(b, a, line) for b, (a, line) in zip(backgrounds, actions))

    shared = len({background, *backgrounds}) == 1
    if "shared_background" in fields:
        flag = _value(fields["shared_background"])
        if not isinstance(flag, bool):
            raise StoryError("'shared_background' must be true or false", path, _line(fields["shared_background"]))
        if flag and not shared:
            raise StoryError("'shared_background' is true but the shots have different backgrounds", path,
                             _line(fields["shared_background"]))
        shared = flag
    name = _value(fields["name"]) if "name" in fields else _story_name(index)
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoryError(f"'name' names a folder: letters, digits, '.', '_' and '-', starting with a letter or "
                         f"digit; got {name!r}", path, _line(fields["name"]))
    shot_seeds = _value(fields["shot_seeds"]) if "shot_seeds" in fields else None
    if shot_seeds is not None and shot_seeds not in SHOT_SEEDS:
        raise StoryError(f"'shot_seeds' must be one of {', '.join(SHOT_SEEDS)}, got {shot_seeds!r}", path,
                         _line(fields["shot_seeds"]))
    return Story(name=name, character=character, identity=identity, shots=shots, shared_background=shared,
                 seed=integer("seed", 0), num_frames=integer("frames", 1), height=integer("height", 8),
                 width=integer("width", 8), path=path, line=_line(node), shot_seeds=shot_seeds)
