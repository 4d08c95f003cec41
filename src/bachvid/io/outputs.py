"""Everything bachvid writes: videos, previews, mask overlays, contact sheets, manifests.

Every file is written atomically (a temporary file in the same folder, then os.replace), so a
crash or Ctrl-C never leaves a half-written video that a re-run would take for a finished one.

Small videos are stored enlarged. The toy model makes 64x64 clips; H.264 in yuv420p keeps
colour at half resolution, which would smear a 64-pixel character's colours, and many players
refuse or blur tiny videos. So videos whose short side is under 256 px are enlarged by an even
factor with nearest-neighbour (each model pixel becomes a k x k block, and each 2x2 colour
block stays inside one model pixel). `display_scale` gives the factor, and
`read_video(path, size=...)` undoes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import textwrap
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ENTRIES = "entries"  # a story folder's per-video records (save_entry), beside the videos
MIN_DISPLAY_SIZE = 256  # short side, in pixels, below which videos and previews are enlarged
MASK_COLOUR = (255, 0, 0)
OUTLINE_COLOUR = (255, 255, 0)


def write_atomic(path, write: Callable[[Path], None], before_replace: Callable[[Path], None] | None = None) -> Path:
    """Call write(tmp) on a temporary path next to `path`, then move it into place.

    before_replace(tmp), if given, runs once the temporary file is complete and on disk, just
    before it takes the real name (to record what is about to appear). On any exception (Ctrl-C
    included) the temporary file is removed and an older `path` is kept as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:  # on disk before it gets the real name
            os.fsync(handle.fileno())
        os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600 files; outputs are for sharing
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_TEMPORARY = re.compile(r"^\..+-[a-z0-9_]{8}\.[A-Za-z0-9]+$")  # what write_atomic's mkstemp names look like


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporary files a killed run left in `folder`, its masks/ and entries/ (a SIGKILL
    skips write_atomic's cleanup). Called before a story's folder is written again; returns what went."""
    removed = []
    for place in (Path(folder), Path(folder) / "masks", Path(folder) / ENTRIES):
        if not place.is_dir():
            continue
        for path in place.iterdir():
            if path.is_file() and _TEMPORARY.match(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected frames shaped (F, H, W, 3) with F >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    return frames


def display_scale(height: int, width: int) -> int:
    """The even nearest-neighbour factor that makes the short side >= MIN_DISPLAY_SIZE (1 if it is)."""
    short = min(height, width)
    if short >= MIN_DISPLAY_SIZE:
        return 1
    factor = -(-MIN_DISPLAY_SIZE // short)
    return factor + factor % 2


def enlarge(frames: np.ndarray, factor: int) -> np.ndarray:
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def _even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where a side is odd: yuv420p needs even sizes."""
    h, w = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def save_video(path, frames, fps: int = 8, before_replace: Callable[[Path], None] | None = None) -> Path:
    """H.264 MP4 (yuv420p, PyAV), enlarged by display_scale; read it back with read_video.
    before_replace: see write_atomic (save_entry uses it to describe the file before it appears)."""
    frames = _check_frames(frames)
    stored = _even(enlarge(frames, display_scale(*frames.shape[1:3])))
    return write_atomic(path, lambda tmp: iio.imwrite(
        tmp, stored, extension=".mp4", plugin="pyav", codec="libx264", fps=fps, out_pixel_format="yuv420p"),
        before_replace=before_replace)


def save_gif(path, frames, fps: int = 8) -> Path:
    """A looping GIF preview, enlarged like the MP4. Pillow merges identical consecutive frames
    (their durations add up), so a still video may hold fewer GIF frames than video frames."""
    frames = _check_frames(frames)
    images = [Image.fromarray(f) for f in enlarge(frames, display_scale(*frames.shape[1:3]))]
    return write_atomic(path, lambda tmp: images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0))


def read_video(path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames (F, H, W, 3) uint8 as stored; with size=(height, width), shrunk back to the
    model's size (block means over the display_scale enlargement)."""
    frames = iio.imread(path, plugin="pyav")
    if size is None:
        return frames
    height, width = size
    factor = display_scale(height, width)
    if frames.shape[1] < height * factor or frames.shape[2] < width * factor:
        raise ValueError(f"{path} holds {frames.shape[2]}x{frames.shape[1]} frames, not a {width}x{height} "
                         f"video enlarged x{factor}")
    frames = frames[:, :height * factor, :width * factor]
    blocks = frames.reshape(len(frames), height, factor, width, factor, 3).mean(axis=(2, 4))
    return np.rint(blocks).astype(np.uint8)


def latent_frame_of(frame: int, temporal: int = 4) -> int:
    """CogVideoX's causal VAE: frame 0 alone, then `temporal` frames per latent frame."""
    return 0 if frame == 0 else (frame - 1) // temporal + 1


def mask_overlay(frames, mask, temporal: int = 4, alpha: float = 0.45) -> np.ndarray:
    """The frames with the foreground tinted red and outlined in yellow.

    `mask` is bool (latent frames, h tokens, w tokens): it is spread to pixels nearest in space,
    and in time through the causal VAE's packing (latent_frame_of) when the frame count is
    1 + temporal x (latent frames - 1). Any other count (CogVideoX's VAE decodes an even number
    of latent frames to temporal x as many frames, 4 -> 16) is spread evenly. Only pixels under
    the mask change; the outline is its inner edge."""
    frames = _check_frames(frames)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a mask shaped (latent frames, h tokens, w tokens), got {mask.shape}")
    f, h, w, _ = frames.shape
    latent, th, tw = mask.shape
    if th > h or tw > w:
        raise ValueError(f"a {th}x{tw} token mask is finer than {h}x{w} frames")
    if f == 1 + temporal * (latent - 1):
        which = [latent_frame_of(i, temporal) for i in range(f)]
    else:
        which = [i * latent // f for i in range(f)]
    rows, cols = np.arange(h) * th // h, np.arange(w) * tw // w
    pixels = mask[which][:, rows][:, :, cols]
    out = frames.astype(np.float32)
    out[pixels] = (1 - alpha) * out[pixels] + alpha * np.array(MASK_COLOUR, dtype=np.float32)
    out = np.rint(out).astype(np.uint8)
    out[pixels & ~_interior(pixels)] = OUTLINE_COLOUR
    return out


def _interior(pixels: np.ndarray) -> np.ndarray:
    """Mask pixels whose four neighbours are mask too (beyond the frame counts as mask)."""
    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1)), mode="edge")
    return (pixels & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:])


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # a scalable font, Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def sheet_frames(frames) -> np.ndarray:
    """The frames a contact sheet shows of a video: first, middle and last (3, H, W, 3).
    Taking them again from their own result changes nothing: sheet_frames(sheet_frames(v)) ==
    sheet_frames(v)."""
    frames = _check_frames(frames)
    return frames[[0, len(frames) // 2, len(frames) - 1]]


def contact_sheet(path, videos: list[tuple[str, np.ndarray]], cell: int = 160, frames=None) -> Path:
    """A PNG with one row per entry of `videos` (identity first): its label, then frames of its
    video, `cell` pixels high, enlarged nearest-neighbour so tiny videos stay legible.

    A row's array is one video (F, H, W, 3) or several side by side (V, F, H, W, 3). Each video
    shows its first, middle and last frame (sheet_frames: a video's sheet_frames alone give the
    same row), or with `frames` those frame indices (past the end: left out)."""
    if not videos:
        raise ValueError("a contact sheet needs at least one video")
    font, pad, header = _font(14), 8, 26
    labels = [textwrap.fill(label, 44) for label, _ in videos]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))  # the label column is as wide as its widest label
    label_width = min(320, 2 * pad + max(measure.multiline_textbbox((0, 0), text, font=font, spacing=3)[2]
                                         for text in labels))
    picks = []
    for label, clips in videos:
        clips = np.asarray(clips)
        images = []
        for clip in clips if clips.ndim == 5 else clips[None]:
            clip = sheet_frames(clip) if frames is None else _check_frames(clip)[[f for f in frames if f < len(clip)]]
            h, w = clip.shape[1:3]
            size = (max(1, round(w * cell / h)), cell)
            images += [Image.fromarray(frame).resize(size, Image.NEAREST) for frame in clip]
        picks.append((label, images))
    titles = ("first", "middle", "last") if frames is None else tuple(f"frame {f}" for f in frames)
    column = max(image.width for _, images in picks for image in images) + pad
    columns = max(len(images) for _, images in picks)
    sheet = Image.new("RGB", (label_width + columns * column, header + len(picks) * (cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(columns):
        draw.text((label_width + i * column, 6), titles[i % len(titles)], fill="gray", font=font)
    for r, ((_, images), text) in enumerate(zip(picks, labels)):
        y = header + r * (cell + pad)
        draw.multiline_text((6, y), text, fill="black", font=font, spacing=3)
        for i, image in enumerate(images):
            sheet.paste(image, (label_width + i * column, y))
    return write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG"))


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VideoEntry:
    """What a story folder keeps of one video besides its files: its manifest entry, the recipe
    it was made from, the SHA-256 of the MP4 it describes, and its contact-sheet frames as the
    model made them (sheet_frames; lossless, unlike the MP4)."""

    entry: dict
    recipe: dict
    video_sha256: str
    sheet: np.ndarray  # uint8 (3, H, W, 3)

    def describes(self, video, recipe: dict) -> bool:
        """True when `video` (an MP4's path) is the file this entry was written for, from `recipe`."""
        return self.recipe == recipe and Path(video).is_file() and file_sha256(video) == self.video_sha256


def save_entry(path, entry: dict, recipe: dict, video_sha256: str, frames) -> Path:
    """Write a video's VideoEntry (an .npz of plain arrays, no pickle), atomically.

    Written just before the video's MP4 takes its name (save_video's before_replace), so a run
    killed at any moment leaves either no MP4, or an MP4 and the entry that describes it: the
    manifest and contact sheet of a re-run are rebuilt from it exactly."""
    meta = json.dumps({"entry": entry, "recipe": recipe, "video_sha256": video_sha256},
                      ensure_ascii=False, default=json_value)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(meta), sheet=sheet_frames(frames))
    return write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def read_entry(path) -> VideoEntry | None:
    """The VideoEntry at `path`, or None when it is missing or unreadable (then it describes nothing)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta, sheet = json.loads(str(data["meta"])), data["sheet"]
        entry = VideoEntry(meta["entry"], meta["recipe"], meta["video_sha256"], sheet)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    if sheet.dtype != np.uint8 or sheet.ndim != 4 or len(sheet) != 3 or not isinstance(entry.entry, dict):
        return None
    return entry


def write_manifest(path, data: dict) -> Path:
    """JSON, indent 2, written atomically (see json_value for non-JSON values)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=json_value) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_value(value):
    """json.dumps' default: numpy numbers and arrays as numbers and lists, anything else as text."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)
