"""A story from the studio's form or text box, checked with the CLI's own messages.

The text box holds the CLI's text form (`background # character # action` lines); the form
writes it. So one parser (story.py) reads both, and an error reads as the CLI would print it
for a file named `story` (`story:2: the action is empty`)."""

from __future__ import annotations

import re
from dataclasses import replace

from ..io.story import Story, StoryError, parse_story_text

SOURCE = "story"  # the "file name" in error messages
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a folder name, as story.py requires in YAML


def form_text(background: str, character: str, identity_action: str, shots) -> str:
    """The text form of a story written in the form. shots: rows [action, background]; an empty
    background is the identity's (a shared background); rows with nothing in them are skipped."""
    def line(where, action):
        return f"{(where or '').strip()} # {(character or '').strip()} # {(action or '').strip()}"

    lines = [line(background, identity_action)]
    for row in _rows(shots):
        action, where = (list(row) + ["", ""])[:2]
        if not str(action or "").strip() and not str(where or "").strip():
            continue
        lines.append(line(str(where or "").strip() or background, str(action or "")))
    return "\n".join(lines) + "\n"


def _rows(shots) -> list[list]:
    """Rows of a form's shot table: a list of lists, or a pandas DataFrame (gradio's Dataframe)."""
    if shots is None:
        return []
    if hasattr(shots, "values") and hasattr(shots, "columns"):
        return [list(row) for row in shots.values.tolist()]
    return [list(row) if isinstance(row, (list, tuple)) else [row, ""] for row in shots]


def read_story(text: str, name: str = "") -> tuple[Story | None, list[str]]:
    """The one story in `text` (the CLI's text form), named `name` (its output folder), or the
    errors the CLI would print for it."""
    name = (name or "").strip() or "story-000"
    if not _NAME.match(name) or ".." in name:
        return None, [f"the story's name {name!r} is not a folder name: use letters, digits, '.', '_' or '-', "
                      f"starting with a letter or digit"]
    try:
        stories = parse_story_text(text or "", SOURCE)
    except StoryError as error:
        return None, [str(error)]
    if len(stories) > 1:
        return None, [f"{SOURCE}: the studio makes one story at a time; this text has {len(stories)} "
                      f"(a blank line starts a new story)"]
    return replace(stories[0], name=name), []


def story_errors(pipe, text: str, name: str = "") -> tuple[Story | None, list[str]]:
    """read_story, then the model's checks (a background or character its text limit would cut)."""
    story, errors = read_story(text, name)
    if story is None:
        return None, errors
    errors = [str(error) for error in pipe.story_errors(story)]
    return (None, errors) if errors else (story, [])


# The form's shot table ---------------------------------------------------------------------

def add_shot(rows, action: str = "", background: str = "") -> list[list]:
    return _rows(rows) + [[action, background]]


def remove_shot(rows, index: int | None) -> list[list]:
    rows = _rows(rows)
    if index is None or not 0 <= index < len(rows):
        return rows
    return rows[:index] + rows[index + 1:]


def move_shot(rows, index: int | None, delta: int) -> tuple[list[list], int | None]:
    """Move row `index` by `delta` (-1 up, +1 down); returns the rows and where it is now."""
    rows = _rows(rows)
    if index is None or not 0 <= index < len(rows):
        return rows, index
    to = min(max(index + delta, 0), len(rows) - 1)
    row = rows.pop(index)
    rows.insert(to, row)
    return rows, to
