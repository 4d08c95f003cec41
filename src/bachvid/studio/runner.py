"""Generation for the studio: one story at a time per model, written by the CLI's own functions.

`Studio.start` prepares a job with `cli.prepare_job` and makes it with `cli._make_story` in a
worker thread, so the studio's folder is exactly what `bachvid generate --out SESSION_FOLDER`
writes (same layout, recipe and manifest: the CLI resumes or re-renders it). Progress comes
from a forward hook on the transformer (one call per denoising step of a batch), which is also
where a cancel takes effect: the next step raises `Cancelled`, and finished videos stay.
"""

from __future__ import annotations

import math
import platform
import queue
import re
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import cli


class Cancelled(Exception):
    """Raised inside the generation thread at the next denoising step after a cancel."""


@dataclass
class Progress:
    """What the page shows while a story is made."""

    videos: list[str]  # identity, shot-01, ...
    done: dict[str, float] = field(default_factory=dict)  # video -> seconds since start when written
    kept: list[str] = field(default_factory=list)  # videos a previous run had made (not made again)
    steps: int = 0  # transformer calls so far (one per denoising step of a batch)
    expected: int = 1  # about how many calls the story takes
    steps_per_video: int = 1
    prerun: int = 0  # pre-run calls per batch of shots (0: BachVid off)
    started: float = field(default_factory=time.perf_counter)
    wall_start: float = field(default_factory=lambda: time.time() - 1.0)  # mtime resolution
    notes: list[str] = field(default_factory=list)
    finished: bool = False
    error: str | None = None

    @property
    def fraction(self) -> float:
        if self.finished:
            return 1.0
        return min(0.99, self.steps / max(1, self.expected))

    def phase(self) -> str:
        """The video or phase being made now: identity, then the shots' pre-run and injected run."""
        if self.finished:
            return "finished"
        todo = [name for name in self.videos if name not in self.done and name not in self.kept]
        if not todo:
            return "contact sheet"
        n = self.steps_per_video
        if todo[0] == "identity":
            return f"identity: step {min(self.steps, n)}/{n}"
        calls = max(0, self.steps - n)  # calls since the identity
        if not self.prerun:  # vanilla: one video after another
            calls = calls - n * (len(self.done) - 1) if self.done else calls
            return f"{todo[0]}: " + (f"step {calls}/{n}" if calls < n else "decoding and writing")
        calls -= max(0, calls - 1) // (self.prerun + n) * (self.prerun + n)  # within this batch of shots
        if calls >= self.prerun + n:
            return f"{', '.join(todo)}: decoding and writing"
        if calls <= self.prerun:
            return f"{', '.join(todo)}: pre-run step {calls}/{self.prerun} (reading masks and matches)"
        return f"{', '.join(todo)}: injected step {calls - self.prerun}/{n}"

    def table(self) -> str:
        rows = ["| video | state |", "| --- | --- |"]
        current = self.phase()
        for name in self.videos:
            if name in self.kept:
                state = "kept from an earlier run"
            elif name in self.done:
                state = f"done at {self.done[name]:.1f} s"
            elif current.startswith(name) or name in current.split(":")[0]:
                state = "making"
            else:
                state = "waiting"
            rows.append(f"| {name} | {state} |")
        return "\n".join(rows)


class _Bar:
    """The tqdm-like bar `cli._make_story` reports to: each update is a finished video."""

    def __init__(self, job, progress: Progress, changed):
        self.job, self.progress, self.changed = job, progress, changed

    def write(self, text: str) -> None:
        self.progress.notes.append(text)
        self.changed()

    def update(self, n: int = 1) -> None:
        elapsed = time.perf_counter() - self.progress.started
        for name in self.job.names:
            video = self.job.video(name)
            if name not in self.progress.done and name not in self.progress.kept and video.is_file() \
                    and video.stat().st_mtime >= self.progress.wall_start:  # not an older run's file
                self.progress.done[name] = elapsed
        self.changed()


def _session_name(session: str) -> str:
    return "session-" + (re.sub(r"[^A-Za-z0-9_-]", "", session or "")[:40] or "local")


class Studio:
    """The model and where things go; one generation (or identity save) at a time."""

    def __init__(self, pipe, out, characters=None, command: list[str] | None = None):
        """pipe: a BachVidPipeline, or a Future of one (the page is served while the model loads)."""
        from .library import CharacterLibrary

        self._pipe, self.out, self.command = pipe, Path(out), command
        self.library = CharacterLibrary(Path(characters) if characters else self.out / "characters")
        self.lock = threading.Lock()  # gradio's queue runs one at a time; this holds outside it too
        self._header = None

    @property
    def ready(self) -> bool:
        return not hasattr(self._pipe, "result") or self._pipe.done()

    @property
    def pipe(self):
        """The model (waits for it while it loads)."""
        return self._pipe.result() if hasattr(self._pipe, "result") else self._pipe

    @property
    def header(self) -> dict:
        """The manifest's model, versions, platform and command, as `bachvid generate` writes them."""
        if self._header is None:
            pipe = self.pipe
            self._header = {"model": {"name": pipe.model_name, "note": getattr(pipe, "model_note", None)},
                            "versions": cli._versions(), "platform": platform.platform(), "command": self.command}
        return self._header

    def session_folder(self, session: str) -> Path:
        """A browser session's own folder: `bachvid generate --out` this folder resumes its stories."""
        return self.out / _session_name(session)

    def settings(self, story, saved=None, **values):
        """The model's (or a saved character's) defaults < the story's options < the page's values."""
        defaults = saved.settings if saved is not None else self.pipe.default_settings()
        return defaults.for_story(story, **{k: v for k, v in values.items() if v is not None})

    def config(self, enabled: bool = True, **knobs):
        return self.pipe.default_config(enabled=enabled, **{k: v for k, v in knobs.items() if v is not None})

    def prepare(self, story, settings, config, folder, *, identity_mode="auto", saved=None, force=False):
        """The CLI's job for this story in `folder` (a session folder, or its vanilla/ baseline)."""
        return cli.prepare_job(self.pipe, story, settings, config, Path(folder), identity_mode=identity_mode,
                               saved=saved, force=force)

    def prerun_calls(self, job) -> int:
        """About how many transformer calls a batch of shots' pre-run takes (0 with BachVid off)."""
        if not job.config.enabled:
            return 0
        from ..method.plan import Schedule

        schedule = Schedule.of(job.config, job.settings.num_inference_steps)
        return math.ceil(schedule.prerun_steps / max(1, job.config.prerun_stride))  # about: the stride may not apply

    def expected_calls(self, job) -> int:
        steps = job.settings.num_inference_steps
        shots = len(job.names) - 1
        if not job.config.enabled:
            return steps * len(job.names)
        group = job.group or self.pipe.default_group(job.settings, shots, job.mode or "replay")
        batches = math.ceil(shots / max(1, group))
        return steps + batches * (steps + self.prerun_calls(job))

    def run(self, job, progress: Progress, cancel: threading.Event, changed=lambda: None, force: bool = False) -> None:
        """Make the job's missing videos (all with force) and its contact sheet, as `bachvid generate` does."""
        listed = (job.previous or {}).get("videos", {})  # the manifest lists a video once it is made for its recipe
        progress.kept = [] if force else [n for n in job.names if n in listed and job.video(n).is_file()]
        progress.expected = self.expected_calls(job)
        progress.steps_per_video = job.settings.num_inference_steps
        progress.prerun = self.prerun_calls(job)

        def step(module, inputs):
            if cancel.is_set():
                raise Cancelled()
            progress.steps += 1
            changed()

        models = [m for m in (getattr(self.pipe.pipe, "transformer", None),
                              getattr(self.pipe.pipe, "transformer_2", None)) if m is not None]
        hooks = [m.register_forward_pre_hook(step) for m in models]
        try:
            with self.lock:
                cli._make_story(self.pipe, job, self.header, self.pipe.fps, force, _Bar(job, progress, changed))
        finally:
            for hook in hooks:
                hook.remove()

    def start(self, jobs, cancel: threading.Event, force=()):
        """Run jobs one after another in a thread (those in `force` remade whole); yields (job,
        Progress) whenever something changed, and once more at the end (.finished, or .error set)."""
        events: queue.Queue = queue.Queue()
        progresses = [Progress(videos=list(job.names)) for job in jobs]

        def work():
            for job, progress in zip(jobs, progresses):
                try:
                    self.run(job, progress, cancel, changed=lambda j=job, p=progress: events.put((j, p)),
                             force=any(job is f for f in force))
                    progress.finished = True
                except Cancelled:
                    progress.error = "cancelled; finished videos are kept (generate again to resume)"
                except Exception as error:  # shown on the page, not lost in a thread
                    progress.error = f"{type(error).__name__}: {error}"
                events.put((job, progress))
                if progress.error:
                    break
            events.put(None)

        thread = threading.Thread(target=work, name="bachvid-studio-generate", daemon=True)
        thread.start()
        try:
            last = 0.0
            while True:
                item = events.get()
                if item is None:
                    break
                job, progress = item
                # many step events: show at most a few per second, but every finished video at once
                now = time.perf_counter()
                if progress.finished or progress.error or now - last > 0.3 or events.empty():
                    last = now
                    yield job, progress
        finally:
            cancel.set()  # the page went away or was cancelled: stop at the next step
            thread.join()


def videos_of(folder: Path, names: list[str]) -> dict[str, dict[str, Path]]:
    """The finished files of each video in a story folder: {name: {video, gif, mask}}."""
    found = {}
    for name in names:
        video = folder / f"{name}.mp4"
        if video.is_file():
            mask = folder / "masks" / f"{name}-mask.mp4"
            found[name] = {"video": video, **({"mask": mask} if mask.is_file() else {})}
    return found


def zip_story(folder: Path, to: Path | None = None, baseline: Path | None = None) -> Path:
    """A zip of a story folder (videos, previews, masks, contact sheet, manifest) beside it,
    entries under the story's name, temporaries left by a killed run skipped; with a `baseline`
    folder (the vanilla videos made beside it), those under NAME/vanilla/, to compare offline."""
    folder = Path(folder)
    to = Path(to) if to else folder.parent / f"{folder.name}.zip"

    def files_of(root: Path, under: str) -> list[tuple[Path, str]]:
        return [(p, f"{under}/{p.relative_to(root).as_posix()}") for p in sorted(root.rglob("*"))
                if p.is_file() and not p.name.startswith(".")]

    files = files_of(folder, folder.name)
    if baseline is not None and Path(baseline).is_dir():
        files += files_of(Path(baseline), f"{folder.name}/vanilla")

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:  # videos and PNGs are compressed already
            for path, name in files:
                archive.write(path, name)

    from ..io.outputs import write_atomic

    return write_atomic(to, write)
