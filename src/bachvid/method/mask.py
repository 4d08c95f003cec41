"""Foreground masks read from video-to-text attention.

A video token belongs to the character when it attends at least as much to the character's
words as to the background's (the paper's rule, "fg_over_bg"); the "otsu" rule instead splits the
video's tokens where their foreground share fg / (fg + bg) divides best in two. Only the (video queries x real text keys) block of attention is
needed, computed in query chunks, so the full (text + video)^2 matrix is never built.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .config import MASK_RULES


def text_attention_scores(
    video_queries: torch.Tensor,
    text_keys: torch.Tensor,
    real_length: int,
    background: torch.Tensor,
    foreground: torch.Tensor,
    chunk_size: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per video token: mean attention to background tokens and to foreground tokens.

    video_queries: (H, Nv, D) as attention sees them (RoPE applied); text_keys: (H, T, D).
    The softmax runs over the first `real_length` text tokens (padding excluded) and is summed
    over heads. Returns two (Nv,) float32 tensors.
    """
    heads, nv, dim = video_queries.shape
    keys = text_keys[:, :real_length].float()
    scale = dim**-0.5
    bg_scores, fg_scores = [], []
    for start in range(0, nv, chunk_size):
        q = video_queries[:, start : start + chunk_size].float()
        probs = torch.softmax(q @ keys.transpose(1, 2) * scale, dim=-1).sum(0)  # (chunk, T_real)
        bg_scores.append(probs[:, background].mean(-1))
        fg_scores.append(probs[:, foreground].mean(-1))
    return torch.cat(bg_scores), torch.cat(fg_scores)


def otsu_threshold(values: torch.Tensor) -> float:
    """The threshold that splits `values` into two classes with the largest between-class variance
    (Otsu), exact over the sorted values (no histogram). Values above it form the upper class; with
    fewer than two distinct values nothing lies above it."""
    v = values.reshape(-1).double().sort().values
    n = v.numel()
    if n < 2 or v[0] == v[-1]:
        return float(v[-1]) if n else 0.0
    below = torch.arange(1, n, dtype=torch.float64, device=v.device)  # size of the lower class per split
    sums = v.cumsum(0)[:-1]
    mean_low, mean_high = sums / below, (v.sum() - sums) / (n - below)
    between = below * (n - below) * (mean_low - mean_high) ** 2
    between[v[1:] == v[:-1]] = -1.0  # a split must fall between distinct values
    k = int(between.argmax())
    return float((v[k] + v[k + 1]) / 2)


def foreground_tokens(background: torch.Tensor, foreground: torch.Tensor, rule: str = "fg_over_bg") -> torch.Tensor:
    """(Nv,) bool: which video tokens are the character, from their mean attention to the background's
    and the foreground's words. 'fg_over_bg' (the paper): fg >= bg. 'otsu' (beyond the paper): the
    foreground share fg / (fg + bg) above its Otsu threshold over this video's tokens, for models whose
    attention ranks the character's tokens right but puts the fg = bg line in the wrong place (on the
    toy v2 model: ranking AUC 0.93 but IoU 0.35 with fg >= bg, 0.52-0.57 with Otsu)."""
    if rule == "fg_over_bg":
        return foreground >= background
    if rule == "otsu":
        share = foreground / (foreground + background).clamp_min(1e-12)
        return share > otsu_threshold(share)
    raise ValueError(f"mask rule must be {' or '.join(map(repr, MASK_RULES))}, not {rule!r}")


def open_mask(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Erosion then dilation of a (F, h, w) bool mask, per frame: removes specks, keeps shapes."""
    if kernel <= 1:
        return mask
    pad = kernel // 2
    x = mask.float()[:, None]
    eroded = -F.max_pool2d(-F.pad(x, (pad,) * 4, value=1.0), kernel, stride=1)
    opened = F.max_pool2d(F.pad(eroded, (pad,) * 4, value=0.0), kernel, stride=1)
    return opened[:, 0] > 0.5


class TextAttentionReader(Protocol):
    """What the controller hands the attention of video queries to text keys at each mask layer
    (a plan's read_mask) of the conditional branch: the method's MaskReader, or a research
    harness's recorder. Give one to `BachVidPipeline.denoise(mask_reader=...)` or a VideoState."""

    def add(self, layer: int, video_queries: torch.Tensor, text_keys: torch.Tensor, *, step: int) -> None:
        """video_queries: (H, Nv, D) as attention sees them (RoPE applied); text_keys: (H, T, D);
        step: the denoising step of the plan being carried out."""


class MaskReader:
    """Accumulates background/foreground attention over the mask layers of one step (a
    TextAttentionReader)."""

    def __init__(self, background: torch.Tensor, foreground: torch.Tensor, real_length: int, chunk_size: int):
        self.background, self.foreground = background, foreground
        self.real_length, self.chunk_size = real_length, chunk_size
        self.bg_sum: torch.Tensor | None = None
        self.fg_sum: torch.Tensor | None = None
        self.layers: list[int] = []

    def add(self, layer: int, video_queries: torch.Tensor, text_keys: torch.Tensor, *, step: int | None = None) -> None:
        bg, fg = text_attention_scores(
            video_queries, text_keys, self.real_length,
            self.background.to(video_queries.device), self.foreground.to(video_queries.device),
            self.chunk_size,
        )
        self.bg_sum = bg if self.bg_sum is None else self.bg_sum + bg
        self.fg_sum = fg if self.fg_sum is None else self.fg_sum + fg
        self.layers.append(layer)

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.layers:
            raise RuntimeError("no mask layer ran: check mask_layers and tau_mask against the model")
        n = len(self.layers)
        return self.bg_sum / n, self.fg_sum / n

    def mask(self, grid: tuple[int, int, int], open_kernel: int, rule: str = "fg_over_bg") -> torch.Tensor:
        """The cleaned (F, h, w) foreground mask over the video token grid (`foreground_tokens`' rule)."""
        bg, fg = self.scores()
        return open_mask(foreground_tokens(bg, fg, rule).reshape(grid).cpu(), open_kernel)


def tokens_from_pixels(pixels, grid: tuple[int, int, int]) -> torch.Tensor:
    """A (F, H, W) pixel mask on the (f, h, w) video token grid: a token is foreground when the mask
    covers at least half of its pixels over the frames it stands for. Causal video VAEs (CogVideoX,
    Wan) keep frame 0 alone in latent frame 0 and pack the others evenly, (F - 1) / (f - 1) a frame."""
    mask = torch.as_tensor(pixels).bool()
    f, h, w = grid
    frames, height, width = mask.shape
    per_frame = (frames - 1) // (f - 1) if f > 1 else 0
    if (f > 1 and per_frame * (f - 1) != frames - 1) or (f == 1 and frames != 1) or height % h or width % w:
        raise ValueError(f"a {frames} x {height} x {width} mask does not map onto a {f} x {h} x {w} token grid "
                         f"(frame 0 alone, then the same number of frames per latent frame; whole pixels per token)")
    cover = F.avg_pool2d(mask.float()[:, None], (height // h, width // w))[:, 0]  # (F, h, w) share per frame
    groups = [cover[:1]] + [cover[1 + k * per_frame: 1 + (k + 1) * per_frame] for k in range(f - 1)]
    return torch.stack([g.mean(0) for g in groups]) >= 0.5


def carry_mask(identity_fg: torch.Tensor, match_index: torch.Tensor, grid: tuple[int, int, int],
               open_kernel: int) -> torch.Tensor:
    """A shot's (F, h, w) foreground carried from the identity's through its matches: each shot
    token takes the identity mask's value at the identity token it matches (`Matches.index`),
    then the mask is opened as read masks are. Matches are far better than masks read from text
    attention on small models (0.9+ against ~0.4-0.5), so only the identity's mask has to be right."""
    values = identity_fg.reshape(-1).to(match_index.device)[match_index]
    return open_mask(values.reshape(grid).cpu(), open_kernel)

