"""Everything bachvid writes: videos, previews, mask overlays, contact sheets, manifests.

Every file is written atomically (temporary file in the same folder, then os.replace), so a
crash or Ctrl-C never leaves a half-written video that a re-run would mistake for a finished one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

PREVIEW_MIN_SIZE = 256  # small videos are upscaled (nearest) in previews so they stay legible


def write_atomic(path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary path next to `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _upscale(frames: np.ndarray, minimum: int = PREVIEW_MIN_SIZE) -> np.ndarray:
    factor = max(1, -(-minimum // min(frames.shape[1:3])))
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def save_video(path, frames: np.ndarray, fps: int = 8) -> Path:
    """H.264 MP4 (yuv420p). Frames smaller than 256 px are upscaled x k (nearest) so players
    and codecs accept them; the pixels stay exactly the model's, only enlarged."""
    frames = _upscale(np.asarray(frames, dtype=np.uint8))
    return write_atomic(path, lambda tmp: iio.imwrite(
        tmp, frames, extension=".mp4", plugin="pyav", codec="libx264", fps=fps,
        out_pixel_format="yuv420p"))


def save_gif(path, frames: np.ndarray, fps: int = 8) -> Path:
    frames = _upscale(np.asarray(frames, dtype=np.uint8))
    images = [Image.fromarray(f) for f in frames]
    return write_atomic(path, lambda tmp: images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0))


def read_video(path) -> np.ndarray:
    return iio.imread(path, plugin="pyav")


def latent_frame_of(frame: int, temporal: int = 4) -> int:
    """CogVideoX's causal VAE: frame 0 alone, then `temporal` frames per latent frame."""
    return 0 if frame == 0 else (frame - 1) // temporal + 1


def mask_overlay(frames: np.ndarray, mask: np.ndarray, temporal: int = 4, alpha: float = 0.45) -> np.ndarray:
    """Tint the foreground (mask over the video token grid) red on the frames."""
    frames = np.asarray(frames, dtype=np.uint8)
    f, h, w, _ = frames.shape
    latent, th, tw = mask.shape
    which = [min(latent_frame_of(i, temporal), latent - 1) for i in range(f)]
    pixel_mask = mask[which].repeat(h // th, axis=1).repeat(w // tw, axis=2)
    out = frames.astype(np.float32)
    red = np.array([255.0, 0.0, 0.0])
    out[pixel_mask] = (1 - alpha) * out[pixel_mask] + alpha * red
    return out.round().astype(np.uint8)


def contact_sheet(path, videos: list[tuple[str, np.ndarray]], cell: int = 160) -> Path:
    """One row per video (first, middle, last frame), labelled: the story at a glance."""
    label_w, pad = 360, 6
    rows = []
    for label, frames in videos:
        picks = [frames[0], frames[len(frames) // 2], frames[-1]]
        row = Image.new("RGB", (label_w + 3 * (cell + pad), cell + pad), "white")
        draw = ImageDraw.Draw(row)
        draw.multiline_text((6, 6), _wrap(label, 48), fill="black")
        for i, frame in enumerate(picks):
            row.paste(Image.fromarray(frame).resize((cell, cell), Image.NEAREST), (label_w + i * (cell + pad), pad // 2))
        rows.append(row)
    header = Image.new("RGB", (rows[0].width, 24), "white")
    ImageDraw.Draw(header).text((label_w + 6, 6), "first" + " " * 28 + "middle" + " " * 27 + "last", fill="gray")
    sheet = Image.new("RGB", (rows[0].width, 24 + sum(r.height for r in rows)), "white")
    sheet.paste(header, (0, 0))
    y = 24
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    return write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG"))


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def write_manifest(path, data: dict) -> Path:
    text = json.dumps(data, indent=2, default=str)
    return write_atomic(path, lambda tmp: tmp.write_text(text))
