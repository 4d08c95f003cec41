"""What the studio's buttons do, as plain functions of the page's values (no gradio here), so
they are tested without a browser. `app.py` wires them to components."""

from __future__ import annotations

import threading
from pathlib import Path

from .. import cli
from ..method.latent_lock import SUGGESTED_BACKGROUND_LOCK
from .runner import Studio, videos_of, zip_story
from .stories import story_errors

SETTINGS = ("seed", "num_inference_steps", "num_frames", "height", "width", "guidance_scale")


def error_text(errors) -> str:
    """Errors as the page shows them beside the story: one per line, as the CLI prints them."""
    return "\n".join(f"error: {error}" for error in errors)


def check_story(studio: Studio, text: str, name: str = "") -> str:
    """The story's errors (empty when it can be made), before anything runs."""
    if not (text or "").strip():
        return ""
    _, errors = story_errors(studio.pipe, text, name)
    return error_text(errors)


def page_settings(values: dict) -> dict:
    """The page's settings as GenerationSettings values (numbers come as floats; None: unset). An
    empty number field reaches the server as 0, so 0 steps, frames, height or width (never valid)
    mean unset too: the model's default (the fields are empty while the model loads)."""
    out = {}
    for key in SETTINGS:
        value = values.get(key)
        if value is None or value == "" or (key not in ("seed", "guidance_scale") and value == 0):
            continue
        out[key] = float(value) if key == "guidance_scale" else int(value)
    return out


def parse_layers(text) -> tuple[int, ...] | None:
    """'0-4' or '0, 1, 2' -> layer indices; empty: the model's default (None)."""
    text = (text or "").strip()
    if not text:
        return None
    layers = []
    for part in text.replace(" ", "").split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            layers += range(int(low), int(high) + 1)
        elif part:
            layers.append(int(part))
    return tuple(sorted(set(layers)))


def page_config(studio: Studio, knobs: dict, enabled: bool = True):
    """The BachVid config: the model's defaults with the page's knobs ("background_lock": the box
    that keeps the model's own background lock on, or the suggested hard lock where the model has
    none, or turns it off)."""
    lock = knobs.get("background_lock") if enabled else None
    config = studio.config(enabled=enabled, shared_background=knobs.get("shared_background"),
                           token_merge=knobs.get("token_merge") if enabled else None,
                           vital_layers=parse_layers(knobs.get("vital_layers")) if enabled else None)
    if lock is None or bool(lock) == (config.background_latents_until > 0):
        return config
    if lock:
        return config.replace(background_latents_until=SUGGESTED_BACKGROUND_LOCK, background_latents_weight=1.0,
                              background_lock_agreement=0.0)
    return config.replace(background_latents_until=0.0)


def _result(status: str, folder: Path | None = None, names=(), baseline: Path | None = None, zip_path=None,
            errors: str = "") -> dict:
    """What the page shows: status, galleries of (file, caption), the contact sheet and the zip."""
    found = videos_of(folder, list(names)) if folder is not None else {}
    vanilla = videos_of(baseline, list(names)) if baseline is not None else {}
    sheet = folder / "contact-sheet.png" if folder is not None else None
    return {"status": status, "errors": errors,
            "videos": [(str(files["video"]), name) for name, files in found.items()],
            "masks": [(str(files["mask"]), f"{name} mask") for name, files in found.items() if "mask" in files],
            "baseline": [(str(files["video"]), f"{name} (vanilla)") for name, files in vanilla.items()],
            "sheet": str(sheet) if sheet is not None and sheet.is_file() else None,
            "zip": str(zip_path) if zip_path else None, "folder": str(folder) if folder is not None else None}


class Cancels:
    """Each session's cancel flags. A flag is made when Generate is clicked (before the queue), so
    Cancel reaches a generation still waiting behind another session's, not only a running one;
    it stops every generation of that session, queued or running."""

    def __init__(self):
        self._waiting: dict[str, list[threading.Event]] = {}  # armed on a click, not started yet
        self._running: dict[str, list[threading.Event]] = {}
        self._lock = threading.Lock()

    def arm(self, session: str) -> threading.Event:
        """On the click: a new flag for the generation about to be queued."""
        flag = threading.Event()
        with self._lock:
            self._waiting.setdefault(session, []).append(flag)
        return flag

    def take(self, session: str) -> threading.Event:
        """When the queued generation starts: the oldest flag armed for it (a new one if none was)."""
        with self._lock:
            waiting = self._waiting.get(session)
            flag = waiting.pop(0) if waiting else threading.Event()
            if not waiting:
                self._waiting.pop(session, None)
            self._running.setdefault(session, []).append(flag)
        return flag

    def cancel(self, session: str) -> int:
        """Set every flag of the session; returns how many generations it reached."""
        with self._lock:
            flags = [*self._waiting.get(session, []), *self._running.get(session, [])]
        for flag in flags:
            flag.set()
        return len(flags)

    def done(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            running = self._running.get(session, [])
            if flag in running:
                running.remove(flag)
            if not running:
                self._running.pop(session, None)  # a closed session leaves nothing behind


def generate(studio: Studio, session: str, text: str, name: str, settings: dict, knobs: dict,
             baseline: bool = False, character: str | None = None, cancel: threading.Event | None = None):
    """Make the story (and its vanilla same-seed baseline on request); yields what the page shows
    as videos arrive. With a saved `character`, its identity stands in for the story's first
    line and its settings hold (as `bachvid generate --identity`)."""
    cancel = cancel or threading.Event()
    if cancel.is_set():  # cancelled while it waited in the queue
        yield _result("**Cancelled** before it started; nothing was made.")
        return
    story, errors = story_errors(studio.pipe, text, name)
    if story is None:
        yield _result("Fix the story first.", errors=error_text(errors))
        return
    notes, saved = [], None
    folder_root = studio.session_folder(session)
    config = page_config(studio, knobs)
    if character:
        try:
            saved = studio.library.load(studio.pipe, character)
        except ValueError as error:
            yield _result("The saved character cannot be used.", errors=error_text([error]))
            return
        story, note = cli._with_saved_identity(story, saved)
        notes += [note] if note else []
        notes.append(f"settings are the saved character's ({character}); the page's seed, steps, frames, size "
                     f"and guidance do not apply")
        settings_ = studio.settings(story, saved=saved)
        if baseline:
            notes.append("no vanilla baseline with a saved character (it has no plain counterpart)")
            baseline = False
    else:
        try:
            settings_ = studio.settings(story, **page_settings(settings))
        except (TypeError, ValueError) as error:
            yield _result("Check the settings.", errors=error_text([error]))
            return
    mode = knobs.get("identity_mode") or "auto"
    plans = [(folder_root, config)]
    if baseline:
        plans.append((folder_root / "vanilla", page_config(studio, knobs, enabled=False)))
    jobs, force, problems = [], [], []
    for root, cfg in plans:
        job, errs = studio.prepare(story, settings_, cfg, root, identity_mode=mode, saved=saved)
        if job is not None and errs:  # only a mismatch: the folder holds another recipe's videos
            job, errs = studio.prepare(story, settings_, cfg, root, identity_mode=mode, saved=saved, force=True)
            if job is not None and not errs:
                notes.append(f"{job.folder.name}: the earlier videos were made from another recipe; remade")
                force.append(job)
        problems += errs
        if job is not None and not errs:
            jobs.append(job)
    if problems:
        yield _result("Check the settings.", errors=error_text(problems))
        return
    main = jobs[0]
    vanilla = jobs[1].folder if baseline else None
    note_text = "".join(f"\n\nnote: {line}" for line in notes)
    yield _result("Starting..." + note_text, main.folder, main.names, vanilla)
    last = None
    for job, progress in studio.start(jobs, cancel, force=force):
        last = progress if job is main else last
        what = "vanilla baseline: " if job is not main else ""
        status = f"**{what}{progress.phase()}** ({100 * progress.fraction:.0f}%)\n\n{progress.table()}"
        if progress.error:
            status = f"**{what}stopped: {progress.error}**\n\n{progress.table()}"
        yield _result(status + note_text, main.folder, main.names, vanilla)
    finished = last is not None and last.finished
    made = any(main.video(n).is_file() for n in main.names)
    zip_path = zip_story(main.folder, baseline=vanilla) if made else None
    seconds = f" in {max(last.done.values()):.1f} s" if finished and last.done else ""
    status = (f"**Done{seconds}**: {main.folder}" if finished
              else f"**Stopped**: finished videos are kept in {main.folder}")
    if last is not None and last.error:
        status = f"**Stopped: {last.error}**"
    yield _result(status + note_text, main.folder, main.names, vanilla, zip_path)


def save_character(studio: Studio, text: str, name: str, character_name: str, settings: dict, knobs: dict):
    """Make the story's identity and save it in the library as `character_name`; returns a message."""
    story, errors = story_errors(studio.pipe, text, name)
    if story is None:
        return error_text(errors)
    try:
        settings_ = studio.settings(story, **page_settings(settings))
        with studio.lock:
            saved = studio.library.save(studio.pipe, story, settings_, page_config(studio, knobs), character_name)
    except ValueError as error:
        return error_text([error])
    return f"saved {saved.label} to {saved.path}"


def character_gallery(studio: Studio) -> list[tuple[str, str]]:
    return [(str(c.thumbnail), c.label) for c in studio.library.characters() if c.thumbnail is not None]


def character_names(studio: Studio) -> list[str]:
    return [c.name for c in studio.library.characters()]


def character_story(studio: Studio, name: str) -> str:
    """A story text starting with the saved character's identity line, to write new shots under."""
    if not name:
        return ""
    m = studio.library.get(name).metadata
    return f"{m['background']} # {m['character']} # {m['action']}\n{m['background']} # {m['character']} # \n"
