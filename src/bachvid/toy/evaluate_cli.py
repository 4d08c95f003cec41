"""`bachvid evaluate OUT_DIR`: score a folder written by `bachvid generate` on the toy world.

For every story folder (one with a manifest.json; OUT_DIR itself may be one) it reads the identity
and shot MP4s (shrunk back to the model's size), and scores each shot against the identity from
pixels only, with the benchmark's metrics (`bachvid.toy.shot_metrics`): background PSNR over
pixels background in both (shots asked for the identity's background), character colour-histogram
distance, the identity's belt colour kept, action right (prompts in the toy world's words). It
prints a table and writes OUT_DIR/evaluation.json.

The scorer knows only the toy worlds (their palette, 64 x 64 or 96 x 96 clips): videos of other models are
scored, but the numbers mean little. Module imports stay light: `bachvid --help` must answer at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXIT_USAGE = 2


class NotBachvidOutput(ValueError):
    pass


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a folder made by `bachvid generate` on the toy world (pixels only)",
                       description=__doc__.split("\n\n")[0] + ". Writes OUT_DIR/evaluation.json.")
    p.add_argument("out_dir", help="the --out folder of `bachvid generate` (or one story's folder in it)")
    p.add_argument("--json", action="store_true", help="print the evaluation as JSON instead of the table")
    p.add_argument("--write", default=None, metavar="FILE",
                   help="where to write the JSON (default OUT_DIR/evaluation.json)")
    p.set_defaults(run=run)


def story_folders(out_dir: Path) -> list[Path]:
    if not out_dir.exists():
        raise NotBachvidOutput(f"{out_dir}: no such folder")
    if not out_dir.is_dir():
        raise NotBachvidOutput(f"{out_dir} is a file, not a folder written by `bachvid generate`")
    if (out_dir / "manifest.json").is_file():
        return [out_dir]
    folders = sorted(p.parent for p in out_dir.glob("*/manifest.json"))
    if not folders:
        raise NotBachvidOutput(f"{out_dir} is not bachvid output: no manifest.json in it or in its subfolders "
                               f"(make one with `bachvid generate STORY_FILE --out {out_dir}`)")
    return folders


def _keys(table: dict) -> dict:
    return {text: key for key, text in table.items()}


def _load_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise NotBachvidOutput(f"{path}: cannot read it as JSON ({error})") from error
    story = manifest.get("story") if isinstance(manifest, dict) else None
    if not isinstance(story, dict) or not {"character", "identity", "shots"} <= set(story) \
            or not isinstance(manifest.get("videos"), dict):
        raise NotBachvidOutput(f"{path} is not a bachvid manifest (no story with identity and shots, or no videos)")
    return manifest


def evaluate_story(folder: Path) -> dict:
    """Score one story folder: identity vs each shot."""
    from ..io.outputs import read_video
    from . import world
    from .evaluate import score_clip
    from .shot_metrics import belt_colour, belt_name, compare

    manifest = _load_manifest(folder)
    story, videos = manifest["story"], manifest["videos"]
    recipe = manifest.get("recipe") or {}
    notes = []

    def frames_of(name: str):
        path = folder / f"{name}.mp4"
        if not path.is_file():
            return None
        size = (videos.get(name) or {}).get("size")
        if size is None:
            settings = recipe.get("settings") or {}
            size = [settings.get("height"), settings.get("width")] if settings.get("height") else None
        return read_video(path, size=tuple(size) if size else None)

    identity = frames_of("identity")
    if identity is None:
        raise NotBachvidOutput(f"{folder}: identity.mp4 is missing (an unfinished story? run `bachvid generate` again)")
    sizes = sorted({spec.size for spec in world.WORLDS.values()})
    if identity.shape[1] != identity.shape[2] or identity.shape[1] not in sizes:
        notes.append(f"videos are {identity.shape[2]}x{identity.shape[1]}, not a toy world's square "
                     f"({' or '.join(str(s) for s in sizes)} px): the toy scorer's numbers mean little here")
    actions, characters = _keys(world.ACTIONS), _keys(world.CHARACTERS)
    if story["character"] not in characters:
        notes.append(f"character {story['character']!r} is not a toy-world character")
    ident_score = score_clip(identity)
    belt = belt_colour(identity, ident_score.mask, ident_score.character_kind)
    bachvid_on = (recipe.get("config") or {}).get("enabled")
    shots = []
    for i, shot in enumerate(story["shots"]):
        name = f"shot-{i + 1:02d}"
        frames = frames_of(name)
        if frames is None:
            notes.append(f"{name}.mp4 is missing: not scored")
            continue
        same_background = shot["background"] == story["identity"]["background"]
        row = compare(identity, frames, actions.get(shot["action"]), same_background, ident_score, belt)
        row.update({"shot": name, "background": shot["background"], "action": shot["action"],
                    "seconds": (videos.get(name) or {}).get("seconds")})
        shots.append(row)
    return {"story": story.get("name", folder.name), "folder": str(folder), "bachvid": bachvid_on,
            "character": story["character"], "identity_action": story["identity"]["action"],
            "identity_character_read": ident_score.character_kind,
            "identity_belt": belt_name(belt),
            "shots": shots, "notes": notes}


def summarize(stories: list[dict]) -> dict:
    from .shot_metrics import METRICS

    rows = [s for story in stories for s in story["shots"]]
    summary = {}
    for metric in (*METRICS, "seconds"):
        values = [r[metric] for r in rows if r.get(metric) is not None]
        summary[metric] = {"mean": sum(values) / len(values) if values else None, "n": len(values)}
    return {"stories": len(stories), "shots": len(rows), **summary}


def render(evaluation: dict) -> str:
    def fmt(x, kind):
        if x is None:
            return "-"
        if kind == "share":
            return f"{100 * x:.0f}%"
        if kind == "yes":
            return "yes" if x else "no"
        return f"{x:.{kind}f}"

    head = ("story", "shot", "action asked", "read", "bg PSNR dB", "hist dist", "belt kept", "s")
    rows = []
    for story in evaluation["stories"]:
        for s in story["shots"]:
            rows.append((story["story"], s["shot"], s["action"], s["action_read"], fmt(s["background_psnr"], 1),
                         fmt(s["histogram_distance"], 3),
                         "-" if s["belt_kept"] is None else f"{fmt(s['belt_kept'], 'yes')} ({s['shot_belt'] or '?'}"
                                                           f" vs {s['identity_belt']})",
                         fmt(s["seconds"], 1)))
    m = evaluation["summary"]
    rows.append(("mean", f"{m['shots']} shots", "", fmt(m["action_right"]["mean"], "share") + " right",
                 fmt(m["background_psnr"]["mean"], 1), fmt(m["histogram_distance"]["mean"], 3),
                 fmt(m["belt_kept"]["mean"], "share") + f" of {m['belt_kept']['n']}", fmt(m["seconds"]["mean"], 1)))
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in (head, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for story in evaluation["stories"]:
        lines += [f"note: {story['story']}: {n}" for n in story["notes"]]
    return "\n".join(lines)


def evaluate_folder(out_dir) -> dict:
    stories = [evaluate_story(folder) for folder in story_folders(Path(out_dir))]
    return {"folder": str(out_dir), "stories": stories, "summary": summarize(stories)}


def run(args) -> int:
    from ..io.outputs import write_manifest

    try:
        evaluation = evaluate_folder(args.out_dir)
    except NotBachvidOutput as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    path = Path(args.write) if args.write else Path(args.out_dir) / "evaluation.json"
    write_manifest(path, evaluation)
    print(json.dumps(evaluation, indent=2) if args.json else render(evaluation))
    print(f"wrote {path}", file=sys.stderr)
    return 0
