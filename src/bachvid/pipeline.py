"""BachVidPipeline: one story in, an identity video and consistent shots out.

It wraps a stock diffusers pipeline (loaded with the usual `from_pretrained`) and steers it
through attention processors, running the stock pipeline's own parts (text encoder, scheduler,
transformer, VAE) step for step, so that with BachVid switched off its videos *are* the stock
pipeline's. The order of work for a story (see `modes.py` for how it is batched):

1. identity: denoise the identity shot, reading its foreground mask and keeping what the
   identity mode needs;
2. per shot, pre-run: denoise from the shot's noise up to max(tau_mask, tau_match) with
   background injection only, reading the shot's mask and its point matches;
3. per shot, real run: restart from the same noise with background and point-tracked
   foreground injection and token merge.

Generation runs under `torch.inference_mode()`, as diffusers pipelines do.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from .backbones import BatchVideo, backbone_for
from .method.config import BachVidConfig
from .method.controller import Controller, VideoState
from .method.mask import TextAttentionReader
from .method.plan import Layers
from .method.prompt import PromptSpans, PromptTooLong, token_spans
from .modes import (
    IDENTITY_MODES,
    SavedIdentity,
    SegmentedIdentity,
    ShotResult,
    StoryRun,
    guidance_kwargs,
    identity_config,
    identity_expectation,
    run_story,
    vanilla_videos,
)

DEFAULTS_FILE = "bachvid.json"  # optional per-model defaults: steps, guidance, fps; "bachvid": config knobs


@dataclass(frozen=True)
class GenerationSettings:
    seed: int = 0
    num_inference_steps: int = 50
    num_frames: int = 49
    height: int = 480
    width: int = 720
    guidance_scale: float = 6.0
    shot_seeds: str = "own"  # shots' noise when a story names none: "own" (seed + 1 + i) or "identity"
    guidance_scale_2: float | None = None  # Wan 2.2's low-noise expert's guidance; None: guidance_scale

    def for_story(self, story, **explicit) -> "GenerationSettings":
        """The one precedence rule of the API and the CLI: these (model) defaults < the story's own
        options (seed, frames, size, shot_seeds) < explicit values (None: not given)."""
        changes = {
            name: value
            for name, value in (("seed", story.seed), ("num_frames", story.num_frames),
                                ("height", story.height), ("width", story.width),
                                ("shot_seeds", story.shot_seeds))
            if value is not None
        }
        unknown = set(explicit) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown generation settings: {', '.join(sorted(unknown))}")
        changes.update({name: value for name, value in explicit.items() if value is not None})
        return replace(self, **changes)


@dataclass
class StoryResult:
    identity: ShotResult
    shots: list[ShotResult]


class BachVidPipeline:
    """Consistent multi-shot generation on a diffusers video pipeline."""

    def __init__(self, pipe, *, model_name: str = "", model_note: str | None = None, defaults: dict | None = None):
        self.pipe = pipe
        self.backbone = backbone_for(pipe)
        self.controller = Controller()
        self.backbone.install(self.controller)
        self.model_name = model_name or type(pipe).__name__
        self.model_note = model_note
        self._defaults = defaults or {}

    # Loading and placement ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path | None = None, torch_dtype=None, **kwargs) -> "BachVidPipeline":
        """Load a diffusers video pipeline from a local folder or a hub id; None loads bachvid's default,
        and a shipped model's name (`bachvid.models.shipped_models()`: toy-cogvideox, toy-wan) loads it.

        torch_dtype defaults to float32 (weights stored in fp16 are upcast), which CPUs need."""
        import warnings

        from diffusers import DiffusionPipeline

        from .models import NOTES, default_model_path, shipped_model_path

        torch_dtype = torch_dtype or torch.float32
        note = None
        if path_or_id is None:
            path_or_id = default_model_path()
            if path_or_id is None:
                from .backbones.tiny import tiny_cogvideox_pipeline

                pipe = tiny_cogvideox_pipeline(num_layers=8)
                pipe.to(dtype=torch_dtype)
                return cls(pipe, model_name="tiny-random-cogvideox",
                           model_note="tiny random model: no trained default model in this install; "
                                      "videos will be noise",
                           defaults={"num_inference_steps": 10, "guidance_scale": 6.0})
            note = NOTES[Path(path_or_id).name]
        elif not Path(str(path_or_id)).expanduser().exists() and shipped_model_path(str(path_or_id)):
            path_or_id = shipped_model_path(str(path_or_id))  # a shipped model by name: toy-wan
            note = NOTES.get(path_or_id.name)
        path_or_id = str(path_or_id)
        local = Path(path_or_id).expanduser()
        looks_local = local.exists() or path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1
        if looks_local and not (local / "model_index.json").is_file():
            raise FileNotFoundError(f"no diffusers model folder at {local} (model_index.json is missing)")
        if looks_local:
            # The folder's pipeline class (model_index.json's _class_name) picks the backbone
            # (Wan or CogVideoX); an unsupported one is refused before any weights load.
            from .backbones import supported_pipeline

            supported_pipeline(json.loads((local / "model_index.json").read_text()).get("_class_name", ""))
        try:
            with warnings.catch_warnings():  # newer diffusers renames torch_dtype; both spellings work
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = DiffusionPipeline.from_pretrained(str(local) if looks_local else path_or_id,
                                                         torch_dtype=torch_dtype, **kwargs)
        except OSError as error:
            from .models import shipped_models

            hint = f" (models shipped with bachvid: {', '.join(shipped_models())})" if "/" not in path_or_id else ""
            raise FileNotFoundError(f"could not load model {path_or_id!r}{hint}: {error}") from error
        defaults = {}
        if looks_local and (local / DEFAULTS_FILE).is_file():
            defaults = json.loads((local / DEFAULTS_FILE).read_text())
        return cls(pipe, model_name=path_or_id, model_note=note, defaults=defaults)

    def to(self, *args, **kwargs) -> "BachVidPipeline":
        self.pipe.to(*args, **kwargs)
        return self

    def enable_model_cpu_offload(self, *args, **kwargs) -> None:
        self.pipe.enable_model_cpu_offload(*args, **kwargs)

    def enable_sequential_cpu_offload(self, *args, **kwargs) -> None:
        self.pipe.enable_sequential_cpu_offload(*args, **kwargs)

    def enable_vae_tiling(self) -> None:
        self.pipe.vae.enable_tiling()

    def enable_vae_slicing(self) -> None:
        self.pipe.vae.enable_slicing()

    @property
    def fps(self) -> int:
        return int(self._defaults.get("fps", 8))

    def default_settings(self) -> GenerationSettings:
        model = self.backbone.default_settings()
        return GenerationSettings(
            seed=0,
            num_inference_steps=int(self._defaults.get("num_inference_steps", 50)),
            num_frames=int(self._defaults.get("num_frames", model["num_frames"])),
            height=int(self._defaults.get("height", model["height"])),
            width=int(self._defaults.get("width", model["width"])),
            guidance_scale=float(self._defaults.get("guidance_scale", model.get("guidance_scale", 6.0))),
            shot_seeds=str(self._defaults.get("shot_seeds", "own")),
            guidance_scale_2=self._defaults.get("guidance_scale_2", getattr(self.backbone, "guidance_scale_2", None)),
        )

    def default_config(self, **changes) -> BachVidConfig:
        """BachVid's defaults with the model's calibrated knobs (bachvid.json's "bachvid" section,
        e.g. mask layers and step chosen by `python -m bachvid.toy.calibrate`), then `changes`."""
        model = dict(self._defaults.get("bachvid", {}))
        for name in ("vital_layers", "mask_layers", "match_layers"):
            if model.get(name) is not None:
                model[name] = tuple(model[name])
        try:
            return BachVidConfig(**{**model, **changes})
        except TypeError as error:
            raise ValueError(f"{DEFAULTS_FILE} of {self.model_name} has an unknown BachVid setting: {error}") from error

    def layers(self, config: BachVidConfig) -> Layers:
        return Layers.resolve(config, self.backbone.default_layers(), self.backbone.num_layers)

    # Text -----------------------------------------------------------------------------------
    def spans(self, background: str, character: str, action: str) -> PromptSpans:
        return token_spans(self.pipe.tokenizer, background, character, action, self.backbone.text_length)

    def story_errors(self, story) -> list:
        """A StoryError (file and line) for every shot whose background or character would be cut."""
        from .io.story import StoryError

        errors = []
        for shot in (story.identity, *story.shots):
            try:
                self.spans(shot.background, story.character, shot.action)
            except (PromptTooLong, ValueError) as error:
                errors.append(StoryError(str(error), path=story.path, line=shot.line or story.line))
        return errors

    MAX_VIDEO_TOKENS = 1_000_000  # 57x CogVideoX-5B's 17,550: far past any GPU, refused before it allocates

    def settings_errors(self, settings: GenerationSettings, num_shots: int = 0) -> list[str]:
        """What is wrong with these settings for this model, before anything is generated."""
        b = self.backbone
        errors = []
        m = b.size_multiple
        for name in ("height", "width"):
            value = getattr(settings, name)
            if not isinstance(value, int) or value < m or value % m:
                errors.append(f"{name} must be a positive multiple of {m} for this model, got {value}")
        if not isinstance(settings.num_frames, int) or settings.num_frames < 1:
            errors.append(f"frames must be >= 1, got {settings.num_frames}")
        if not isinstance(settings.num_inference_steps, int) or not 1 <= settings.num_inference_steps <= b.max_inference_steps:
            errors.append(f"steps must lie in 1..{b.max_inference_steps} (the scheduler's training steps), "
                          f"got {settings.num_inference_steps}")
        if not math.isfinite(settings.guidance_scale) or settings.guidance_scale < 0:
            errors.append(f"guidance must be a finite number >= 0, got {settings.guidance_scale}")
        if settings.guidance_scale_2 is not None and not hasattr(b, "guidance_scale_2"):
            errors.append(f"guidance_scale_2 is for Wan 2.2's low-noise expert; {b.name} has no second guidance")
        errors += b.settings_errors(settings) if hasattr(b, "settings_errors") else []  # the backbone's own rules
        if not isinstance(settings.seed, int) or not 0 <= settings.seed <= 2**64 - 1 - max(0, num_shots):
            errors.append(f"seed must lie in 0..2**64-1 with room for the shots' seeds (seed + {num_shots}), "
                          f"got {settings.seed}")
        if not errors:
            frames, h, w = b.token_grid(settings.num_frames, settings.height, settings.width)
            if frames * h * w > self.MAX_VIDEO_TOKENS:
                errors.append(f"{settings.num_frames} frames at {settings.height}x{settings.width} make "
                              f"{frames * h * w:,} video tokens; this pipeline refuses more than {self.MAX_VIDEO_TOKENS:,}")
        return errors

    def check_settings(self, settings: GenerationSettings, num_shots: int = 0) -> None:
        errors = self.settings_errors(settings, num_shots)
        if errors:
            raise ValueError("; ".join(errors))

    def check_story(self, story) -> None:
        """Raise the first of `story_errors` (the API's check before generating)."""
        errors = self.story_errors(story)
        if errors:
            raise errors[0]

    # Generation -----------------------------------------------------------------------------
    def __call__(self, story, settings: GenerationSettings | None = None, config: BachVidConfig | None = None,
                 progress: bool = True, *, identity_mode: str = "auto", group: int | None = None,
                 identity: SavedIdentity | None = None, **explicit) -> StoryResult:
        """Make a story's identity video and shots.

        settings: a whole GenerationSettings (explicit: beats the story's options), or None for the
        model's defaults (a saved identity's settings, with `identity`) with the story's options on
        top; keywords (seed=, num_inference_steps=, num_frames=, height=, width=, guidance_scale=)
        beat both. identity_mode: "cache", "replay", "lockstep" or "auto" (see `modes.py`); group:
        shots per batch (None: as many as fit); identity: a SavedIdentity (`load_identity`) whose
        character the shots take, instead of the story's identity line."""
        if settings is not None:
            settings = replace(settings, **{k: v for k, v in explicit.items() if v is not None})
        else:
            base = identity.settings if identity is not None else self.default_settings()
            settings = base.for_story(story, **explicit)
        results = list(self.generate(story, settings, config, identity_mode=identity_mode, group=group,
                                     progress=progress, identity=identity))
        return StoryResult(results[0], results[1:])

    def generate(self, story, settings: GenerationSettings | None = None, config: BachVidConfig | None = None, *,
                 identity_mode: str = "auto", group: int | None = None, shots: list[int] | None = None,
                 progress: bool = True, identity: SavedIdentity | None = None,
                 output_type: str = "np", instruments=None,
                 identity_segmenter: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[ShotResult]:
        """Yield the identity's result, then each shot's as soon as its batch is done (nothing waits
        for the whole story). shots: the indices of the shots to make (default: all);
        output_type="latent" skips the VAE (results carry latents, no frames); instruments: the
        research harness's hooks (modes.Instruments: oracle readings, attention probes);
        identity_segmenter: frames uint8 (F, H, W, 3) -> bool (F, H, W), the identity's character mask
        taken from its pixels instead of its text attention (beyond the paper; cache or replay mode;
        with `shot_mask="matches"` the shots carry it, see modes.SegmentedIdentity).

        With `identity` (a SavedIdentity) the story's identity line is not made: the saved
        character is replayed (identity_mode "auto" or "replay"), the first result is the saved
        identity decoded, and settings and config default to the saved ones. The story's character
        must be the saved one; where its shots' backgrounds differ from the saved identity's, only
        the character is carried over (shared background off)."""
        if identity is not None:
            settings = settings or identity.settings.for_story(story)
            config = config or identity.bachvid_config()
            self.check_saved_identity(identity, story, settings, config)
            if identity_mode not in ("auto", "replay"):
                raise ValueError(f"a saved identity is replayed: identity_mode must be 'auto' or 'replay', "
                                 f"got {identity_mode!r}")
            identity_mode = "replay"
            same_background = all(shot.background == identity.background for shot in story.shots)
            config = config.replace(shared_background=config.shared_background and story.shared_background
                                    and same_background)
        else:
            settings = settings or self.default_settings().for_story(story)
            config = config or self.default_config()
            config = config.replace(shared_background=config.shared_background and story.shared_background)
        self.check_story(story)
        self.check_settings(settings, len(story.shots))
        shots = list(range(len(story.shots))) if shots is None else list(shots)
        if config.enabled:
            mode = self.identity_mode(identity_mode, settings, config)
        elif identity_mode == "auto" or identity_mode in IDENTITY_MODES:
            mode = "replay"  # BachVid off: every video is made alone, no mode applies (and nothing is checked)
        else:
            raise ValueError(f"identity mode must be auto, {', '.join(IDENTITY_MODES)}; got {identity_mode!r}")
        group = group or self.default_group(settings, len(shots), mode)
        # BachVid off: every video alone (modes.vanilla_videos)
        self.check_group_fits(settings, min(group, max(1, len(shots))) if config.enabled else 1, mode)
        if identity_segmenter is not None:
            instruments = self._segmenting(identity_segmenter, instruments, identity)
        with torch.inference_mode():
            yield from run_story(self, story, settings, config, mode, group, shots, progress, saved=identity,
                                 output_type=output_type, instruments=instruments)

    def _segmenting(self, segment, instruments, saved):
        """Instruments whose readings take the identity's mask from `segment` (modes.SegmentedIdentity)."""
        from .modes import Instruments

        if instruments is not None and instruments.readings is not None:
            raise ValueError("identity_segmenter and instruments.readings both replace the identity's mask: give one")
        if saved is not None:
            raise ValueError("a saved identity keeps the mask it was saved with: give the segmenter to "
                             "save_identity(..., identity_segmenter=...)")
        readings = SegmentedIdentity(segment)
        return Instruments(readings=readings, probe=instruments.probe if instruments is not None else None)

    # Saved identities ---------------------------------------------------------------------------
    @property
    def model_config_hash(self) -> str:
        """The hash a saved identity keeps of this model (its transformer's config)."""
        from .io.identity_file import model_config_hash

        return model_config_hash(self.pipe.transformer.config)

    def save_identity(self, story, path, settings: GenerationSettings | None = None,
                      config: BachVidConfig | None = None, progress: bool = True,
                      identity_segmenter: Callable[[np.ndarray], np.ndarray] | None = None) -> SavedIdentity:
        """Make the story's identity alone, in replay form, and save it as a .bvid file (see
        `io/identity_file.py`): its latent before every step, its mask and final latents, and what it
        was made for. Returns the SavedIdentity, with its decoded frames. settings: None for the
        model's defaults with the story's options on top; identity_segmenter: the saved mask comes
        from the identity's frames (as in `generate`)."""
        from .io import identity_file

        settings = settings or self.default_settings().for_story(story)
        config = config or self.default_config()
        if not config.enabled:
            raise ValueError("an identity is saved for BachVid: the config has BachVid switched off")
        self.check_story(story)
        with torch.inference_mode():
            run = StoryRun(self, story, settings, config, progress)
            video = run.video("identity", None)
            final, foreground, kept = run.identity_alone(video, None, keep_latents=True)
            frames = run.frames(final)
            if identity_segmenter is not None:
                foreground = SegmentedIdentity(identity_segmenter).identity_mask(video, foreground, final, lambda: frames)
        steps = settings.num_inference_steps
        saved = SavedIdentity(
            background=story.identity.background, character=story.character, action=story.identity.action,
            prompt=video.spans.prompt, seed=video.seed, latents=[x.cpu().clone() for x in kept[:steps]],
            foreground=foreground.cpu().clone(), final=final.cpu().clone(), settings=settings,
            config=identity_config(config), model=self.model_name, model_config_hash=self.model_config_hash,
            frames=frames)
        written = identity_file.save_identity(path, saved.tensors(), saved.metadata())
        saved.path = str(written)
        saved.content_hash = identity_file.describe(written)["metadata"]["content_hash"]
        return saved

    def load_identity(self, path, settings: GenerationSettings | None = None,
                      config: BachVidConfig | None = None) -> SavedIdentity:
        """A saved identity for this model, refused (IdentityFileError) if the file is damaged or
        was made for another model config, or for other settings (frames, size, steps, guidance)
        or BachVid config than the given ones (None: compared when the identity is used)."""
        from .io import identity_file

        expect = identity_expectation(settings, config, self.model_config_hash)
        tensors, meta = identity_file.load_identity(path, expect=expect)
        try:
            steps = int(meta["steps"])
            width = max(3, len(str(steps - 1)))
            names = [f"latents.{i:0{width}d}" for i in range(steps)]
            missing = [n for n in (*names, "foreground", "final") if n not in tensors]
            if missing:
                raise KeyError(", ".join(missing[:3]))
            dtype = self.pipe.transformer.dtype
            saved_settings = GenerationSettings(seed=int(meta["seed"]), num_inference_steps=steps,
                                                num_frames=int(meta["frames"]), height=int(meta["height"]),
                                                width=int(meta["width"]), guidance_scale=float(meta["guidance"]),
                                                shot_seeds=self.default_settings().shot_seeds,
                                                guidance_scale_2=None if meta.get("guidance_2") is None
                                                else float(meta["guidance_2"]))
            return SavedIdentity(
                background=str(meta["background"]), character=str(meta["character"]), action=str(meta["action"]),
                prompt=str(meta["prompt"]), seed=int(meta["seed"]), latents=[tensors[n].to(dtype) for n in names],
                foreground=tensors["foreground"].bool(), final=tensors["final"].to(dtype), settings=saved_settings,
                config=dict(meta["bachvid_config"]), model=str(meta.get("model", "")),
                model_config_hash=str(meta["model_config_hash"]), path=str(path),
                content_hash=meta.get("content_hash"))
        except (KeyError, TypeError, ValueError) as error:
            raise identity_file.IdentityFileError(
                f"{path} is a bachvid file but not a saved identity this bachvid can use (missing or bad "
                f"entry: {error}); save the identity again with `bachvid identity save`.") from None

    def check_saved_identity(self, identity: SavedIdentity, story, settings: GenerationSettings,
                             config: BachVidConfig) -> None:
        """Refuse (IdentityFileError) a saved identity that does not serve this story and run."""
        from .io.identity_file import IdentityFileError, _differences, _json_normalised

        where = identity.path or "the saved identity"
        if story.character != identity.character:
            raise IdentityFileError(
                f"{where} is the character {identity.character!r}, but story {story.name!r} describes "
                f"{story.character!r}; a saved identity keeps one character: write it exactly as saved")
        if not config.enabled:
            raise IdentityFileError(f"{where} is used by BachVid, which this run switches off")
        have = _json_normalised(identity.metadata(), "metadata")
        expect = _json_normalised(identity_expectation(settings, config, self.model_config_hash), "expected")
        if "guidance_2" in have and "guidance_2" not in expect:  # made with a guidance_scale_2 this run lacks
            expect["guidance_2"] = None
        lines = [line for key, value in expect.items() for line in _differences(key, have.get(key), value)]
        if lines:
            raise IdentityFileError(
                f"{where} was saved for different settings than this run ({len(lines)} differ):\n"
                + "\n".join(f"  - {line}" for line in lines)
                + "\nRun with the settings it was saved with, or save the identity again with these.")

    def identity_mode(self, requested: str, settings: GenerationSettings, config: BachVidConfig) -> str:
        """"auto": the cache when it fits in a quarter of the free memory where it would live, else replay."""
        if requested != "auto":
            if requested not in IDENTITY_MODES:
                raise ValueError(f"identity mode must be auto, {', '.join(IDENTITY_MODES)}; got {requested!r}")
            if requested == "cache":
                self.check_cache_fits(settings, config)
            return requested
        needed, free, _ = self._cache_budget(settings, config)
        return "cache" if needed <= free // 4 else "replay"

    def cache_bytes(self, settings: GenerationSettings, config: BachVidConfig) -> int:
        """What a CachedIdentity keeps for these settings: keys and values before RoPE at the vital
        layers on injected steps, outputs at the vital layers on merge steps and at the matching
        layers on the matching step, for every CFG branch."""
        from .method.plan import PlanMaker

        maker = PlanMaker(config, self.layers(config), settings.num_inference_steps, self.backbone.joint_text_length)
        frames, h, w = self.backbone.token_grid(settings.num_frames, settings.height, settings.width)
        video, tokens = frames * h * w, frames * h * w + self.backbone.joint_text_length
        width = self.backbone.inner_dim * self.pipe.transformer.dtype.itemsize
        branches = 2 if settings.guidance_scale > 1.0 else 1
        plans = maker.identity_plans()
        total = 0
        for step in range(settings.num_inference_steps):
            plan = plans(step)
            total += len(plan.keep_key_value) * 2 * tokens + len(plan.keep_output) * video
        return total * width * branches

    def _cache_budget(self, settings, config) -> tuple[int, int, str]:
        free, where = self._free_memory()
        return self.cache_bytes(settings, config), free, where

    def check_cache_fits(self, settings: GenerationSettings, config: BachVidConfig) -> None:
        """Refuse a cache that would not fit, before anything runs: never an out-of-memory error."""
        needed, free, where = self._cache_budget(settings, config)
        if needed > free:
            raise MemoryError(
                f"identity_mode='cache' would keep {needed / 2**30:.1f} GiB of identity keys/values but "
                f"{where} has {free / 2**30:.1f} GiB free; use identity_mode='replay' (stores only the "
                f"identity's latents) or 'lockstep' (stores nothing), which give the same videos")

    def default_group(self, settings: GenerationSettings, num_shots: int, mode: str) -> int:
        """Shots per batch: as many as the free memory where the model runs holds (GPU, else host),
        at the activation cost of one more video per shot (about 2.6 GiB at CogVideoX-5B's
        49x480x720) and one for the identity's row, with a fifth spare; at least 1
        (check_group_fits then says if even that does not fit)."""
        num_shots = max(1, num_shots)
        free, _ = self._free_memory()
        return max(1, min(num_shots, int(free * 0.8 // self._video_activation_bytes(settings)) - 1))

    def batch_bytes(self, settings: GenerationSettings, group: int, mode: str) -> int:
        """Estimated peak activation memory of one batched forward: `group` shots, plus the
        identity's rows where they run in the same batch (lockstep with group > 1; replay, and
        lockstep one shot at a time, run them apart inside each block; a cached identity is read)."""
        return (group + self._identity_rows(mode, group)) * self._video_activation_bytes(settings)

    def check_group_fits(self, settings: GenerationSettings, group: int, mode: str) -> None:
        """Refuse a batch whose estimated activations exceed the free memory where the model runs,
        before anything runs: a clear error with the estimate and what to change, never an OOM."""
        needed = self.batch_bytes(settings, group, mode)
        free, where = self._free_memory()
        if needed <= free:
            return
        per_video = self._video_activation_bytes(settings)
        fits = int(free // per_video)  # videos; lockstep groups of 2 or more carry the identity too
        fits = min(fits, 1) if mode == "lockstep" and fits < 3 else fits - 1 if mode == "lockstep" else fits
        size = f"{settings.num_frames} frames of {settings.height}x{settings.width}"
        identity = " and the identity" if self._identity_rows(mode, group) else ""
        advice = (f"use group={fits} (--group {fits}), which fits" if fits >= 1 else
                  "even one shot per batch does not fit: fewer frames, a smaller size or "
                  "enable_model_cpu_offload (--cpu-offload) would")
        raise MemoryError(
            f"group={group} would need about {_bytes(needed)} of activations ({_bytes(per_video)} per video at "
            f"{size}, {group} shots{identity}) but {where} has {_bytes(free)} free; {advice}")

    def _video_activation_bytes(self, settings: GenerationSettings) -> int:
        return self.backbone.activation_bytes(settings.num_frames, settings.height, settings.width,
                                              2 if settings.guidance_scale > 1.0 else 1)

    @staticmethod
    def _identity_rows(mode: str, group: int) -> int:
        return 1 if mode == "lockstep" and group > 1 else 0  # as modes.run_story's identity_apart

    def _free_memory(self) -> tuple[int, str]:
        device = self.pipe._execution_device
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0], f"{device} (free GPU memory)"
        return _available_host_memory(), "host memory"

    # Single videos, for experiments and benchmarks ------------------------------------------------
    def generate_identity(self, story, settings: GenerationSettings, config: BachVidConfig,
                          progress: bool = True) -> ShotResult:
        """The identity alone, keeping a CachedIdentity for `generate_shot` (cache mode)."""
        return next(self.generate(story, settings, config, identity_mode="cache", shots=[], progress=progress))

    def generate_shot(self, story, index: int, identity: ShotResult, settings: GenerationSettings,
                      config: BachVidConfig, progress: bool = True) -> ShotResult:
        """One shot from an identity made by `generate_identity` (any config with the same layers and steps)."""
        config = config.replace(shared_background=config.shared_background and story.shared_background)
        with torch.inference_mode():
            run = StoryRun(self, story, settings, config, progress)
            if not config.enabled:
                return list(vanilla_videos(run, run.video("identity", None), [index], 0.0))[1]
            record = identity.record
            if record is None:
                raise ValueError("this identity was generated with BachVid switched off; it has no record to inject")
            start = time.perf_counter()
            video, anchor = run.video("shot", index), run.video("identity", None)
            (fg, matches), = run.preruns([video], anchor, record.foreground, cache=record)
            latents = run.real_runs([video], anchor, record.foreground, [(fg, matches)], cache=record)[0]
            pairs = matches.foreground_pairs(fg, record.foreground, config.match_threshold)[0].numel()
            stats = {"foreground_tokens": int(fg.sum()), "foreground_pairs": int(pairs),
                     "prerun_steps": run.maker.schedule.prerun_steps, "identity_mode": "cache", "group": 1}
            return ShotResult("shot", index, video.spans.prompt, video.seed, run.frames(latents), fg.numpy(),
                              time.perf_counter() - start, None, stats, latents)

    def denoise(self, prompt: PromptSpans, seed: int, settings: GenerationSettings, plan_for, *,
                source=None, target=None, mask_reader: TextAttentionReader | None = None, run_steps: int | None = None,
                progress: bool = False) -> "RunOutput":
        """One video under explicit per-step plans, reading from `source` and keeping into `target`:
        the building block of the method, open for tests and experiments."""
        state = VideoState(source=source, target=target, mask_reader=mask_reader)

        def step_states(i):
            state.plan = plan_for(i)
            return [(state, None)]

        with torch.inference_mode():
            embeds, negative = self.backbone.encode(prompt.prompt, settings.guidance_scale > 1.0)
            latents = self.backbone.denoise(
                [BatchVideo(embeds, negative, seed=seed)], num_frames=settings.num_frames, height=settings.height,
                width=settings.width, num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale, step_states=step_states, run_steps=run_steps,
                progress=progress, **guidance_kwargs(settings))[0]
            early = run_steps is not None and run_steps < settings.num_inference_steps
            frames = None if early else (np.clip(self.backbone.decode(latents, settings.num_frames), 0, 1) * 255
                                         + 0.5).astype(np.uint8)
        return RunOutput(frames, latents)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _available_host_memory() -> int:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass
class RunOutput:
    frames: np.ndarray | None  # uint8 (F, H, W, 3); None when the run stopped early
    latents: torch.Tensor  # final (or last reached) latents
