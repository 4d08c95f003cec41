"""Models shipped inside the package: the default needs no download, and each shipped model is
picked by its name (`--model toy-wan`)."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).parent
DEFAULT_MODEL_DIR = MODELS_DIR / "toy-cogvideox"
NOTES = {"toy-cogvideox": "bachvid's built-in toy model (see docs/TOY_MODEL.md)",
         "toy-wan": "bachvid's built-in toy Wan model (see docs/TOY_MODEL.md#wan)"}


def default_model_path() -> Path | None:
    """The shipped toy model's folder, or None when this checkout has no trained default yet."""
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "model_index.json").is_file() else None


def shipped_models() -> list[str]:
    """Names of the models this install ships (folders with a model_index.json)."""
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model_index.json").is_file())


def shipped_model_path(name: str) -> Path | None:
    """The folder of the shipped model called `name`, or None if there is none by that name."""
    folder = MODELS_DIR / name
    return folder if "/" not in name and (folder / "model_index.json").is_file() else None
