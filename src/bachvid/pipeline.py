"""BachVidPipeline: one story in, an identity video and consistent shots out.

It wraps a stock diffusers pipeline (loaded with the usual `from_pretrained`) and steers it
through attention processors and the step callback, so that with BachVid switched off it *is*
the stock pipeline. The order of work, per story:

1. identity: denoise the identity shot, keeping what shots need (identity record) and reading
   its foreground mask;
2. per shot, pre-run: denoise from the shot's noise up to max(tau_mask, tau_match) with
   background injection only, reading the shot's mask and its point matches;
3. per shot, real run: restart from the same noise with background and point-tracked
   foreground injection and token merge.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .backbones import backbone_for
from .config import BachVidConfig
from .controller import Controller
from .identity import CachedIdentity
from .mask import MaskReader
from .match import best_matches
from .plan import PLAIN, Layers, PlanMaker
from .prompt import PromptSpans, PromptTooLong, token_spans

DEFAULTS_FILE = "bachvid.json"  # optional per-model defaults: steps, guidance, fps; "bachvid": config knobs


@dataclass(frozen=True)
class GenerationSettings:
    seed: int = 0
    num_inference_steps: int = 50
    num_frames: int = 49
    height: int = 480
    width: int = 720
    guidance_scale: float = 6.0

    def for_story(self, story) -> "GenerationSettings":
        """These settings with the story's own options (seed, frames, size) on top."""
        changes = {
            name: value
            for name, value in (("seed", story.seed), ("num_frames", story.num_frames),
                                ("height", story.height), ("width", story.width))
            if value is not None
        }
        return replace(self, **changes)


@dataclass
class ShotResult:
    role: str  # "identity" or "shot"
    index: int | None
    prompt: str
    seed: int
    frames: np.ndarray  # uint8 (F, H, W, 3)
    mask: np.ndarray | None  # bool (latent frames, h tokens, w tokens)
    seconds: float
    record: CachedIdentity | None = None
    stats: dict = field(default_factory=dict)
    latents: torch.Tensor | None = None  # final latents, before the VAE


@dataclass
class StoryResult:
    identity: ShotResult
    shots: list[ShotResult]


def _to_uint8(frames) -> np.ndarray:
    video = np.asarray(frames[0] if isinstance(frames, (list, tuple)) or np.ndim(frames) == 5 else frames)
    return (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)


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
        """Load a diffusers video pipeline from a local folder or a hub id; None loads bachvid's default.

        torch_dtype defaults to float32 (weights stored in fp16 are upcast), which CPUs need."""
        import warnings

        from diffusers import DiffusionPipeline

        from .models import default_model_path

        torch_dtype = torch_dtype or torch.float32
        note = None
        if path_or_id is None:
            path_or_id = default_model_path()
            if path_or_id is None:
                from .tiny import tiny_cogvideox_pipeline

                pipe = tiny_cogvideox_pipeline(num_layers=8)
                pipe.to(dtype=torch_dtype)
                return cls(pipe, model_name="tiny-random-cogvideox",
                           model_note="tiny random model: no trained default model in this install; "
                                      "videos will be noise",
                           defaults={"num_inference_steps": 10, "guidance_scale": 6.0})
            note = "bachvid's built-in toy model (see docs/TOY_MODEL.md)"
        path_or_id = str(path_or_id)
        local = Path(path_or_id).expanduser()
        looks_local = local.exists() or path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1
        if looks_local and not (local / "model_index.json").is_file():
            raise FileNotFoundError(f"no diffusers model folder at {local} (model_index.json is missing)")
        try:
            with warnings.catch_warnings():  # newer diffusers renames torch_dtype; both spellings work
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = DiffusionPipeline.from_pretrained(str(local) if looks_local else path_or_id,
                                                         torch_dtype=torch_dtype, **kwargs)
        except OSError as error:
            raise FileNotFoundError(f"could not load model {path_or_id!r}: {error}") from error
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
            guidance_scale=float(self._defaults.get("guidance_scale", 6.0)),
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
        from .story import StoryError

        errors = []
        for shot in (story.identity, *story.shots):
            try:
                self.spans(shot.background, story.character, shot.action)
            except (PromptTooLong, ValueError) as error:
                errors.append(StoryError(str(error), path=story.path, line=shot.line or story.line))
        return errors

    def check_story(self, story) -> None:
        """Raise the first of `story_errors` (the API's check before generating)."""
        errors = self.story_errors(story)
        if errors:
            raise errors[0]

    # Generation -----------------------------------------------------------------------------
    def __call__(self, story, settings: GenerationSettings | None = None, config: BachVidConfig | None = None,
                 progress: bool = True) -> StoryResult:
        settings = (settings or self.default_settings()).for_story(story)
        config = config or self.default_config()
        self.check_story(story)
        identity = self.generate_identity(story, settings, config, progress=progress)
        shots = [self.generate_shot(story, i, identity, settings, config, progress=progress)
                 for i in range(len(story.shots))]
        return StoryResult(identity, shots)

    def generate_identity(self, story, settings: GenerationSettings, config: BachVidConfig,
                          progress: bool = True) -> ShotResult:
        shot = story.identity
        return self._generate("identity", None, shot.background, story.character, shot.action,
                              settings.seed, settings, config, identity=None, progress=progress)

    def generate_shot(self, story, index: int, identity: ShotResult, settings: GenerationSettings,
                      config: BachVidConfig, progress: bool = True) -> ShotResult:
        shot = story.shots[index]
        config = config.replace(shared_background=config.shared_background and story.shared_background)
        return self._generate("shot", index, shot.background, story.character, shot.action,
                              story.shot_seed(index, settings.seed), settings, config,
                              identity=identity, progress=progress)

    def denoise(self, prompt: PromptSpans, seed: int, settings: GenerationSettings, plan_for,
                progress: bool = False, stop_after: int | None = None) -> RunOutput:
        """One run under explicit per-step plans, with whatever the controller holds (source,
        target, mask reader). The building block of the method, open for tests and experiments."""
        return self._prepare_run(prompt, seed, settings, progress)(plan_for, stop_after)

    def _prepare_run(self, prompt: PromptSpans, seed: int, settings: GenerationSettings, progress: bool) -> "_Run":
        """Text embeddings and initial noise, drawn once so a pre-run and its real run share them."""
        embeds, negative = self.backbone.encode(prompt.prompt, settings.guidance_scale > 1.0)
        noise = self.backbone.initial_noise(seed, settings.num_frames, settings.height, settings.width, embeds.dtype)
        return _Run(self, embeds, negative, noise, settings, progress)

    def _generate(self, role, index, background, character, action, seed, settings, config, identity, progress):
        start = time.perf_counter()
        spans = self.spans(background, character, action)
        grid = self.backbone.token_grid(settings.num_frames, settings.height, settings.width)
        run = self._prepare_run(spans, seed, settings, progress)
        stats: dict = {}

        if not config.enabled:
            result = run(lambda step: PLAIN)
            return ShotResult(role, index, spans.prompt, seed, result.frames, None,
                              time.perf_counter() - start, None, stats, result.latents)

        maker = PlanMaker(config, self.layers(config), settings.num_inference_steps,
                          self.backbone.text_length)
        fg_tokens = torch.tensor(spans.foreground(config.mask_foreground))
        reader = lambda: MaskReader(torch.tensor(spans.background), fg_tokens, spans.real_length,  # noqa: E731
                                    config.chunk_size)
        if identity is None:
            record = CachedIdentity(text_length=self.backbone.text_length)
            self.controller.reset()
            self.controller.target, self.controller.mask_reader = record, reader()
            result = run(maker.identity_plans())
            record.foreground = self.controller.mask_reader.mask(grid, config.mask_open_kernel)
            stats["identity_bytes"] = record.nbytes
            self.controller.reset()
            return ShotResult(role, index, spans.prompt, seed, result.frames, record.foreground.numpy(),
                              time.perf_counter() - start, record, stats, result.latents)

        record = identity.record
        if record is None:
            raise ValueError("this identity was generated with BachVid switched off; it has no record to inject")
        # Pre-run: read the shot's own mask and its matches to the identity.
        self.controller.reset()
        self.controller.source, self.controller.mask_reader = record, reader()
        run(maker.prerun_plans(record.foreground), stop_after=maker.schedule.prerun_steps)
        current_fg = self.controller.mask_reader.mask(grid, config.mask_open_kernel)
        match_layers = sorted(maker.layers.match)
        identity_features = []
        for layer in match_layers:
            out = record.output(maker.schedule.match_step, layer)[-1]
            identity_features.append(out.transpose(0, 1).reshape(out.shape[1], -1))
        matches = best_matches([self.controller.match_features[l] for l in match_layers], identity_features,
                               config.chunk_size)
        pairs = matches.foreground_pairs(current_fg, record.foreground, config.match_threshold)[0].numel()
        stats.update(foreground_tokens=int(current_fg.sum()), foreground_pairs=int(pairs),
                     prerun_steps=maker.schedule.prerun_steps)
        # Real run from the same noise.
        self.controller.reset()
        self.controller.source = record
        result = run(maker.shot_plans(record.foreground, current_fg, matches))
        self.controller.reset()
        return ShotResult(role, index, spans.prompt, seed, result.frames, current_fg.numpy(),
                          time.perf_counter() - start, None, stats, result.latents)


@dataclass
class RunOutput:
    frames: np.ndarray | None  # uint8 (F, H, W, 3); None when the run stopped early
    latents: torch.Tensor  # final (or last reached) latents


class _Run:
    """Denoising runs of the stock pipeline for one prompt and noise, the controller following a plan."""

    def __init__(self, owner: BachVidPipeline, embeds, negative, noise, settings: GenerationSettings, progress):
        self.owner, self.embeds, self.negative, self.noise = owner, embeds, negative, noise
        self.settings, self.progress = settings, progress

    def __call__(self, plan_for, stop_after: int | None = None) -> RunOutput:
        controller, steps = self.owner.controller, self.settings.num_inference_steps
        reached = {}

        def on_step_end(i: int, latents: torch.Tensor) -> bool:
            reached["latents"] = latents
            following = i + 1
            if stop_after is not None and following >= stop_after:
                controller.plan = PLAIN
                return True
            controller.plan = plan_for(following) if following < steps else PLAIN
            return False

        controller.plan = plan_for(0)
        early = stop_after is not None and stop_after < steps
        try:
            frames = self.owner.backbone.denoise(
                prompt_embeds=self.embeds, negative_prompt_embeds=self.negative, latents=self.noise.clone(),
                num_frames=self.settings.num_frames, height=self.settings.height, width=self.settings.width,
                num_inference_steps=steps, guidance_scale=self.settings.guidance_scale,
                on_step_end=on_step_end, output_type="latent" if early else "np",
                progress=self.progress and not early,
            )
        finally:
            controller.plan = PLAIN
        return RunOutput(None if early else _to_uint8(frames), reached["latents"])
