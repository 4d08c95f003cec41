"""The `bachvid` command.

A subcommand is a function that adds its parser to the subparsers and sets `run` (a function
args -> exit code); SUBCOMMANDS lists them. Heavy modules (torch, diffusers) are imported only
by the subcommand that runs, so `bachvid --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .io.story import Story, StoryError, load_stories
from .io.terminal import quiet_loading_bars_off_terminal

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class _LazyParser(argparse.ArgumentParser):
    """A subcommand parser whose arguments are added (and module imported) only when it is used."""

    def __init__(self, *args, fill=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._fill = fill

    def _filled(self) -> None:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            fill(self)

    def parse_known_args(self, *args, **kwargs):
        self._filled()
        return super().parse_known_args(*args, **kwargs)

    def format_help(self):
        self._filled()
        return super().format_help()


def _from_module(name: str):
    """A parser filler for a module with `add_arguments(parser)` and `run(args) -> int`."""

    def fill(parser: argparse.ArgumentParser) -> None:
        module = importlib.import_module(name)
        module.add_arguments(parser)
        parser.set_defaults(run=module.run)

    return fill


# bachvid generate ----------------------------------------------------------------------------

SETTING_FLAGS = ("seed", "num_inference_steps", "num_frames", "height", "width", "guidance_scale", "guidance_scale_2")


IDENTITY_MODE_CHOICES = ("auto", "cache", "replay", "lockstep")


def _add_setting_flags(p) -> None:
    """The generation settings' flags (None: not given, so the story's option or the default holds)."""
    p.add_argument("--seed", type=_non_negative, help="identity seed; shot i uses seed + 1 + i")
    p.add_argument("--steps", type=_positive, dest="num_inference_steps", help="denoising steps")
    p.add_argument("--frames", type=_positive, dest="num_frames")
    p.add_argument("--height", type=_positive)
    p.add_argument("--width", type=_positive)
    p.add_argument("--guidance", type=float, dest="guidance_scale", help="classifier-free guidance scale")
    p.add_argument("--guidance-2", type=float, dest="guidance_scale_2",
                   help="Wan 2.2 two-expert models: the low-noise expert's guidance (default: --guidance)")


def _add_model_flags(p) -> None:
    """Which model, and where it runs (read by _load_pipeline)."""
    p.add_argument("--model", default=None, help="diffusers folder, hub id, or a shipped model's name (toy-cogvideox, toy-wan); default: the built-in toy model")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="weights' dtype (default: the pipeline's, float32)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps, cpu, ... (default: cuda if available)")
    p.add_argument("--cpu-offload", action="store_true", help="keep idle models on the CPU (saves GPU memory)")
    p.add_argument("--vae-tiling", action="store_true", help="VAE tiling and slicing, for large videos")


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate consistent shots for every story in a file",
                       description="Generate the identity video and the shots of every story. Settings: a flag "
                                   "given here beats the story's own option, which beats the model's default "
                                   "(with --identity: the saved identity's settings).")
    p.add_argument("story_file", help="stories: .txt (background # character # action lines) or .yaml/.yml/.json")
    p.add_argument("--out", required=True, help="output folder (one subfolder per story)")
    _add_setting_flags(p)
    p.add_argument("--no-shared-background", action="store_true",
                   help="inject the character only; each shot keeps its own background")
    p.add_argument("--no-bachvid", action="store_true", help="plain generation, a baseline to compare with")
    p.add_argument("--shot-seeds", choices=("own", "identity"), default=None,
                   help="shots' noise: own (seed + 1 + i) or the identity's seed for every shot; beats the "
                        "story's shot_seeds")
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", dest="knobs",
                   help="a BachVid knob over the model's config (repeatable), e.g. background_latents_until=0 "
                        "turns the background lock off; knobs: bachvid.method.config.BachVidConfig")
    p.add_argument("--identity-mode", choices=IDENTITY_MODE_CHOICES, default="auto",
                   help="how shots read the identity, all giving the same videos: cache (keeps its keys/values; "
                        "small models), replay (keeps its latents), lockstep (keeps nothing); auto: cache when "
                        "it fits, else replay")
    p.add_argument("--group", type=_positive, default=None,
                   help="shots denoised per batch (default: as many as fit in memory)")
    p.add_argument("--identity", default=None, metavar="FILE.bvid",
                   help="a saved character (bachvid identity save): every story's shots take it instead of "
                        "the story's first line; settings default to the saved ones")
    _add_model_flags(p)
    p.add_argument("--force", action="store_true", help="remake videos that already exist")
    p.set_defaults(run=run_generate)


def _device(requested: str | None) -> str:
    if requested:
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _unwritable(out: Path, folders=(), flag: str | None = None) -> str | None:
    """Why the folder `out` cannot take files (a file in the way, a read-only or forbidden folder),
    or None. Tried for real (a probe file made and removed) in out or its nearest existing parent,
    and in each of `folders` that exists: permissions alone do not tell (root, read-only mounts).
    flag: how the message names it (default: --out OUT)."""
    import os
    import tempfile

    place = out
    while not place.exists() and place.parent != place:
        place = place.parent  # where the folder would be made
    if not place.is_dir():
        return f"{flag or f'--out {out}'}: {place} is a file, not a folder"
    for folder in [place, *(f for f in folders if f.is_dir())]:
        try:
            fd, name = tempfile.mkstemp(prefix=".bachvid-probe-", dir=folder)
        except OSError as error:
            return f"{flag or f'--out {out}'}: cannot write in {folder} ({error.strerror or error})"
        os.close(fd)
        os.unlink(name)
    return None


def _load_pipeline(args):
    """Load the model named on the command line (a factory, so tests can swap in a small one)."""
    # the first thing a user sees: importing torch and diffusers alone takes seconds
    print(f"loading {args.model or 'the built-in toy model'} ...", file=sys.stderr, flush=True)
    import torch

    from .pipeline import BachVidPipeline

    quiet_loading_bars_off_terminal()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    pipe = BachVidPipeline.from_pretrained(args.model, torch_dtype=dtype)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload(**({"device": args.device} if args.device else {}))
    else:
        pipe.to(_device(args.device))
    if args.vae_tiling:
        pipe.enable_vae_tiling()
        pipe.enable_vae_slicing()
    return pipe


def _versions() -> dict:
    """Installed versions, read from package metadata (importing diffusers just for this takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"bachvid": __version__, **{name: installed(name) for name in ("torch", "diffusers", "transformers")},
            "python": platform.python_version()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_ready(data):
    """What `data` reads as after a trip through the manifest (tuples become lists, ...)."""
    from .io.outputs import json_value

    return json.loads(json.dumps(data, default=json_value))


@dataclass
class _Job:
    """One story of the batch: what to make, where, and from what (its recipe)."""

    story: Story
    settings: object  # GenerationSettings
    config: object  # BachVidConfig
    folder: Path
    recipe: dict  # everything that decides the pixels; a re-run may only reuse videos of the same recipe
    previous: dict | None = None  # the manifest already in the folder
    mode: str | None = None  # the identity mode used (resolved from auto); None with BachVid off
    group: int | None = None  # --group, or None: as many shots per batch as fit
    saved: object | None = None  # a SavedIdentity (--identity) standing in for the story's identity line

    @property
    def names(self) -> list[str]:
        return ["identity"] + [f"shot-{i + 1:02d}" for i in range(len(self.story.shots))]

    def video(self, name: str) -> Path:
        return self.folder / f"{name}.mp4"

    def entry(self, name: str) -> Path:
        """The video's entry (outputs.save_entry): what the manifest and contact sheet need of it."""
        return self.folder / "entries" / f"{name}.npz"


def _story_texts(story: Story) -> dict:
    return {"character": story.character, "shared_background": story.shared_background, "shot_seeds": story.shot_seeds,
            "identity": {"background": story.identity.background, "action": story.identity.action},
            "shots": [{"background": s.background, "action": s.action} for s in story.shots]}


def _with_saved_identity(story: Story, saved) -> tuple[Story, str | None]:
    """The story with the saved identity in place of its first line, and a note if that line differed."""
    from .io.story import Shot

    first = story.identity
    note = None
    if (first.background, first.action) != (saved.background, saved.action):
        note = (f"{story.name}: the saved identity ({saved.background} # {saved.character} # {saved.action}) "
                f"stands in for the story's first line ({first.background} # {story.character} # "
                f"{first.action}); write that line again below it to make it a shot")
    return replace(story, identity=Shot(saved.background, saved.action, line=first.line)), note


def _read_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read it ({error}); --force remakes this story") from error


def _differences(old: dict, new: dict) -> list[str]:
    changes = []
    for section in new:
        before, after = old.get(section), new[section]
        if before == after:
            continue
        if section == "story":
            changes.append("the story's text")
        elif isinstance(before, dict) and isinstance(after, dict):
            changes += [f"{section}.{k} {before.get(k)!r} -> {after.get(k)!r}"
                        for k in after if before.get(k) != after.get(k)]
        else:
            changes.append(f"{section} {before!r} -> {after!r}")
    return changes


def _mismatch(job: _Job) -> str | None:
    """Why the videos already in the folder may not be reused, or None."""
    if job.previous is None or job.previous.get("recipe") == job.recipe:
        return None
    if not any(job.video(n).is_file() for n in job.names):
        return None
    changes = _differences(job.previous.get("recipe") or {}, job.recipe)
    shown = ", ".join(changes[:4]) + (", ..." if len(changes) > 4 else "")
    return (f"{job.folder}: its videos were made from another recipe ({shown}); "
            f"--force remakes them, or choose another --out")


def run_generate(args) -> int:
    try:
        return _generate(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished videos are kept in {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(errors) -> int:
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE


def _generate(args) -> int:
    from tqdm.auto import tqdm

    try:
        stories = load_stories(args.story_file)
    except StoryError as error:
        return _fail([error])
    from .method.config import BachVidConfig, parse_knob

    try:  # bad knobs are refused before the model's seconds
        knobs = dict(parse_knob(text) for text in args.knobs)
        BachVidConfig(**knobs)
    except (TypeError, ValueError) as error:
        return _fail([error])
    out = Path(args.out)
    if reason := _unwritable(out, [out / story.name for story in stories]):  # before the model's seconds
        return _fail([reason])
    try:
        pipe = _load_pipeline(args)
    except (OSError, ValueError) as error:  # FileNotFoundError: no such model
        return _fail([f"cannot load the model: {error}"])
    note = pipe.model_note
    print(f"model: {pipe.model_name}" + (f" ({note})" if note else ""))

    if args.shot_seeds is not None:
        stories = [replace(story, shot_seeds=args.shot_seeds) for story in stories]
    # every line of every story before any generation, so all mistakes show at once
    errors = [error for story in stories for error in pipe.story_errors(story)]
    if errors:
        return _fail(errors)

    try:
        config = pipe.default_config(**{"enabled": not args.no_bachvid,
                                        "shared_background": not args.no_shared_background, **knobs})
    except ValueError as error:  # a knob that does not go with the model's config
        return _fail([error])
    flags = {name: getattr(args, name) for name in SETTING_FLAGS}
    saved = None
    if args.identity is not None:
        if args.no_bachvid:
            return _fail(["--identity gives shots a saved character through BachVid; leave out --no-bachvid"])
        if args.identity_mode not in ("auto", "replay"):
            return _fail([f"a saved identity (--identity) is replayed; --identity-mode {args.identity_mode} "
                          f"cannot use it (use auto or replay)"])
        try:
            saved = pipe.load_identity(args.identity, config=config)
        except ValueError as error:  # IdentityFileError: damaged, or made for another model or config
            return _fail([error])
    defaults = saved.settings if saved is not None else pipe.default_settings()
    jobs, notes = [], []
    for story in stories:
        if saved is not None:
            story, identity_note = _with_saved_identity(story, saved)
            notes += [identity_note] if identity_note else []
        settings = defaults.for_story(story, **flags)  # one rule with the API: defaults < story < flags
        job, problems = prepare_job(pipe, story, settings, config, out, identity_mode=args.identity_mode,
                                    group=args.group, saved=saved, force=args.force)
        errors += problems
        if job is not None:
            jobs.append(job)
    if errors:
        return _fail(errors)
    for line in notes:
        print(f"note: {line}")

    header = {"model": {"name": pipe.model_name, "note": note}, "versions": _versions(),
              "platform": platform.platform(), "command": getattr(args, "command_line", None)}
    fps = pipe.fps
    with tqdm(total=sum(len(job.names) for job in jobs), desc="videos", unit="video") as bar:
        for job in jobs:
            _make_story(pipe, job, header, fps, args.force, bar)
    return 0


def prepare_job(pipe, story: Story, settings, config, out: Path, *, identity_mode: str = "auto",
                group: int | None = None, saved=None, force: bool = False) -> tuple[_Job | None, list]:
    """One story's job for `_make_story` (the CLI's and the studio's: same folder, recipe and
    manifest), and the errors that stop it (a job with errors is not to be made)."""
    bad = pipe.settings_errors(settings, len(story.shots))
    if bad:
        return None, [f"{story.name}: {message}" for message in bad]
    try:
        if saved is not None:
            pipe.check_saved_identity(saved, story, settings, config)
        mode = pipe.identity_mode("replay" if saved is not None else identity_mode, settings, config) \
            if config.enabled else None
        if mode is not None:  # the batch's activations, at the group asked for or the default
            shots = max(1, len(story.shots))
            pipe.check_group_fits(settings, min(group or pipe.default_group(settings, shots, mode), shots), mode)
    except (MemoryError, ValueError) as error:  # the cache or batch would not fit; the saved identity does not serve
        return None, [f"{story.name}: {error}"]
    recorded = asdict(settings)
    if recorded.get("guidance_scale_2") is None:  # unset: recipes (and folders) stay as before it existed
        recorded.pop("guidance_scale_2", None)
    recipe = {"model": pipe.model_name, "settings": recorded, "config": asdict(config),
              "story": _story_texts(story)}
    if saved is not None:  # the saved character decides the pixels
        recipe["identity"] = {"content_hash": saved.content_hash}
    job = _Job(story, settings, config, Path(out) / story.name, _json_ready(recipe), mode=mode, group=group,
               saved=saved)
    try:
        job.previous = None if force else _read_manifest(job.folder / "manifest.json")
    except ValueError as error:
        return None, [error]
    reason = _mismatch(job)
    return job, [reason] if reason else []


def _make_story(pipe, job: _Job, header: dict, fps: int, force: bool, bar) -> None:
    """Make the story's missing videos, then its contact sheet; the manifest follows every video."""
    from .io import outputs

    story, folder = job.story, job.folder
    for path in outputs.remove_stale_temporaries(folder):
        bar.write(f"{story.name}: removed {path.name}, left by an interrupted run")
    # A video is done when its MP4 is there with the entry written for it (same recipe, same
    # bytes); an MP4 with no entry at all is from a folder made before entries existed.
    entries = {} if force else {n: outputs.read_entry(job.entry(n)) for n in job.names}

    def done(name: str) -> bool:
        if not job.video(name).is_file():
            return False
        if entries.get(name) is not None:
            return entries[name].describes(job.video(name), job.recipe)
        return not job.entry(name).exists()

    todo = [n for n in job.names if force or not done(n)]
    old_videos = {**(job.previous or {}).get("videos", {}),
                  **{n: entry.entry for n, entry in entries.items() if entry is not None and n not in todo}}
    if not todo and (job.previous or {}).get("finished") and (folder / "contact-sheet.png").is_file():
        bar.write(f"{story.name}: skipped (all {len(job.names)} videos exist; --force remakes them)")
        bar.update(len(job.names))
        return
    shots_todo = sum(name in todo for name in job.names[1:])
    group = job.group
    if group is None and job.mode is not None:
        group = pipe.default_group(job.settings, shots_todo, job.mode)
    run_info = {"identity_mode": job.mode, "group": group}  # how, not what: every mode gives the same videos
    if job.saved is not None:
        run_info["identity_file"] = {"path": job.saved.path, "content_hash": job.saved.content_hash}
    manifest = {"story": {"name": story.name, "source": story.path, "line": story.line, **_story_texts(story)},
                **header, **run_info, "recipe": job.recipe, "started": _now(), "finished": None,
                "videos": {n: old_videos[n] for n in job.names if n not in todo and n in old_videos}}
    rows: dict[str, tuple[str, object]] = {}

    def keep(name: str, result) -> None:
        files = [f"{name}.gif"]
        outputs.save_gif(folder / f"{name}.gif", result.frames, fps)
        mask_file = folder / "masks" / f"{name}-mask.mp4"
        if result.mask is not None:
            outputs.save_video(mask_file, outputs.mask_overlay(result.frames, result.mask), fps)
            files.append(f"masks/{name}-mask.mp4")
        else:
            mask_file.unlink(missing_ok=True)  # from an earlier run with masks
        height, width = result.frames.shape[1:3]
        entry = _json_ready({
            "prompt": result.prompt, "seed": result.seed, "seconds": round(result.seconds, 3),
            "frames": len(result.frames), "size": [height, width], "fps": fps,
            "display_scale": outputs.display_scale(height, width), "files": [f"{name}.mp4", *files],
            **({"stats": result.stats} if result.stats else {})})
        # last, the MP4 marks the video as done; just before it appears, its entry (manifest
        # entry, recipe, the MP4's hash, sheet frames): a kill between the two loses nothing
        outputs.save_video(job.video(name), result.frames, fps, before_replace=lambda tmp: outputs.save_entry(
            job.entry(name), entry, job.recipe, outputs.file_sha256(tmp), result.frames))
        manifest["videos"][name] = entry
        outputs.write_manifest(folder / "manifest.json", manifest)
        rows[name] = (f"{name}: {result.prompt}", result.frames)

    def kept(name: str, shot) -> None:
        entry = manifest["videos"].get(name, {})
        if entries.get(name) is not None:  # the model's frames, as an uninterrupted run shows them
            rows[name] = (f"{name}: {entry['prompt']}", entries[name].sheet)
            bar.update(1)
            return
        size = entry.get("size") or [job.settings.height, job.settings.width]
        try:
            frames = outputs.read_video(job.video(name), size=tuple(size))
        except ValueError as error:  # not the size its manifest says: say so, and show it as it is
            bar.write(f"{story.name}: {name}.mp4 is not {size[0]}x{size[1]} as its manifest says ({error}); "
                      f"the contact sheet shows it as stored")
            frames = outputs.read_video(job.video(name))
        rows[name] = (f"{name}: {entry.get('prompt') or shot.action}", frames)
        bar.update(1)

    if todo:
        # The identity always comes first, even when only shots are missing: they need it (made
        # again in memory, deterministically, or decoded from the saved identity); its file is
        # written only if it is missing.
        shots = [i for i, name in enumerate(job.names[1:]) if name in todo]
        for result in pipe.generate(story, job.settings, job.config, identity_mode=job.mode or "auto",
                                    group=group, shots=shots, progress=True, identity=job.saved):
            name = "identity" if result.role == "identity" else job.names[result.index + 1]
            if name in todo:
                keep(name, result)
            else:
                rows[name] = (f"{name}: {result.prompt}", result.frames)
            bar.update(1)
    else:
        kept("identity", story.identity)
    for i, name in enumerate(job.names[1:]):
        if name not in todo:
            kept(name, story.shots[i])
    outputs.contact_sheet(folder / "contact-sheet.png", [rows[n] for n in job.names])
    manifest["finished"] = _now()
    outputs.write_manifest(folder / "manifest.json", manifest)
    bar.write(f"{story.name}: {len(todo)} made, {len(job.names) - len(todo)} kept -> {folder}")


# bachvid identity save / show ---------------------------------------------------------------

def add_identity(sub) -> None:
    identity = sub.add_parser("identity", help="save a story's character to a file, or show a saved one",
                              description="Saved characters (.bvid): make a story's identity once, then give "
                                          "its character to later stories with `bachvid generate --identity`.")
    identity_sub = identity.add_subparsers(dest="identity_command", required=True, metavar="COMMAND")
    p = identity_sub.add_parser("save", help="make a story's identity and save it (.bvid)",
                                description="Make the identity video of a story (its first line) and save it in "
                                            "replay form: its latent before every step, its mask and the settings "
                                            "it was made with. Settings: flag > story option > model default.")
    p.add_argument("story_file", help="stories: .txt or .yaml/.yml/.json")
    p.add_argument("--out", required=True, metavar="FILE.bvid", help="the file to write")
    p.add_argument("--story", default=None, metavar="NAME", help="the story to take (default: the first)")
    _add_setting_flags(p)
    _add_model_flags(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(run=run_identity_save)
    p = identity_sub.add_parser("show", help="print what a saved identity holds",
                                description="Print a saved identity's metadata and size (reads its header only, "
                                            "unless --verify).")
    p.add_argument("file", help="a .bvid file")
    p.add_argument("--verify", action="store_true", help="also read every tensor and check the content hash")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(run=run_identity_show)


def _size(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def run_identity_save(args) -> int:
    try:
        stories = load_stories(args.story_file)
    except StoryError as error:
        return _fail([error])
    if args.story is None:
        story = stories[0]
    else:
        named = [s for s in stories if s.name == args.story]
        if not named:
            return _fail([f"{args.story_file} has no story named {args.story!r}; its stories: "
                          + ", ".join(s.name for s in stories)])
        story = named[0]
    out = Path(args.out)
    if out.is_dir():
        return _fail([f"--out {out} is a folder; give a file name such as {out / (story.name + '.bvid')}"])
    if out.exists() and not args.force:
        return _fail([f"{out} exists; --force overwrites it"])
    if reason := _unwritable(out.parent, flag=f"--out {out}"):
        return _fail([reason])
    try:
        pipe = _load_pipeline(args)
    except (OSError, ValueError) as error:
        return _fail([f"cannot load the model: {error}"])
    note = pipe.model_note
    print(f"model: {pipe.model_name}" + (f" ({note})" if note else ""))
    errors = pipe.story_errors(story)
    if errors:
        return _fail(errors)
    settings = pipe.default_settings().for_story(story, **{name: getattr(args, name) for name in SETTING_FLAGS})
    try:
        saved = pipe.save_identity(story, out, settings, pipe.default_config())
    except ValueError as error:  # IdentityFileError: cannot write it
        return _fail([error])
    size = Path(saved.path).stat().st_size
    print(f"saved the identity of {story.name} ({saved.background} # {saved.character} # {saved.action}; "
          f"seed {settings.seed}, {settings.num_frames} frames {settings.height}x{settings.width}, "
          f"{settings.num_inference_steps} steps) to {saved.path}: {_size(size)}")
    return 0


def run_identity_show(args) -> int:
    from .io.identity_file import describe

    try:
        info = describe(args.file, verify=args.verify)
    except ValueError as error:  # IdentityFileError
        return _fail([error])
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    meta = info["metadata"]
    latents = [t for name, t in info["tensors"].items() if name.startswith("latents.")]
    print(f"{info['path']}: saved identity, format {info['format_version']}"
          + ("" if info["readable"] else " (not readable by this bachvid)")
          + f", {_size(info['file_size'])} ({_size(info['tensor_bytes'])} of tensors: {len(latents)} latents"
          + (f" of {latents[0]['shape']} {latents[0]['dtype']}" if latents else "") + ", mask, final latents)")
    shown = [("character", "character"), ("background", "background"), ("action", "action"), ("prompt", "prompt"),
             ("model", "model"), ("model config hash", "model_config_hash"), ("seed", "seed"),
             ("frames", "frames"), ("height", "height"), ("width", "width"), ("steps", "steps"),
             ("guidance", "guidance"), ("guidance 2", "guidance_2"), ("dtype", "dtype"), ("created", "created"), ("content hash", "content_hash")]
    for label, key in shown:
        if key in meta:
            print(f"  {label}: {meta[key]}")
    if "bachvid_config" in meta:
        print(f"  bachvid config: {json.dumps(meta['bachvid_config'], sort_keys=True)}")
    others = sorted(set(meta) - {key for _, key in shown} - {"bachvid_config", "format_version"})
    for key in others:
        print(f"  {key}: {json.dumps(meta[key], ensure_ascii=False)}")
    if args.verify:
        print("  verified: content hash matches")
    return 0


# bachvid toy ... -------------------------------------------------------------------------------

def add_toy(sub) -> None:
    toy = sub.add_parser("toy", help="the toy world and its model")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True, metavar="COMMAND", parser_class=_LazyParser)
    toy_sub.add_parser("train", help="train the built-in toy model from its recipe",
                       fill=_from_module("bachvid.toy.train"))
    toy_sub.add_parser("results", help="the results table: BachVid vs baselines, with oracles and ablations",
                       fill=_from_module("bachvid.toy.results"))
    toy_sub.add_parser("backbone-table", help="BachVid vs both baselines on each backbone, side by side",
                       fill=_from_module("bachvid.toy.backbone_table"))


# Registry and entry point -------------------------------------------------------------------

SUBCOMMANDS = (add_generate, add_identity, add_toy, importlib.import_module("bachvid.plan_cli").add_plan,
               importlib.import_module("bachvid.bench").add_bench,
               importlib.import_module("bachvid.bench_attention").add_bench_attention,
               importlib.import_module("bachvid.toy.analyze").add_analyze,
               importlib.import_module("bachvid.toy.evaluate_cli").add_evaluate,
               importlib.import_module("bachvid.studio.command").add_studio)  # gradio only when it runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bachvid", description="Consistent multi-shot video generation (BachVid).")
    parser.add_argument("--version", action="version", version=f"bachvid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = ["bachvid", *argv]
    start = time.perf_counter()
    code = args.run(args)
    if args.command == "generate" and code == 0:
        print(f"done in {time.perf_counter() - start:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
