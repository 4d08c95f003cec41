"""The `bachvid` command. Each subcommand is a small function registered in `SUBCOMMANDS`."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .story import StoryError, load_stories


def _versions() -> dict:
    import diffusers
    import torch
    import transformers

    return {"bachvid": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def _load_pipeline(args):
    """Load the model named on the command line (a factory so tests can swap in a small one)."""
    import torch

    from .pipeline import BachVidPipeline

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    pipe = BachVidPipeline.from_pretrained(args.model, torch_dtype=dtype)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(args.device)
    if args.vae_tiling:
        pipe.enable_vae_tiling()
        pipe.enable_vae_slicing()
    return pipe


def add_generate(sub):
    p = sub.add_parser("generate", help="generate consistent shots for every story in a file")
    p.add_argument("story_file", help="stories: .txt (background # character # action lines) or .yaml/.json")
    p.add_argument("--out", required=True, help="output folder (one subfolder per story)")
    p.add_argument("--model", default=None, help="diffusers folder or hub id (default: the built-in toy model)")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, dest="num_inference_steps")
    p.add_argument("--frames", type=int, dest="num_frames")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--guidance", type=float, dest="guidance_scale")
    p.add_argument("--no-shared-background", action="store_true", help="inject the character only")
    p.add_argument("--no-bachvid", action="store_true", help="plain generation (a baseline to compare with)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cpu-offload", action="store_true")
    p.add_argument("--vae-tiling", action="store_true", help="VAE tiling and slicing, for large videos")
    p.add_argument("--force", action="store_true", help="regenerate videos that already exist")
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from tqdm.auto import tqdm

    from . import outputs
    from .config import BachVidConfig

    try:
        stories = load_stories(args.story_file)
    except StoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        pipe = _load_pipeline(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if pipe.model_note:
        print(f"model: {pipe.model_name} ({pipe.model_note})")
    errors = []
    for story in stories:
        try:
            pipe.check_story(story)
        except StoryError as error:
            errors.append(error)
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 2

    config = BachVidConfig(enabled=not args.no_bachvid, shared_background=not args.no_shared_background)
    overrides = {k: getattr(args, k) for k in ("seed", "num_inference_steps", "num_frames", "height", "width",
                                               "guidance_scale") if getattr(args, k) is not None}
    out = Path(args.out)
    total = sum(1 + len(s.shots) for s in stories)
    bar = tqdm(total=total, desc="videos", unit="video")
    try:
        for story in stories:
            settings = pipe.default_settings().for_story(story)
            settings = settings.__class__(**{**settings.__dict__, **overrides})
            _generate_story(pipe, story, settings, config, out / story.name, args.force, bar, outputs)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished videos are kept in {out}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    return 0


def _generate_story(pipe, story, settings, config, folder: Path, force: bool, bar, outputs) -> None:
    from dataclasses import asdict

    names = ["identity"] + [f"shot-{i + 1:02d}" for i in range(len(story.shots))]
    done = [(folder / f"{n}.mp4").is_file() for n in names]
    if all(done) and not force:
        bar.write(f"{story.name}: skipped (all videos exist; --force regenerates)")
        bar.update(len(names))
        return
    manifest = {
        "story": {"name": story.name, "character": story.character, "source": story.path, "line": story.line,
                  "shared_background": story.shared_background,
                  "identity": asdict(story.identity), "shots": [asdict(s) for s in story.shots]},
        "model": {"name": pipe.model_name, "note": pipe.model_note},
        "settings": asdict(settings), "config": config.to_dict(), "versions": _versions(),
        "started": datetime.now(timezone.utc).isoformat(), "videos": {},
    }
    videos = []

    def keep(name, result):
        fps = pipe.fps
        if force or not (folder / f"{name}.mp4").is_file():
            outputs.save_video(folder / f"{name}.mp4", result.frames, fps)
            outputs.save_gif(folder / f"{name}.gif", result.frames, fps)
            if result.mask is not None:
                overlay = outputs.mask_overlay(result.frames, result.mask)
                outputs.save_video(folder / "masks" / f"{name}-mask.mp4", overlay, fps)
        manifest["videos"][name] = {"prompt": result.prompt, "seed": result.seed,
                                    "seconds": round(result.seconds, 3), **result.stats}
        videos.append((f"{name}: {result.prompt}", result.frames))
        outputs.write_manifest(folder / "manifest.json", manifest)
        bar.update(1)

    identity = pipe.generate_identity(story, settings, config)
    keep("identity", identity)
    for i in range(len(story.shots)):
        if done[i + 1] and not force:
            bar.write(f"{story.name}: {names[i + 1]} exists, kept")
            videos.append((f"{names[i + 1]} (kept)", outputs.read_video(folder / f"{names[i + 1]}.mp4")))
            bar.update(1)
            continue
        keep(names[i + 1], pipe.generate_shot(story, i, identity, settings, config))
    outputs.contact_sheet(folder / "contact-sheet.png", videos)
    manifest["finished"] = datetime.now(timezone.utc).isoformat()
    outputs.write_manifest(folder / "manifest.json", manifest)


def _toy_train(sub):
    try:
        from .toy import train
    except ImportError:
        return
    toy = sub.add_parser("toy", help="the toy world and its model")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    p = toy_sub.add_parser("train", help="train the built-in toy model from its recipe")
    train.add_arguments(p)
    p.set_defaults(run=train.run)


SUBCOMMANDS = (add_generate, _toy_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bachvid", description="Consistent multi-shot video generation (BachVid).")
    parser.add_argument("--version", action="version", version=f"bachvid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    code = args.run(args)
    if args.command == "generate" and code == 0:
        print(f"done in {time.perf_counter() - start:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
