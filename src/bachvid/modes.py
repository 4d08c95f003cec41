"""How a story's videos are run: the identity pass, the shots' pre-runs and real runs, in batches.

A shot needs, at every injected step, the identity's keys and values of that step. Where they
come from is the *identity mode*; the method (plans, controller) is the same in all three:

- `cache`: the identity runs alone first and a `CachedIdentity` keeps everything shots read.
  Simple, but ~260 GB at CogVideoX-5B size: for small models.
- `replay`: the identity runs alone first, keeping only its latent before every step. Shots then
  run in a batch with the identity *replayed*: at each step its stored latent re-enters the
  batch and runs only the blocks whose keys, values or outputs the shots read, feeding a
  `LiveIdentity` in the same attention calls. Nothing per-layer is stored; the kept latents are
  also what a saved character is made of.
- `lockstep`: the identity runs alone only up to the pre-run's end (its mask and the latents the
  pre-runs replay), then is denoised again from its noise in the same batch as each group of
  shots' real runs, which read it live. No identity store at all; the identity costs a full
  forward per step per group, which lockstep repays by batching many shots.

A *saved identity* (`SavedIdentity`, a `.bvid` file) is the replay form kept on disk: the
identity's latent before every step, its foreground mask and final latents, with what it was
made for (model, settings, BachVid config). A story run from it has no identity pass: its shots
run in replay mode from the saved latents, and the identity's result is its saved final latents
decoded again.

In every mode a shot is a pre-run (up to max(tau_mask, tau_match), background injection only,
reading the shot's mask and matches) and a real run from the same noise. Shots go in groups of
`group` videos per batch. All modes give the same videos (tested to 1e-5 in float32).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .backbones import BatchVideo
from .method.config import BachVidConfig
from .method.controller import VideoState
from .method.identity import CachedIdentity, LiveIdentity
from .method.latent_lock import LatentLocks, agreeing_tokens, shot_locks
from .method.mask import MaskReader, carry_mask
from .method.match import MatchAccumulator, Matches
from .method.plan import PlanMaker, StepPlan
from .method.prompt import PromptSpans

IDENTITY_MODES = ("cache", "replay", "lockstep")


@dataclass
class ShotResult:
    role: str  # "identity" or "shot"
    index: int | None  # shot index in the story; None for the identity
    prompt: str
    seed: int
    frames: np.ndarray  # uint8 (F, H, W, 3)
    mask: np.ndarray | None  # bool (latent frames, h tokens, w tokens)
    seconds: float
    record: object | None = None  # the identity's CachedIdentity (cache mode)
    stats: dict = field(default_factory=dict)
    latents: torch.Tensor | None = None  # final latents, before the VAE
    replay: list[torch.Tensor] | None = None  # the identity's latent before each step (replay mode)


@dataclass
class Video:
    """A video of the story: its prompt, seed and text embeddings (drawn once, shared by its runs)."""

    role: str
    index: int | None
    spans: PromptSpans
    seed: int
    embeds: torch.Tensor
    negative: torch.Tensor | None
    agreeing: torch.Tensor | None = None
    """A shot's tokens whose pre-run latent agrees with the identity's (`background_lock_agreement`):
    set by its pre-run, held by its background lock (None: agrees nowhere)."""

    def denoised(self) -> BatchVideo:
        return BatchVideo(self.embeds, self.negative, seed=self.seed)

    def replayed(self, latents: list[torch.Tensor]) -> BatchVideo:
        return BatchVideo(self.embeds, self.negative, replay=latents)


# Config fields a saved identity does not depend on: free-form notes, whether shots take the
# identity's background (the identity pass is the same either way; a story decides per run), and
# how strongly shots weigh the injected character, and whether shots lock latents to the identity's
# saved ones (files saved before these knobs existed still load).
_FREE_CONFIG_FIELDS = ("extra", "shared_background", "foreground_logit_bias", "background_latents_until",
                       "background_latents_weight", "background_lock_agreement", "character_latents_until")


def identity_config(config: BachVidConfig) -> dict:
    """The BachVid config as a saved identity records and compares it."""
    return {k: v for k, v in config.to_dict().items() if k not in _FREE_CONFIG_FIELDS}


@dataclass
class SavedIdentity:
    """A character kept for later stories: the identity in replay form, and what it was made for.

    `latents[i]` is the identity's latent before step i (as a replay reads it), `final` its latent
    after the last step, `foreground` its mask over the (latent frames, h, w) token grid. Text
    embeddings are not kept: the prompt is encoded again (deterministic) when shots are made."""

    background: str
    character: str
    action: str
    prompt: str
    seed: int
    latents: list[torch.Tensor]
    foreground: torch.Tensor
    final: torch.Tensor
    settings: object  # GenerationSettings: seed, steps, frames, size, guidance it was made with
    config: dict  # identity_config(...) of the BachVidConfig it was made with
    model: str
    model_config_hash: str
    path: str | None = None  # the file it was saved to or loaded from
    content_hash: str | None = None  # the file's content hash
    frames: np.ndarray | None = None  # uint8 (F, H, W, 3), when it was just made (None when loaded)

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (*self.latents, self.foreground, self.final))

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the .bvid file holds: latents.000 ... (before each step), foreground, final."""
        width = max(3, len(str(len(self.latents) - 1)))
        return {**{f"latents.{i:0{width}d}": x for i, x in enumerate(self.latents)},
                "foreground": self.foreground, "final": self.final}

    def metadata(self) -> dict:
        s = self.settings
        return {"model": self.model, "model_config_hash": self.model_config_hash, "bachvid_config": self.config,
                "background": self.background, "character": self.character, "action": self.action,
                "prompt": self.prompt, "seed": self.seed, **identity_expectation(s, None, None),
                "dtype": str(self.final.dtype).removeprefix("torch.")}

    def bachvid_config(self, **changes) -> BachVidConfig:
        """The BachVidConfig it was made with (shared background on, no notes), then `changes`."""
        values = dict(self.config)
        for name in ("vital_layers", "mask_layers", "match_layers"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return BachVidConfig(**{**values, **changes})


def guidance_kwargs(settings) -> dict:
    """The settings' guidance_scale_2 for a backbone's denoise, when set (only Wan takes it:
    `BachVidPipeline.settings_errors` refuses it elsewhere)."""
    scale_2 = getattr(settings, "guidance_scale_2", None)
    return {} if scale_2 is None else {"guidance_scale_2": scale_2}


def identity_expectation(settings, config: BachVidConfig | None, model_hash: str | None) -> dict:
    """The metadata a saved identity must carry to serve a run with these settings, config and
    model (None: not compared)."""
    expect = {}
    if model_hash is not None:
        expect["model_config_hash"] = model_hash
    if settings is not None:
        expect.update(frames=settings.num_frames, height=settings.height, width=settings.width,
                      steps=settings.num_inference_steps, guidance=settings.guidance_scale)
        if getattr(settings, "guidance_scale_2", None) is not None:  # Wan 2.2's low-noise expert; absent: unset
            expect["guidance_2"] = settings.guidance_scale_2
    if config is not None:
        expect["bachvid_config"] = identity_config(config)
    return expect


class Readings(Protocol):
    """Replaces what BachVid reads from attention: the research harness's oracles (true masks,
    true correspondences) plug in here to tell mask and match errors from injection limits."""

    def identity_mask(self, video: "Video", mask: torch.Tensor, latents: torch.Tensor,
                      frames: Callable[[], np.ndarray]) -> torch.Tensor:
        """The identity's (F, h, w) foreground, given the one read from attention, its final latents
        and its uint8 frames on demand (`frames()`: decoded once per run, shared with its result;
        cache and replay modes; lockstep has no final identity before the shots run)."""

    def shot(self, video: "Video", mask: torch.Tensor, matches: Matches,
             identity_fg: torch.Tensor) -> tuple[torch.Tensor, Matches]:
        """A shot's foreground and matches, given the ones its pre-run read."""


@dataclass
class Instruments:
    """Research hooks for a story run; none changes anything unless given."""

    readings: Readings | None = None
    probe: Callable[["Video"], Callable[..., None] | None] | None = None  # per shot: a VideoState.probe


class SegmentedIdentity:
    """Readings that take the identity's mask from its pixels instead of its text attention: the
    user's `segment` (a text-prompted segmenter, a mask drawn by hand) maps the identity's decoded
    frames, uint8 (F, H, W, 3), to a bool (F, H, W) character mask, which goes onto the token grid
    (`tokens_from_pixels`). The identity is finished before any shot reads it (cache and replay
    modes), so its mask can come from what it shows. Shots keep what their pre-runs read; with
    `shot_mask="matches"` they carry this mask through their matches."""

    def __init__(self, segment: Callable[[np.ndarray], np.ndarray]):
        self.segment = segment

    def identity_mask(self, video: "Video", mask: torch.Tensor, latents: torch.Tensor,
                      frames: Callable[[], np.ndarray]) -> torch.Tensor:
        from .method.mask import tokens_from_pixels

        frames = frames()
        pixels = np.asarray(self.segment(frames))
        if pixels.shape != frames.shape[:3]:
            raise ValueError(f"the identity segmenter returned a {pixels.shape} mask for {frames.shape[:3]} "
                             "(frames, height, width) of video: it must return one bool per pixel")
        return tokens_from_pixels(pixels.astype(bool), tuple(mask.shape)).to(mask.device)

    def shot(self, video: "Video", mask: torch.Tensor, matches: Matches,
             identity_fg: torch.Tensor) -> tuple[torch.Tensor, Matches]:
        return mask, matches


def _to_uint8(frames) -> np.ndarray:
    return (np.clip(np.asarray(frames), 0, 1) * 255 + 0.5).astype(np.uint8)


def _depth(plan: StepPlan) -> int:
    """Blocks a replayed identity must run for a step's plan: through the last layer it feeds."""
    layers = plan.keep_key_value | plan.keep_output
    return max(layers) + 1 if layers else 0


class StoryRun:
    """One story under one config and settings: makes its videos' plans and runs their batches."""

    def __init__(self, pipe, story, settings, config: BachVidConfig, progress: bool = True, output_type: str = "np"):
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' (decoded frames) or 'latent', got {output_type!r}")
        self.pipe, self.backbone, self.story = pipe, pipe.backbone, story
        self.settings, self.config, self.progress, self.output_type = settings, config, progress, output_type
        self.maker = PlanMaker(config, pipe.layers(config), settings.num_inference_steps, self.backbone.joint_text_length)
        self.instruments = Instruments()
        self.grid = self.backbone.token_grid(settings.num_frames, settings.height, settings.width)
        self.identity_apart = False
        """Run a live identity's rows apart from its shots' inside each block (see `run_story`)."""

    # Videos and their readers ----------------------------------------------------------------
    def video(self, role: str, index: int | None) -> Video:
        story, settings = self.story, self.settings
        shot = story.identity if index is None else story.shots[index]
        seed = settings.seed if index is None else story.shot_seed(index, settings.seed, settings.shot_seeds)
        return self.video_of(role, index, shot.background, story.character, shot.action, seed)

    def video_of(self, role: str, index: int | None, background: str, character: str, action: str,
                 seed: int) -> Video:
        """A video from its texts and seed (a saved identity's, say), its prompt encoded afresh."""
        spans = self.pipe.spans(background, character, action)
        embeds, negative = self.backbone.encode(spans.prompt, self.settings.guidance_scale > 1.0)
        return Video(role, index, spans, seed, embeds, negative)

    def _reader(self, video: Video) -> MaskReader:
        spans = video.spans
        return MaskReader(torch.tensor(spans.background), torch.tensor(spans.foreground(self.config.mask_foreground)),
                          spans.real_length, self.config.chunk_size)

    def _denoise(self, batch: list[BatchVideo], step_states, run_steps=None, on_step_end=None, label="",
                 num_steps: int | None = None):
        s = self.settings
        return self.backbone.denoise(
            batch, num_frames=s.num_frames, height=s.height, width=s.width,
            num_inference_steps=num_steps or s.num_inference_steps,
            guidance_scale=s.guidance_scale, step_states=step_states, run_steps=run_steps, on_step_end=on_step_end,
            progress=label if self.progress else False, apart=self.identity_apart, **guidance_kwargs(s))

    def frames(self, latents: torch.Tensor) -> np.ndarray | None:
        """Decoded uint8 frames; None with output_type='latent' (as diffusers pipelines skip the VAE)."""
        if self.output_type == "latent":
            return None
        return self.decode(latents)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Decoded uint8 frames, whatever the output type (what a segmenter looks at)."""
        return _to_uint8(self.backbone.decode(latents, self.settings.num_frames))

    # The identity alone ------------------------------------------------------------------------
    def identity_alone(self, identity: Video, record: CachedIdentity | None, run_steps: int | None = None,
                       keep_latents: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """Denoise the identity alone, reading its mask; a cache keeps what shots read, and with
        keep_latents its latent before every step is kept (what a replay needs)."""
        plans = self.maker.identity_plans() if record is not None else self.maker.mask_plans()
        state = VideoState(target=record, mask_reader=self._reader(identity))
        kept = None
        if keep_latents:
            s = self.settings
            generator = self.backbone.generator(identity.seed)
            kept = [self.backbone.initial_noise(generator, s.num_frames, s.height, s.width, identity.embeds.dtype)]

        def step_states(i):
            state.plan = plans(i)
            return [(state, None)]

        def on_step_end(i, latents):
            if kept is not None:
                kept.append(latents[0])

        latents = self._denoise([identity.denoised()], step_states, run_steps, on_step_end, "identity")[0]
        mask = state.mask_reader.mask(self.grid, self.config.mask_open_kernel, self.config.mask_rule)
        if record is not None:
            record.foreground = mask
        return latents, mask, kept

    # Shots -----------------------------------------------------------------------------------
    def _source(self, identity: Video, identity_fg, cache: CachedIdentity | None, replay: list | None,
                prerun: bool, stride: int = 1):
        """Where shots read the identity: a cache (no batch row), or a live identity row of the batch
        (replayed from `replay`, or denoised again when `replay` is None)."""
        if cache is not None:
            return cache, None
        live = LiveIdentity(self.backbone.joint_text_length, identity_fg)
        plans = self.maker.source_plans(prerun)
        state = VideoState(target=live)
        row = identity.replayed(replay) if replay is not None else identity.denoised()

        def at_step(i):
            state.plan = plans(i * stride)
            return state, (_depth(state.plan) if replay is not None else None)

        return live, (row, at_step)

    def prerun_stride(self) -> int:
        """The coarse pre-run's stride: the largest k <= config.prerun_stride dividing the steps and
        both read steps, whose (steps / k)-step schedule is every k-th timestep of the full one."""
        s, n = self.maker.schedule, self.settings.num_inference_steps
        scheduler = self.backbone.pipe.scheduler
        for k in range(min(self.config.prerun_stride, n), 1, -1):
            if n % k or s.mask_step % k or s.match_step % k:
                continue
            scheduler.set_timesteps(n)
            full = scheduler.timesteps.clone()
            scheduler.set_timesteps(n // k)
            if torch.equal(scheduler.timesteps.cpu(), full[::k].cpu()):
                return k
        return 1

    def preruns(self, shots: list[Video], identity: Video, identity_fg, *, cache=None, replay=None):
        """Each shot's pre-run up to max(tau_mask, tau_match): its mask and its matches to the identity.

        With a coarse pre-run (stride k) it takes every k-th step: its step i is step i*k of the full
        schedule for plans, the identity's replayed latents and cached keys/values alike."""
        k = self.prerun_stride()
        if replay is not None:
            replay = replay[::k]
        source, row = self._source(identity, identity_fg, cache, replay, prerun=True, stride=k)
        full_plans = self.maker.prerun_plans(identity_fg)
        plans = (lambda i: full_plans(i * k)) if k > 1 else full_plans
        carried = self.config.shot_mask == "matches"  # the identity's mask, carried by the matches: none read
        states = [VideoState(source=source, mask_reader=None if carried else self._reader(v),
                             matcher=MatchAccumulator(self.config.chunk_size)) for v in shots]
        # The identity row goes first, so its keys/values reach the live record before shots read them.
        batch = ([row[0]] if row else []) + [v.denoised() for v in shots]

        def step_states(i):
            for state in states:
                state.plan = plans(i)
            return ([row[1](i)] if row else []) + [(state, None) for state in states]

        run_steps = (self.maker.schedule.prerun_steps - 1) // k + 1
        ends = self._denoise(batch, step_states, run_steps, label="pre-run", num_steps=self.settings.num_inference_steps // k)
        if self.agreement_lock:  # the identity's latent at the pre-run's end: full-schedule step run_steps * k
            latents, step = (cache.trajectory, run_steps * k) if cache is not None else (replay, run_steps)
            self._agreement(shots, identity, ends[len(ends) - len(shots):], latents, step)
        readings = []
        for state in states:
            matches, kernel = state.matcher.result(), self.config.mask_open_kernel
            mask = (carry_mask(identity_fg, matches.index, self.grid, kernel) if carried
                    else state.mask_reader.mask(self.grid, kernel, self.config.mask_rule))
            readings.append((mask, matches))
        return readings

    @property
    def agreement_lock(self) -> bool:
        """Whether the shots' background lock holds the tokens their pre-runs agree on."""
        c = self.config
        return c.background_lock_agreement > 0 and c.shared_background and c.background_latents_until > 0

    def _agreement(self, shots: list[Video], identity: Video, ends: list[torch.Tensor], identity_latents, step: int):
        """Each shot's tokens whose latent at the end of its pre-run agrees with the identity's at that
        step (`identity_latents[step]`). Latents agree only when drawn from the same noise: a shot on
        another seed keeps `agreeing` None, so its background lock holds nothing."""
        for video, end in zip(shots, ends):
            if video.seed != identity.seed:
                continue
            if identity_latents is None:
                raise ValueError("the agreement lock needs the identity's latents at every step; this identity "
                                 "was made without them (make it again with the same config)")
            video.agreeing = agreeing_tokens(end, identity_latents[step], self.backbone,
                                             self.config.background_lock_agreement)

    def real_runs(self, shots: list[Video], identity: Video, identity_fg, readings, *, cache=None, replay=None,
                  trajectory: list[torch.Tensor] | None = None):
        """The shots' real runs from their noise; with neither cache nor replay the identity is denoised
        in the same batch (lockstep) and its latents come back first. `trajectory` (the identity's
        latent before every step, then its final one) is what latent locks follow where the identity
        is not denoised in the batch."""
        source, row = self._source(identity, identity_fg, cache, replay, prerun=False)
        states, plan_fns = [], []
        probe = self.instruments.probe or (lambda video: None)
        for video, (fg, matches) in zip(shots, readings):
            states.append(VideoState(source=source, probe=probe(video)))
            plan_fns.append(self.maker.shot_plans(identity_fg, fg, matches))
        batch = ([row[0]] if row else []) + [v.denoised() for v in shots]

        def step_states(i):
            for state, plans in zip(states, plan_fns):
                state.plan = plans(i)
            return ([row[1](i)] if row else []) + [(state, None) for state in states]

        locks = self._locks(shots, identity_fg, readings, row, cache, trajectory)
        return self._denoise(batch, step_states, on_step_end=locks, label="shots")

    def _locks(self, shots, identity_fg, readings, row, cache, trajectory) -> LatentLocks | None:
        """The shots' latent locks (None: no shot has one). The identity's latent after step i is its
        trajectory's, or, denoised in this batch (lockstep), its row's."""
        if trajectory is None and cache is not None:
            trajectory = cache.trajectory
        live = row is not None and trajectory is None
        first, rows = (1 if row else 0), {}
        for k, ((fg, matches), video) in enumerate(zip(readings, shots)):
            locks = shot_locks(self.config, identity_fg, fg, matches, self.settings.num_inference_steps, video.agreeing)
            if not locks:
                continue
            if trajectory is None and not live:
                raise ValueError("a latent lock needs the identity's latents at every step; this identity "
                                 "was made without them (make it again with the same config)")
            rows[first + k] = (locks, (lambda i, latents: latents[0]) if live else (lambda i, _: trajectory[i + 1]))
        return LatentLocks(rows, self.backbone) if rows else None


def run_story(pipe, story, settings, config: BachVidConfig, mode: str, group: int, shots: list[int],
              progress: bool = True, saved: SavedIdentity | None = None,
              output_type: str = "np", instruments: Instruments | None = None) -> Iterator[ShotResult]:
    """Yield the identity's result, then each shot's as its group finishes (shots: indices to make).

    With `saved`, there is no identity pass: the saved identity is replayed (mode must be "replay")
    and its result is its saved final latents, decoded."""
    if mode not in IDENTITY_MODES:
        raise ValueError(f"identity mode must be one of {', '.join(IDENTITY_MODES)}, got {mode!r}")
    if group < 1:
        raise ValueError(f"group must be >= 1 shot per batch, got {group}")
    start = time.perf_counter()
    run = StoryRun(pipe, story, settings, config, progress, output_type)
    run.instruments = instruments or Instruments()
    # The low-memory choices (replay, or lockstep one shot at a time) run a live identity's rows
    # apart from its shots' inside each block: the block's activations peak at one video's rows,
    # not two. Lockstep with larger groups keeps one batch: it is the mode for speed.
    run.identity_apart = mode == "replay" or group == 1
    if saved is not None:
        if mode != "replay" or not config.enabled:
            raise ValueError("a saved identity is used in replay mode, with BachVid enabled")
        identity = run.video_of("identity", None, saved.background, saved.character, saved.action, saved.seed)
        if identity.spans.prompt != saved.prompt:
            raise ValueError(f"the saved identity's prompt {saved.prompt!r} is built as {identity.spans.prompt!r} "
                             f"by this bachvid; save the identity again")
    else:
        identity = run.video("identity", None)
    if not config.enabled:
        yield from vanilla_videos(run, identity, shots, start)
        return
    stride = run.prerun_stride()
    prerun_steps = (run.maker.schedule.prerun_steps - 1) // stride + 1  # run by each shot's pre-run
    cache, trajectory = None, None  # trajectory: the identity's latents before every step, then its final ones
    if saved is not None:
        latents, identity_fg, replay = saved.final.to(pipe.backbone.pipe._execution_device), saved.foreground, \
            saved.latents
        trajectory = replay + [latents]
        identity_frames = functools.cache(functools.partial(run.decode, latents))
        identity_stats = {"identity_mode": mode, "identity_bytes": saved.nbytes, "identity_file": saved.path,
                          "identity_content_hash": saved.content_hash}
    else:
        cache = CachedIdentity(text_length=pipe.backbone.joint_text_length) if mode == "cache" else None
        alone_steps = run.maker.schedule.prerun_steps if mode == "lockstep" and shots else None
        locking = mode == "cache" and (config.background_latents_until > 0 or config.character_latents_until > 0)
        latents, identity_fg, replay = run.identity_alone(identity, cache, alone_steps,
                                                          keep_latents=mode != "cache" or locking)
        identity_frames = functools.cache(functools.partial(run.decode, latents))  # decoded once: readings and result
        if locking:
            cache.trajectory, replay = replay + [latents], None
        elif mode == "replay":
            trajectory = replay + [latents]
        if run.instruments.readings is not None:
            if mode == "lockstep":
                raise ValueError("an identity mask from the identity's video (a segmenter, oracle readings) needs "
                                 "the video finished before the shots: use cache or replay mode, not lockstep")
            identity_fg = run.instruments.readings.identity_mask(identity, identity_fg, latents, identity_frames)
            if cache is not None:
                cache.foreground = identity_fg
        identity_stats = {"identity_mode": mode, "identity_bytes": cache.nbytes if cache else
                          sum(x.numel() * x.element_size() for x in replay)}
        if isinstance(run.instruments.readings, SegmentedIdentity):
            identity_stats["identity_mask"] = "identity_segmenter"  # not its text attention
    pending_identity = None
    if mode == "lockstep" and shots:
        pending_identity = identity_stats
    else:
        frames = None if run.output_type == "latent" else identity_frames()
        yield ShotResult("identity", None, identity.spans.prompt, identity.seed, frames, identity_fg.numpy(),
                         time.perf_counter() - start, cache, identity_stats, latents, replay)
    for first in range(0, len(shots), group):
        group_start = time.perf_counter()
        videos = [run.video("shot", i) for i in shots[first:first + group]]
        source = {"cache": cache} if mode == "cache" else {"replay": replay}
        readings = run.preruns(videos, identity, identity_fg, **source)
        if run.instruments.readings is not None:
            readings = [run.instruments.readings.shot(v, fg, m, identity_fg) for v, (fg, m) in zip(videos, readings)]
        real = {"cache": cache} if mode == "cache" else {"replay": replay} if mode == "replay" else {}
        outs = run.real_runs(videos, identity, identity_fg, readings, trajectory=trajectory, **real)
        if mode == "lockstep":
            identity_latents, outs = outs[0], outs[1:]
            if pending_identity is not None:
                yield ShotResult("identity", None, identity.spans.prompt, identity.seed, run.frames(identity_latents),
                                 identity_fg.numpy(), time.perf_counter() - start, None, pending_identity,
                                 identity_latents, None)
                pending_identity = None
        elif mode == "replay":
            outs = outs[1:]
        seconds = (time.perf_counter() - group_start) / len(videos)
        for video, (fg, matches), out in zip(videos, readings, outs):
            pairs = matches.foreground_pairs(fg, identity_fg, config.match_threshold)[0].numel()
            stats = {"foreground_tokens": int(fg.sum()), "foreground_pairs": int(pairs), "prerun_steps": prerun_steps, "prerun_stride": stride,
                     "identity_mode": mode, "group": len(videos)}
            if saved is not None:
                stats["identity_file"] = saved.path
            yield ShotResult("shot", video.index, video.spans.prompt, video.seed, run.frames(out), fg.numpy(),
                             seconds, None, stats, out)


def vanilla_videos(run: StoryRun, identity: Video, shots: list[int], start: float) -> Iterator[ShotResult]:
    """BachVid off: every video alone, exactly as the stock pipeline makes it."""
    for video in [identity] + [run.video("shot", i) for i in shots]:
        state = VideoState()
        latents = run._denoise([video.denoised()], lambda i: [(state, None)], label=video.role)[0]
        yield ShotResult(video.role, video.index, video.spans.prompt, video.seed, run.frames(latents), None,
                         time.perf_counter() - start, None, {}, latents)
        start = time.perf_counter()
