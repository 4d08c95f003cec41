"""Models shipped inside the package: the default needs no download."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "toy-cogvideox"


def default_model_path() -> Path | None:
    """The shipped toy model's folder, or None when this checkout has no trained default yet."""
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "model_index.json").is_file() else None
