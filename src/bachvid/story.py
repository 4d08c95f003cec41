"""Stories: one character, an identity shot and the shots that must stay consistent with it.

Two file forms:
- text, CharaConsist style: one `background # character # action` per line, a blank line
  between stories; the first line of a story is its identity shot;
- YAML or JSON (parsed by PyYAML, so both report line numbers) for per-story options.
Every error names the file and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml


class StoryError(ValueError):
    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message, self.path, self.line = message, path, line
        where = ":".join(str(x) for x in (path, line) if x is not None)
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class Shot:
    background: str
    action: str
    line: int | None = None


@dataclass(frozen=True)
class Story:
    name: str
    character: str
    identity: Shot
    shots: tuple[Shot, ...]
    shared_background: bool = True
    seed: int | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    path: str | None = None
    line: int | None = None

    def shot_seed(self, index: int, base_seed: int) -> int:
        """The identity uses the base seed; shot i uses base + 1 + i, so each shot has its own noise."""
        return base_seed + 1 + index


def load_stories(path) -> list[Story]:
    path = Path(path)
    if not path.is_file():
        raise StoryError("no such story file", str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise StoryError(f"cannot read the story file: {error}", str(path)) from error
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return parse_story_text(text, str(path))
    if suffix in (".yaml", ".yml", ".json"):
        return parse_story_mapping(text, str(path))
    raise StoryError(f"unknown story file type {suffix!r}: use .txt, .yaml, .yml or .json", str(path))


def _story_name(index: int) -> str:
    return f"story-{index:03d}"


def parse_story_text(text: str, path: str | None = None) -> list[Story]:
    blocks: list[list[tuple[int, str]]] = [[]]
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            blocks[-1].append((number, raw))
        elif blocks[-1]:
            blocks.append([])
    blocks = [b for b in blocks if b]
    if not blocks:
        raise StoryError("the story file has no stories", path)
    stories = []
    for index, block in enumerate(blocks):
        rows = []
        for number, raw in block:
            parts = [p.strip() for p in raw.split("#")]
            if len(parts) != 3:
                raise StoryError(f"expected 'background # character # action' (3 parts), found {len(parts)}",
                                 path, number)
            for name, part in zip(("background", "character", "action"), parts):
                if not part:
                    raise StoryError(f"the {name} is empty", path, number)
            rows.append((number, *parts))
        if len(rows) < 2:
            raise StoryError("a story needs an identity line and at least one shot line", path, block[0][0])
        character = rows[0][2]
        for number, _, other, _ in rows[1:]:
            if other != character:
                raise StoryError(f"every line of a story must have the same character: {other!r} != {character!r}",
                                 path, number)
        shots = [Shot(background, action, number) for number, background, _, action in rows]
        stories.append(Story(
            name=_story_name(index), character=character, identity=shots[0], shots=tuple(shots[1:]),
            shared_background=len({s.background for s in shots}) == 1, path=path, line=rows[0][0],
        ))
    return stories


_KEYS = {"name", "background", "character", "identity", "actions", "backgrounds", "shared_background",
         "seed", "frames", "height", "width"}
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _line(node) -> int:
    return node.start_mark.line + 1


def parse_story_mapping(text: str, path: str | None = None) -> list[Story]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise StoryError(f"not valid YAML/JSON: {getattr(error, 'problem', error)}", path,
                         mark.line + 1 if mark else None) from error
    if root is None:
        raise StoryError("the story file has no stories", path)
    if isinstance(root, yaml.MappingNode):
        entries = {k.value: v for k, v in root.value}
        if set(entries) != {"stories"}:
            raise StoryError("the top level must be a list of stories or a mapping with one key, 'stories'",
                             path, _line(root))
        root = entries["stories"]
    if not isinstance(root, yaml.SequenceNode) or not root.value:
        raise StoryError("expected a non-empty list of stories", path, _line(root))
    stories, names = [], set()
    for index, node in enumerate(root.value):
        story = _story_from_node(node, index, path)
        if story.name in names:
            raise StoryError(f"two stories are named {story.name!r}", path, _line(node))
        names.add(story.name)
        stories.append(story)
    return stories


def _story_from_node(node, index: int, path: str | None) -> Story:
    if not isinstance(node, yaml.MappingNode):
        raise StoryError("each story must be a mapping (background, character, actions, ...)", path, _line(node))
    fields = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in _KEYS:
            raise StoryError(f"unknown key {key!r}; known keys: {', '.join(sorted(_KEYS))}", path, _line(key_node))
        fields[key] = value_node
    value = lambda key: yaml.safe_load(yaml.serialize(fields[key]))  # noqa: E731

    def text(key, item_node=None):
        item_node = item_node if item_node is not None else fields.get(key)
        if item_node is None:
            raise StoryError(f"the story needs a {key!r}", path, _line(node))
        item = yaml.safe_load(yaml.serialize(item_node))
        if not isinstance(item, str) or not item.strip():
            raise StoryError(f"{key!r} must be a non-empty text", path, _line(item_node))
        return item.strip()

    character = text("character")
    if "actions" not in fields:
        raise StoryError("the story needs 'actions'", path, _line(node))
    actions_node = fields["actions"]
    if not isinstance(actions_node, yaml.SequenceNode) or not actions_node.value:
        raise StoryError("'actions' must be a non-empty list", path, _line(actions_node))
    actions = [(text("action", n), _line(n)) for n in actions_node.value]
    if "backgrounds" in fields:
        bg_node = fields["backgrounds"]
        if not isinstance(bg_node, yaml.SequenceNode):
            raise StoryError("'backgrounds' must be a list", path, _line(bg_node))
        backgrounds = [text("background", n) for n in bg_node.value]
    else:
        backgrounds = None
    background = text("background") if "background" in fields else None
    if background is None and backgrounds is None:
        raise StoryError("the story needs a 'background' (or per-shot 'backgrounds')", path, _line(node))

    if "identity" in fields:
        identity = Shot(background or backgrounds[0], text("identity"), _line(fields["identity"]))
        shot_rows = actions
    else:
        if len(actions) < 2:
            raise StoryError("with no 'identity', the first action makes the identity video and at least one "
                             "more action is needed", path, _line(actions_node))
        identity = Shot(background or (backgrounds[0] if backgrounds else ""), actions[0][0], actions[0][1])
        shot_rows = actions[1:]
    if backgrounds is not None:
        if len(backgrounds) != len(shot_rows):
            raise StoryError(f"'backgrounds' has {len(backgrounds)} entries but there are {len(shot_rows)} shots",
                             path, _line(fields["backgrounds"]))
    shots = tuple(Shot(backgrounds[i] if backgrounds else background, a, line) for i, (a, line) in enumerate(shot_rows))

    def integer(key, minimum):
        if key not in fields:
            return None
        item = value(key)
        if not isinstance(item, int) or isinstance(item, bool) or item < minimum:
            raise StoryError(f"{key!r} must be an integer >= {minimum}", path, _line(fields[key]))
        return item

    shared = len({identity.background, *(s.background for s in shots)}) == 1
    if "shared_background" in fields:
        flag = value("shared_background")
        if not isinstance(flag, bool):
            raise StoryError("'shared_background' must be true or false", path, _line(fields["shared_background"]))
        if flag and not shared:
            raise StoryError("'shared_background' is true but the shots have different backgrounds", path,
                             _line(fields["shared_background"]))
        shared = flag
    name = value("name") if "name" in fields else _story_name(index)
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoryError("'name' may use letters, digits, '.', '_' and '-' only", path, _line(fields["name"]))
    return Story(name=name, character=character, identity=identity, shots=shots, shared_background=shared,
                 seed=integer("seed", 0), num_frames=integer("frames", 1), height=integer("height", 8),
                 width=integer("width", 8), path=path, line=_line(node))
