"""Saved characters: a folder of .bvid files (`bachvid identity save`'s format), each with a
PNG thumbnail of its identity video. The files are the CLI's: `bachvid generate --identity
LIBRARY/NAME.bvid` gives a story the same character."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import outputs

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Character:
    name: str
    path: Path
    thumbnail: Path | None
    metadata: dict

    @property
    def label(self) -> str:
        m = self.metadata
        return (f"{self.name}: {m.get('character', '?')} ({m.get('background', '?')}, {m.get('action', '?')}; "
                f"seed {m.get('seed')}, {m.get('steps')} steps)")


class CharacterLibrary:
    def __init__(self, folder):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        name = (name or "").strip()
        if not _NAME.match(name) or ".." in name:
            raise ValueError(f"a character's name must be a file name: letters, digits, '.', '_' or '-' "
                             f"(up to 64, starting with a letter or digit); got {name!r}")
        return self.folder / f"{name}.bvid"

    def characters(self) -> list[Character]:
        """The library's characters by name; files this bachvid cannot read are left out."""
        from ..io.identity_file import describe

        found = []
        for path in sorted(self.folder.glob("*.bvid")) if self.folder.is_dir() else []:
            try:
                info = describe(path)
            except ValueError:
                continue
            thumbnail = path.with_suffix(".png")
            found.append(Character(path.stem, path, thumbnail if thumbnail.is_file() else None, info["metadata"]))
        return found

    def get(self, name: str) -> Character:
        for character in self.characters():
            if character.name == name:
                return character
        raise ValueError(f"no saved character named {name!r} in {self.folder}")

    def save(self, pipe, story, settings, config, name: str, overwrite: bool = False) -> Character:
        """Make the story's identity (its first line) and save it as the character `name`."""
        path = self.path(name)
        if path.exists() and not overwrite:
            raise ValueError(f"a character named {name!r} exists already; choose another name")
        saved = pipe.save_identity(story, path, settings, config, progress=False)
        if saved.frames is not None:
            thumbnail(saved.frames, path.with_suffix(".png"))
        return self.get(name)

    def load(self, pipe, name: str, config=None):
        """The SavedIdentity of character `name`, refused when made for another model or config."""
        return pipe.load_identity(self.get(name).path, config=config)


def thumbnail(frames, path: Path, size: int = 128) -> Path:
    """The middle frame, enlarged nearest-neighbour to `size` pixels on its short side."""
    frame = np.asarray(frames)[len(frames) // 2]
    h, w = frame.shape[:2]
    scale = max(1, round(size / min(h, w)))
    image = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
    return outputs.write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
