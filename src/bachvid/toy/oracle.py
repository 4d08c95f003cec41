"""Ground-truth stand-ins for what BachVid reads from attention, on the toy world.

BachVid reads two things from the model's attention: the foreground mask of every video (which
tokens are the character) and, for each shot, point matches to the identity (which identity token
is the same body point). `TruthReadings` implements `modes.Readings` with the toy world's truth,
read from pixels by the toy evaluator, so that a run with oracle masks, oracle matches or both
tells mask and match errors apart from the limits of the injection itself:

- the identity's mask: the evaluator's character mask of the decoded identity video, on the
  latent token grid (`world.latent_token_mask`);
- a shot's mask: the evaluator's mask of the *same shot generated plainly* (BachVid off, same
  prompt and seed; cached), which is where the character would be without injection, the layout
  the pre-run approximates;
- a shot's matches: every shot token inside the character's box is matched to the identity
  foreground token with the nearest character-local body coordinate: a token's pixel centre
  normalised by the bounding box of the character mask in its latent frame (u, v in [0, 1]),
  similarity 1.0. Tokens outside the box keep the matches read from attention.

`masks=False` or `matches=False` keep the attention-read ones, so "oracle masks only", "oracle
matches only" and both are possible. `masks="identity"` gives only the identity its true mask and
leaves the shots' masks as the method made them: with `shot_mask="matches"` (shot masks carried from
the identity's through their matches) that is what shots would get if the identity's mask came from
its pixels (a segmenter). Every shot also logs how well the attention-read mask and
matches agree with the truth (`TruthReadings.log`).

The pure functions (`body_coordinates`, `body_matches`, `match_accuracy`) work on any pixel masks
(rendered clips' true masks as well as the evaluator's) and are shared with `bachvid analyze`.

    readings = TruthReadings(pipe, settings, masks=True, matches=False)
    results = list(pipe.generate(story, settings, config, identity_mode="cache",
                                 instruments=Instruments(readings=readings)))
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np
import torch

from ..method.match import Matches
from ..method.plan import PLAIN
from . import world
from .evaluate import iou, score_clip

TEMPORAL = 4  # CogVideoX's VAE: frame 0 alone, then 4 frames per latent frame


# Pure functions on pixel masks -------------------------------------------------------------------

def frame_groups(frames: int, temporal: int = TEMPORAL) -> list[slice]:
    """The pixel frames behind each latent frame: [0], [1..4], [5..8], ..."""
    return [slice(0, 1)] + [slice(s, min(s + temporal, frames)) for s in range(1, frames, temporal)]


def latent_pixel_masks(mask: np.ndarray, temporal: int = TEMPORAL) -> np.ndarray:
    """(latent frames, H, W): per latent frame, the pixels the character covers in at least half
    of that frame group's frames (the union where that is empty)."""
    out = []
    for group in frame_groups(len(mask), temporal):
        part = np.asarray(mask[group], bool)
        most = part.mean(axis=0) >= 0.5
        out.append(most if most.any() else part.any(axis=0))
    return np.stack(out)


def token_mask(mask: np.ndarray, temporal: int = TEMPORAL) -> np.ndarray:
    """The evaluator's (F, H, W) pixel mask on the latent token grid (F', H/8, W/8)."""
    return world.latent_token_mask(np.asarray(mask, bool), temporal=temporal)


def body_coordinates(mask: np.ndarray, grid: tuple[int, int, int], temporal: int = TEMPORAL):
    """Character-local (u, v) of every token centre, normalised by the character's bounding box in
    its latent frame, and whether the centre lies in that box (expanded by half a token).

    mask: bool (F, H, W) pixels; grid: (latent frames, h, w). Returns (uv float (F', h, w, 2),
    inside bool (F', h, w)); frames without a character are NaN and not inside."""
    frames_mask = latent_pixel_masks(mask, temporal)
    lf, h, w = grid
    if len(frames_mask) != lf:
        raise ValueError(f"{len(mask)} frames make {len(frames_mask)} latent frames, the grid has {lf}")
    height, width = frames_mask.shape[1:]
    ty, tx = height / h, width / w
    cy = (np.arange(h) + 0.5) * ty
    cx = (np.arange(w) + 0.5) * tx
    uv = np.full((lf, h, w, 2), np.nan, np.float32)
    inside = np.zeros((lf, h, w), bool)
    for f, m in enumerate(frames_mask):
        ys, xs = np.nonzero(m)
        if not len(ys):
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        u = (cx - x0) / max(x1 - x0, 1)
        v = (cy - y0) / max(y1 - y0, 1)
        uv[f, :, :, 0] = u[None, :]
        uv[f, :, :, 1] = v[:, None]
        mu, mv = 0.5 * tx / max(x1 - x0, 1), 0.5 * ty / max(y1 - y0, 1)
        inside[f] = ((u >= -mu) & (u <= 1 + mu))[None, :] & ((v >= -mv) & (v <= 1 + mv))[:, None]
    return uv, inside


def body_matches(shot_mask: np.ndarray, identity_mask: np.ndarray, identity_fg: np.ndarray,
                 frame_weight: float = 1e-4, temporal: int = TEMPORAL) -> tuple[np.ndarray, np.ndarray]:
    """For every shot token, the identity foreground token with the nearest body coordinate.

    shot_mask, identity_mask: bool (F, H, W) character pixels; identity_fg: bool (F', h, w), the
    identity tokens a match may land on. Ties (the identity stands in several frames) go to the
    nearest latent frame (`frame_weight` per squared frame). Returns (index long (N,), valid bool
    (N,)) over the flattened (F', h, w) grid: valid where the shot token lies in the character's
    box and the identity has a foreground token with a body coordinate."""
    identity_fg = np.asarray(identity_fg, bool)
    grid = identity_fg.shape
    shot_uv, shot_inside = body_coordinates(shot_mask, grid, temporal)
    id_uv, _ = body_coordinates(identity_mask, grid, temporal)
    candidates = identity_fg & np.isfinite(id_uv[..., 0])
    n = int(np.prod(grid))
    index = np.zeros(n, np.int64)
    valid = np.zeros(n, bool)
    if not candidates.any():
        return index, valid
    cand_index = np.flatnonzero(candidates)
    cand_uv = id_uv.reshape(n, 2)[cand_index]
    cand_frame = cand_index // (grid[1] * grid[2])
    uv = shot_uv.reshape(n, 2)
    frame = np.arange(n) // (grid[1] * grid[2])
    ok = shot_inside.reshape(n) & np.isfinite(uv[:, 0])
    rows = np.flatnonzero(ok)
    if len(rows):
        cost = ((uv[rows, None, :] - cand_uv[None]) ** 2).sum(-1)
        cost = cost + frame_weight * (frame[rows, None] - cand_frame[None]) ** 2
        index[rows] = cand_index[cost.argmin(-1)]
        valid[rows] = True
    return index, valid


def match_accuracy(index, current_tokens, shot_mask: np.ndarray, identity_mask: np.ndarray,
                   grid: tuple[int, int, int], tolerance: int = 1, temporal: int = TEMPORAL) -> float | None:
    """Share of `current_tokens` (flat indices) whose matched identity token (`index`, flat, over
    the whole grid) lies within `tolerance` tokens (Chebyshev, in h and w) of the true
    correspondence: the identity token of that latent frame with the nearest body coordinate.
    None when there is no token to score."""
    index = np.asarray(index).reshape(-1)
    tokens = np.asarray(current_tokens).reshape(-1)
    if not len(tokens):
        return None
    lf, h, w = grid
    shot_uv, _ = body_coordinates(shot_mask, grid, temporal)
    id_uv, _ = body_coordinates(identity_mask, grid, temporal)
    id_fg = token_mask(identity_mask, temporal)
    right = []
    for t in tokens:
        m = int(index[t])
        f2, y2, x2 = m // (h * w), (m // w) % h, m % w
        target = shot_uv.reshape(-1, 2)[t]
        cands = id_fg[f2] & np.isfinite(id_uv[f2, ..., 0])
        if not np.isfinite(target).all() or not cands.any():
            right.append(False)
            continue
        ys, xs = np.nonzero(cands)
        d = ((id_uv[f2, ys, xs] - target) ** 2).sum(-1)
        k = d.argmin()
        right.append(max(abs(int(ys[k]) - y2), abs(int(xs[k]) - x2)) <= tolerance)
    return float(np.mean(right))


# The Readings hook ---------------------------------------------------------------------------------

def plain_key(prompt: str, seed: int, settings) -> str:
    """Cache key of a plain generation: prompt, seed and the settings that change its pixels."""
    s = settings
    return (f"{prompt}|seed={seed}|steps={s.num_inference_steps}|frames={s.num_frames}|"
            f"{s.height}x{s.width}|g={s.guidance_scale:g}")


def _to_uint8(frames) -> np.ndarray:
    return (np.clip(np.asarray(frames), 0, 1) * 255 + 0.5).astype(np.uint8)


class TruthReadings:
    """`modes.Readings` from the toy world's truth (see the module docstring).

    pipe: the BachVidPipeline that runs the story; settings: its GenerationSettings. cache: any
    mapping plain_key(...) -> uint8 frames of plain generations (shared between runs: a benchmark
    fills it with its vanilla own-seed videos, which are exactly these). Works in cache and replay
    identity modes (lockstep has no final identity before the shots run)."""

    def __init__(self, pipe, settings, masks: bool | str = True, matches: bool = True,
                 cache: MutableMapping | None = None):
        if masks not in (True, False, "identity"):
            raise ValueError(f"masks must be True, False or 'identity', not {masks!r}")
        self.pipe, self.settings = pipe, settings
        self.masks, self.matches = masks, matches
        self.cache = {} if cache is None else cache
        self.identity_pixels: np.ndarray | None = None  # bool (F, H, W): the current identity's character
        self.log: list[dict] = []

    # Plain generations ------------------------------------------------------------------------
    def plain_frames(self, video) -> np.ndarray:
        """The video generated with BachVid off from its prompt and seed (cached)."""
        from ..backbones import BatchVideo

        key = plain_key(video.spans.prompt, video.seed, self.settings)
        if key not in self.cache:
            s = self.settings
            from ..method.controller import VideoState

            state = VideoState(plan=PLAIN)
            with torch.inference_mode():
                latents = self.pipe.backbone.denoise(
                    [BatchVideo(video.embeds, video.negative, seed=video.seed)], num_frames=s.num_frames,
                    height=s.height, width=s.width, num_inference_steps=s.num_inference_steps,
                    guidance_scale=s.guidance_scale, step_states=lambda i: [(state, None)])[0]
                self.cache[key] = _to_uint8(self.pipe.backbone.decode(latents, s.num_frames))
        return np.asarray(self.cache[key])

    # Readings ---------------------------------------------------------------------------------
    def identity_mask(self, video, mask: torch.Tensor, latents: torch.Tensor, frames) -> torch.Tensor:
        key = plain_key(video.spans.prompt, video.seed, self.settings)
        if key not in self.cache:  # the identity pass is a plain generation of its prompt and seed
            with torch.inference_mode():
                self.cache[key] = frames()
        frames = np.asarray(self.cache[key])
        self.identity_pixels = score_clip(frames).mask
        truth = token_mask(self.identity_pixels)
        self.log.append({"role": "identity", "prompt": video.spans.prompt, "seed": video.seed,
                         "mask_iou": iou(mask.cpu().numpy().astype(bool), truth)})
        if not self.masks:
            return mask
        return torch.from_numpy(truth).to(mask.device)

    def shot(self, video, mask: torch.Tensor, matches: Matches,
             identity_fg: torch.Tensor) -> tuple[torch.Tensor, Matches]:
        if self.identity_pixels is None:
            raise RuntimeError("TruthReadings.shot before identity_mask: run in cache or replay identity mode")
        shot_pixels = score_clip(self.plain_frames(video)).mask
        truth = token_mask(shot_pixels)
        grid = tuple(mask.shape)
        entry = {"role": "shot", "prompt": video.spans.prompt, "seed": video.seed,
                 "mask_iou": iou(mask.cpu().numpy().astype(bool), truth)}
        fg = torch.from_numpy(truth).to(mask.device) if self.masks is True else mask
        read_index = matches.index.cpu().numpy()
        true_fg = np.flatnonzero(truth.reshape(-1))
        entry["match_accuracy"] = match_accuracy(read_index, true_fg, shot_pixels, self.identity_pixels, grid)
        self.log.append(entry)
        if self.matches:
            index, valid = body_matches(shot_pixels, self.identity_pixels, identity_fg.cpu().numpy().astype(bool))
            new_index = matches.index.clone()
            new_sim = matches.similarity.clone()
            valid_t = torch.from_numpy(valid).to(new_index.device)
            new_index[valid_t] = torch.from_numpy(index).to(new_index.device)[valid_t]
            new_sim[valid_t] = 1.0
            matches = Matches(new_index, new_sim)
        return fg, matches
