"""One results table: does BachVid beat the baselines a user has, and what explains the gap?

A fixed benchmark of toy-world stories (an identity that stands still, then shots that act),
generated under several conditions and scored from pixels only (`shot_metrics`, the toy
evaluator), with paired bootstrap confidence intervals over stories:

    python -m bachvid.toy.results --stories 32 --out runs/results      # or: bachvid toy results ...

Conditions (`--conditions`, comma-separated; default all, in this order):

| name | what |
| --- | --- |
| vanilla-own | BachVid off, every shot its own seed (story.shot_seed) |
| vanilla-idseed | BachVid off, every shot the identity's seed ("use the same prompt and seed") |
| bachvid | BachVid with the model's config (pipe.default_config()), every shot its own seed |
| oracle-both | BachVid, masks and matches from the toy world's truth (`oracle.TruthReadings`) |
| no-merge | BachVid, token merge off |
| no-bg | BachVid, shared background off: no background injection, no background merge (shared_background=False) |
| no-fg | BachVid, foreground injection off |
| oracle-masks | BachVid, true masks, matches read from attention |
| oracle-matches | BachVid, masks read from attention, true matches |
| paper-merge | BachVid, the paper's token merge (background_merge 0) |
| bachvid-idseed | BachVid, shots on the identity's seed |
| fg-full | BachVid, foreground injection on at the paper's strength (for a model whose config weakens it: toy-wan) |
| bg-lock | BachVid with the background lock (`BACKGROUND_LOCK`), shots on the identity's seed: compared with the same run without it |
| char-lock | BachVid with the character lock (`CHARACTER_LOCK`), shots on the identity's seed: compared with the same run without it |
| locks | BachVid with both locks, shots on the identity's seed: compared with the same run without it |
| bg-soft | BachVid with the soft background lock (`SOFT_BACKGROUND_LOCK`), shots on the identity's seed: compared with the same run without it |
| bg-mild | BachVid with the mild soft background lock (`MILD_BACKGROUND_LOCK`), shots on the identity's seed: compared with the same run without it |
| bg-agree | BachVid with the agreement lock (`AGREEMENT_LOCK`: the background lock on the tokens the shot's pre-run shares with the identity), shots on the identity's seed: compared with the same run without a background lock |
| no-locks | BachVid with both latent locks off (the paper's form), shots on the identity's seed: what locks and char-lock are compared with where the model's config holds a lock |
| no-bg-lock | BachVid without the background lock, shots on the identity's seed: what the background locks are compared with where the model's config holds one |

Conditions of one's own: `--condition 'NAME:knob=value;...'` (repeatable; keys: any BachVidConfig knob,
seeds=own|identity, oracle_masks, oracle_matches) runs BachVid on the model's config with those knobs
changed, compared with the same run without them (bachvid-idseed or bachvid, which then runs too):
how a knob is tried on held-out stories without adding a built-in condition.

Stories (`benchmark_stories`): every background x character pair twice, once with the shots on the
identity's background ("shared") and once with each shot on another background ("switched"),
alternating; the identity stands still and the shots are three of the four moving actions (the
left-out one rotates). Seeds come from this benchmark's own stream (`BENCH_SEED`) and lie in
[2^20, 2^30), above every seed `calibrate.py`, `consistency.py` and `quality.py` draw (< 2^20).

Metrics per shot against its identity: background PSNR over pixels background in both (shared
stories only), character colour-histogram distance, the identity's belt colour kept (stories whose
identity's belt is readable), action right, seconds per shot (batched: `--batch` stories' shots per
denoising call, on whatever machine runs it; the identity is not counted). A story's value is the
mean over its shots; differences are paired per story and bootstrapped (`--resamples`, fixed RNG).

How it runs: stories go in chunks of `--batch`; the identity pass (cache mode) is made once per
chunk and condition group and serves every BachVid condition; pre-runs are shared by conditions
that read the same (bachvid, no-fg, no-merge, oracle-matches; oracle-masks and oracle-both), and
all of a chunk's shots of one condition denoise in one batch. This is what `run_story` does in
cache mode, shot for shot (tests/test_toy_results.py checks it against `pipe.generate`). Every
finished (story, condition) is appended to `OUT/records.jsonl` with its videos in `OUT/videos/`,
so the same command resumes; conditions run in priority groups (baselines, bachvid on both seeds,
oracle-both first) so an interrupted run has complete columns. Outputs: table.md, results.json, plot.png,
sheet.png (a few stories: identity | vanilla identity's seed | BachVid, and a row per option that ran).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..io.terminal import quiet_loading_bars_off_terminal
from ..method.latent_lock import AGREEMENT_LOCK, MILD_BACKGROUND_LOCK, SUGGESTED_BACKGROUND_LOCK, SUGGESTED_SOFT_BACKGROUND_LOCK
from . import world
from .shot_metrics import METRICS, compare
from .stats import paired_bootstrap

BENCH_SEED = 20_251_107
SEED_LOW, SEED_HIGH = 2**20, 2**30
MOVING = ("left", "right", "jump", "closer")
BASELINES = ("vanilla-idseed", "vanilla-own")
# Conditions that turn one part of BachVid off (or back to the paper's form): what the part adds is
# "bachvid" (own seeds, everything on) minus the condition, paired over stories.
PARTS = {"no-bg": "the shared background (its injection and its merge)", "no-fg": "foreground injection",
         "no-merge": "token merge",
         "paper-merge": "background_merge 1 instead of the paper's 0"}
# Oracle conditions: what the truth adds is the condition minus "bachvid" (the same run with the
# attention-read masks or matches), the microscope's answer to "are the readings the bottleneck?".
TRUTHS = {"oracle-masks": "true masks instead of read ones", "oracle-matches": "true matches instead of read ones",
          "oracle-both": "true masks and matches"}
# Options beyond the paper: what one adds is the condition minus the same run without it (same seeds),
# paired over stories: the run whose config is the option's with the option's own knobs back at their
# defaults (`option_reference`). With the toy CogVideoX model's defaults (the character lock and the
# agreement lock) the background locks are compared with no-bg-lock and locks with no-locks; in records made before
# those defaults, with bachvid-idseed (which then held no background lock, or no lock at all).
OPTIONS = {"bg-lock": "background lock, on BachVid with shots on the identity's seed",
           "char-lock": "character lock, on BachVid with shots on the identity's seed",
           "locks": "both locks, on BachVid with shots on the identity's seed",
           "bg-soft": "soft background lock, on BachVid with shots on the identity's seed",
           "bg-mild": "mild soft background lock, on BachVid with shots on the identity's seed",
           "bg-agree": "agreement lock, on BachVid with shots on the identity's seed"}
BACKGROUND_LOCK = SUGGESTED_BACKGROUND_LOCK
CHARACTER_LOCK = 0.8
"""The locks the bg-lock, char-lock and locks conditions measure (background_latents_until,
character_latents_until), chosen on the diagnosis stories (docs/DIAGNOSIS.md, "Latent locks")."""
SOFT_BACKGROUND_LOCK = SUGGESTED_SOFT_BACKGROUND_LOCK  # bg-soft's (until, weight)


@dataclass(frozen=True)
class Condition:
    name: str
    label: str
    bachvid: bool = True
    changes: dict = field(default_factory=dict)
    seeds: str = "own"  # shots' noise: "own" (story.shot_seed) or "identity" (the identity's seed)
    oracle_masks: bool = False
    oracle_matches: bool = False
    compared_with: str | None = None  # a custom condition's reference run (`--condition`)

    @property
    def oracle(self) -> bool:
        return self.oracle_masks or self.oracle_matches

    def prerun(self, shared: bool) -> str:
        """Which pre-run this condition's shots read (conditions with the same one share it)."""
        kind = "read"
        if not shared or self.changes.get("shared_background", True) is False:
            kind = "plain-bg"
        elif self.oracle_masks:
            kind = "oracle-identity"
        return kind if self.seeds == "own" else f"{kind}:identity-seed"

    def shot_video(self, video, identity):
        """The shot as a batch video, on its own noise or the identity's (`seeds`)."""
        from ..backbones import BatchVideo

        return video.denoised() if self.seeds == "own" else BatchVideo(video.embeds, video.negative, seed=identity.seed)


CONDITIONS = {c.name: c for c in (
    Condition("vanilla-own", "vanilla, own seed per shot", bachvid=False, seeds="own"),
    Condition("vanilla-idseed", "vanilla, the identity's seed", bachvid=False, seeds="identity"),
    Condition("bachvid", "BachVid (model's config), own seed per shot"),
    Condition("oracle-both", "BachVid, oracle masks + matches", oracle_masks=True, oracle_matches=True),
    Condition("no-merge", "BachVid, token merge off", changes={"token_merge": False}),
    Condition("no-bg", "BachVid, shared background off (no background injection or merge)",
              changes={"shared_background": False}),
    Condition("no-fg", "BachVid, foreground injection off", changes={"foreground_injection": False}),
    Condition("oracle-masks", "BachVid, oracle masks", oracle_masks=True),
    Condition("oracle-matches", "BachVid, oracle matches", oracle_matches=True),
    Condition("paper-merge", "BachVid, the paper's token merge (background_merge 0)",
              changes={"background_merge": 0.0}),
    Condition("bachvid-idseed", "BachVid, shots on the identity's seed", seeds="identity"),
    Condition("fg-full", "BachVid, foreground injection at the paper's full strength",
              changes={"foreground_injection": True, "foreground_logit_bias": None}),
    Condition("bg-lock", f"BachVid + background lock (background_latents_until {BACKGROUND_LOCK}), shots on the "
              "identity's seed", changes={"background_latents_until": BACKGROUND_LOCK, "background_latents_weight": 1.0,
                                         "background_lock_agreement": 0.0},
              seeds="identity"),
    Condition("char-lock", f"BachVid + character lock (character_latents_until {CHARACTER_LOCK}), shots on the "
              "identity's seed", changes={"character_latents_until": CHARACTER_LOCK}, seeds="identity"),
    Condition("locks", f"BachVid + both locks ({BACKGROUND_LOCK}, {CHARACTER_LOCK}), shots on the identity's seed",
              changes={"background_latents_until": BACKGROUND_LOCK, "background_latents_weight": 1.0,
                       "background_lock_agreement": 0.0, "character_latents_until": CHARACTER_LOCK},
              seeds="identity"),
    Condition("bg-soft", f"BachVid + soft background lock (background_latents_until {SOFT_BACKGROUND_LOCK[0]}, "
              f"weight {SOFT_BACKGROUND_LOCK[1]}), shots on the identity's seed",
              changes={"background_latents_until": SOFT_BACKGROUND_LOCK[0],
                       "background_latents_weight": SOFT_BACKGROUND_LOCK[1], "background_lock_agreement": 0.0},
              seeds="identity"),
    Condition("bg-mild", f"BachVid + mild soft background lock (background_latents_until {MILD_BACKGROUND_LOCK[0]}, "
              f"weight {MILD_BACKGROUND_LOCK[1]}), shots on the identity's seed",
              changes={"background_latents_until": MILD_BACKGROUND_LOCK[0],
                       "background_latents_weight": MILD_BACKGROUND_LOCK[1], "background_lock_agreement": 0.0},
              seeds="identity"),
    Condition("bg-agree", f"BachVid + agreement lock (background_latents_until {AGREEMENT_LOCK[0]}, weight "
              f"{AGREEMENT_LOCK[1]}, background_lock_agreement {AGREEMENT_LOCK[2]}), shots on the identity's seed",
              changes={"background_latents_until": AGREEMENT_LOCK[0], "background_latents_weight": AGREEMENT_LOCK[1],
                       "background_lock_agreement": AGREEMENT_LOCK[2]}, seeds="identity"),
    Condition("no-locks", "BachVid without the latent locks (the paper's form), shots on the identity's seed",
              changes={"background_latents_until": 0.0, "background_latents_weight": 1.0, "background_lock_agreement": 0.0,
                       "character_latents_until": 0.0},
              seeds="identity"),
    Condition("no-bg-lock", "BachVid without the background lock (the character lock as the model sets it), shots on "
              "the identity's seed", changes={"background_latents_until": 0.0, "background_latents_weight": 1.0,
                                              "background_lock_agreement": 0.0},
              seeds="identity"),
)}
BUILT_IN = frozenset(CONDITIONS)
GROUPS = (("vanilla-own", "vanilla-idseed", "bachvid", "bachvid-idseed", "oracle-both"), ("no-merge", "no-bg", "no-fg"),
          ("oracle-masks", "oracle-matches"),
          ("paper-merge", "fg-full", "no-locks", "no-bg-lock", "bg-lock", "bg-soft", "bg-mild", "bg-agree",
           "char-lock", "locks"))
METRIC_LABELS = {"background_psnr": "background PSNR (dB, shared)",
                 "histogram_distance": "character histogram distance",
                 "belt_kept": "belt colour kept", "action_right": "action right", "seconds": "s / shot"}
HIGHER_IS_BETTER = {"background_psnr": True, "histogram_distance": False, "belt_kept": True, "action_right": True,
                    "seconds": False}


# Stories -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchStory:
    name: str
    background: str  # world keys
    character: str
    shared: bool
    shot_backgrounds: tuple[str, ...]
    actions: tuple[str, ...]
    seed: int

    def story(self):
        from ..io.story import Shot, Story

        shots = tuple(Shot(world.BACKGROUNDS[b], world.ACTIONS[a]) for b, a in zip(self.shot_backgrounds, self.actions))
        return Story(name=self.name, character=world.CHARACTERS[self.character],
                     identity=Shot(world.BACKGROUNDS[self.background], world.ACTIONS["stand"]), shots=shots,
                     shared_background=self.shared, seed=self.seed)

    def spec(self) -> dict:
        return {"background": self.background, "character": self.character, "shared": self.shared,
                "shot_backgrounds": list(self.shot_backgrounds), "actions": list(self.actions), "seed": self.seed}


def benchmark_stories(count: int, shots: int = 3, seed: int = BENCH_SEED) -> list[BenchStory]:
    """The fixed benchmark: story i uses background x character pair order[i // 2 % 16], shared
    backgrounds for even i and switched for odd i; shots act `shots` of the 4 moving actions."""
    if not 1 <= shots <= len(MOVING):
        raise ValueError(f"shots must be 1..{len(MOVING)}, got {shots}")
    rng = np.random.default_rng(seed)
    pairs = [(b, c) for b in world.BACKGROUNDS for c in world.CHARACTERS]
    order = rng.permutation(len(pairs))
    stories = []
    for i in range(count):
        b, c = pairs[order[(i // 2) % len(pairs)]]
        shared = i % 2 == 0
        left_out = MOVING[int(rng.integers(len(MOVING)))]
        actions = tuple(a for a in MOVING if a != left_out)[:shots]
        others = [x for x in world.BACKGROUNDS if x != b]
        others = [others[j] for j in rng.permutation(len(others))]
        backgrounds = tuple(b if shared else others[k % len(others)] for k in range(shots))
        stories.append(BenchStory(f"bench-{i:03d}", b, c, shared, backgrounds, actions,
                                  int(rng.integers(SEED_LOW, SEED_HIGH))))
    return stories


# Generation --------------------------------------------------------------------------------------------

def _frames_path(out: Path, story: str, name: str) -> Path:
    return out / "videos" / story / f"{name}.npz"


def _save_frames(out: Path, story: str, name: str, frames: np.ndarray) -> None:
    path = _frames_path(out, story, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, frames=np.asarray(frames))
    tmp.replace(path)


def _load_frames(out: Path, story: str, name: str) -> np.ndarray | None:
    path = _frames_path(out, story, name)
    return np.load(path)["frames"] if path.is_file() else None


def weights_digest(model) -> str:
    """What a records file keeps of the model: a digest of its weights, not its path, so a moved
    checkout or a copied folder still resumes and a retrained model in the same folder does not."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


class Bench:
    """Runs the benchmark's generations in batches and appends records (see the module docstring)."""

    def __init__(self, pipe, out: Path, settings=None, config=None, batch: int = 4, log=print):
        from .oracle import plain_key

        self.pipe, self.out, self.batch, self.log = pipe, Path(out), batch, log
        # Conditions name their shots' seeds themselves; "own" here keeps the model's default
        # (the toy model's is the identity's seed) out of the own-seed conditions.
        self.base = replace(settings or pipe.default_settings(), shot_seeds="own")
        self.config = config or pipe.default_config()
        if getattr(self.config, "prerun_stride", 1) != 1:
            raise ValueError("the benchmark runs every pre-run step (prerun_stride=1); this config asks for "
                             f"prerun_stride={self.config.prerun_stride}")
        self.plain: dict = {}  # oracle.plain_key -> frames of plain generations (identity, vanilla-own)
        self.plain_key = plain_key
        self.records_file = self.out / "records.jsonl"
        self.fingerprint = {"model": weights_digest(pipe.pipe.transformer), "steps": self.base.num_inference_steps,
                            "frames": self.base.num_frames, "size": [self.base.height, self.base.width],
                            "guidance": self.base.guidance_scale, "config": _jsonable(self.config.to_dict())}

    # Records -------------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        if not self.records_file.is_file():
            return []
        return [json.loads(line) for line in self.records_file.read_text().splitlines() if line.strip()]

    def check(self, stories: list[BenchStory]) -> None:
        specs = {s.name: s.spec() for s in stories}
        for r in self.records():
            recorded = with_new_knobs(r["fingerprint"])
            if recorded != self.fingerprint:
                differ = {k: (recorded.get(k), v) for k, v in self.fingerprint.items() if recorded.get(k) != v}
                raise SystemExit(f"{self.records_file} was made with other settings (then, now: {differ}): "
                                 "remove it or pick another --out")
            if r["story"] in specs and r["spec"] != specs[r["story"]]:
                raise SystemExit(f"{self.records_file} holds another story {r['story']!r} (another --shots or "
                                 f"--bench-seed): remove it or pick another --out")

    def _append(self, record: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.records_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    # Running -----------------------------------------------------------------------------------------
    def run(self, stories: list[BenchStory], conditions: list[str]) -> None:
        import torch

        self.check(stories)
        done = {(r["story"], r["condition"]) for r in self.records()}
        groups = [[c for c in g if c in conditions] for g in GROUPS]
        groups += [[c for c in conditions if not any(c in g for g in GROUPS)]]
        total = sum(1 for s in stories for c in conditions if (s.name, c) not in done)
        self.log(f"{len(stories)} stories x {len(conditions)} conditions: {total} (story, condition) to make, "
                 f"{len(done)} already in {self.records_file}")
        start, made = time.perf_counter(), 0
        with torch.inference_mode():
            for group in [g for g in groups if g]:
                for first in range(0, len(stories), self.batch):
                    chunk = stories[first:first + self.batch]
                    todo = {c: [s for s in chunk if (s.name, c) not in done] for c in group}
                    todo = {c: ss for c, ss in todo.items() if ss}
                    if not todo:
                        continue
                    made += self._chunk(chunk, todo)
                    elapsed = time.perf_counter() - start
                    self.log(f"[{time.strftime('%H:%M:%S')}] group {group}: stories {first + 1}-{first + len(chunk)} "
                             f"done; {made}/{total} in {elapsed / 60:.1f} min")

    def _chunk(self, chunk: list[BenchStory], todo: dict[str, list[BenchStory]]) -> int:
        from ..method.controller import VideoState
        from ..method.identity import CachedIdentity
        from ..method.plan import PLAIN
        from ..modes import StoryRun

        pipe = self.pipe
        needed = {s.name for ss in todo.values() for s in ss}
        work = {}
        for bs in chunk:
            if bs.name not in needed:
                continue
            story = bs.story()
            settings = self.base.for_story(story)
            config = self.config.replace(shared_background=self.config.shared_background and story.shared_background)
            run = StoryRun(pipe, story, settings, config, progress=False)
            work[bs.name] = {"bench": bs, "story": story, "settings": settings, "config": config, "run": run,
                             "identity": run.video("identity", None),
                             "shots": [run.video("shot", i) for i in range(len(story.shots))]}
        with_bachvid = any(CONDITIONS[c].bachvid for c in todo)
        # The identity: a cache-mode identity pass when BachVid conditions are due, else plain (or on disk).
        items = []
        for name, w in work.items():
            frames = _load_frames(self.out, name, "identity")
            if with_bachvid:
                w["record"] = CachedIdentity(text_length=pipe.backbone.text_length)
                state = VideoState(target=w["record"], mask_reader=w["run"]._reader(w["identity"]))
                items.append((w["identity"].denoised(), state, w["run"].maker.identity_plans(), ("identity", name)))
            elif frames is None:
                items.append((w["identity"].denoised(), VideoState(), lambda i: PLAIN, ("identity", name)))
            else:
                w["identity_frames"] = frames
        if items:
            after = [[] for _ in items]  # each identity's latent after every step (background locks follow it)
            latents, _ = self._denoise(items, on_step_end=lambda i, lats: [a.append(x) for a, x in zip(after, lats)])
            for (_, state, _, (_, name)), lat, trajectory in zip(items, latents, after):
                w = work[name]
                w["identity_after"] = trajectory
                w["identity_frames"] = w["run"].frames(lat)
                w["identity_latents"] = lat
                if with_bachvid:
                    w["identity_fg"] = state.mask_reader.mask(w["run"].grid, w["config"].mask_open_kernel,
                                                              w["config"].mask_rule)
                    w["record"].foreground = w["identity_fg"]
                _save_frames(self.out, name, "identity", w["identity_frames"])
        for name, w in work.items():
            self.plain[self.plain_key(w["identity"].spans.prompt, w["identity"].seed, w["settings"])] = \
                w["identity_frames"]
            own = _load_frames(self.out, name, "vanilla-own")
            if own is not None:
                for v, f in zip(w["shots"], own):
                    self.plain[self.plain_key(v.spans.prompt, v.seed, w["settings"])] = f
        made = 0
        for cname, stories in todo.items():
            condition = CONDITIONS[cname]
            ws = [work[s.name] for s in stories]
            if condition.bachvid:
                outs = self._bachvid(condition, ws)
            else:
                outs = self._vanilla(condition, ws)
            for w, (frames, seconds, extra) in zip(ws, outs):
                self._finish(w, cname, frames, seconds, extra)
                made += 1
        return made

    def _denoise(self, items, run_steps=None, on_step_end=None):
        """items: (BatchVideo, VideoState, plans, tag); one batched denoising call. (latents, seconds)."""
        s = self.base
        start = time.perf_counter()

        def step_states(i):
            for _, state, plans, _ in items:
                state.plan = plans(i)
            return [(state, None) for _, state, _, _ in items]

        latents = self.pipe.backbone.denoise(
            [v for v, _, _, _ in items], num_frames=s.num_frames, height=s.height, width=s.width,
            num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale, step_states=step_states,
            run_steps=run_steps, on_step_end=on_step_end)
        return latents, time.perf_counter() - start

    def _vanilla(self, condition: Condition, ws: list[dict]):
        from ..backbones import BatchVideo
        from ..method.controller import VideoState
        from ..method.plan import PLAIN

        items = []
        for w in ws:
            for v in w["shots"]:
                seed = v.seed if condition.seeds == "own" else w["identity"].seed
                items.append((BatchVideo(v.embeds, v.negative, seed=seed), VideoState(), lambda i: PLAIN, None))
        start = time.perf_counter()
        latents, _ = self._denoise(items)
        frames = [ws[0]["run"].frames(lat) for lat in latents]
        seconds = (time.perf_counter() - start) / len(items)
        outs, k = [], 0
        for w in ws:
            n = len(w["shots"])
            outs.append((np.stack(frames[k:k + n]), seconds, {}))
            if condition.seeds == "own":
                for v, f in zip(w["shots"], frames[k:k + n]):
                    self.plain[self.plain_key(v.spans.prompt, v.seed, w["settings"])] = f
            k += n
        return outs

    def _readings(self, w: dict, condition: Condition):
        from .oracle import TruthReadings

        truth = TruthReadings(self.pipe, w["settings"], masks=condition.oracle_masks,
                              matches=condition.oracle_matches, cache=self.plain)
        fg = truth.identity_mask(w["identity"], w["identity_fg"], w["identity_latents"], lambda: w["identity_frames"])
        return truth, fg

    def _bachvid(self, condition: Condition, ws: list[dict]):
        from ..method.controller import VideoState
        from ..method.latent_lock import LatentLocks, agreeing_tokens, shot_locks
        from ..method.match import MatchAccumulator
        from ..modes import StoryRun

        per = []
        for w in ws:
            config = w["config"].replace(**condition.changes)
            config = config.replace(shared_background=config.shared_background and w["story"].shared_background)
            run = StoryRun(self.pipe, w["story"], w["settings"], config, progress=False)
            truth, identity_fg = self._readings(w, condition) if condition.oracle else (None, w["identity_fg"])
            per.append({"w": w, "config": config, "run": run, "truth": truth, "identity_fg": identity_fg,
                        "prerun": condition.prerun(config.shared_background), "condition": condition})
        # Pre-runs (kept per story and kind, shared between conditions of this chunk).
        missing = [p for p in per if p["prerun"] not in p["w"].setdefault("preruns", {})]
        prerun_seconds = {}
        if missing:
            items, owners = [], []
            for p in missing:
                run = p["run"]
                plans = run.maker.prerun_plans(p["identity_fg"])
                for v in p["w"]["shots"]:
                    state = VideoState(source=p["w"]["record"], mask_reader=run._reader(v),
                                       matcher=MatchAccumulator(p["config"].chunk_size))
                    items.append((p["condition"].shot_video(v, p["w"]["identity"]), state, plans, None))
                    owners.append(p)
            steps = missing[0]["run"].maker.schedule.prerun_steps
            ends, seconds = self._denoise(items, run_steps=steps)
            for p in missing:
                p["w"]["preruns"][p["prerun"]] = {"readings": [], "ends": [], "steps": steps,
                                                  "seconds": seconds / len(items)}
            for (_, state, _, _), p, end in zip(items, owners, ends):
                read = (state.mask_reader.mask(p["run"].grid, p["config"].mask_open_kernel, p["config"].mask_rule),
                        state.matcher.result())
                p["w"]["preruns"][p["prerun"]]["readings"].append(read)
                p["w"]["preruns"][p["prerun"]]["ends"].append(end)
        items, locks = [], {}
        for p in per:
            pre = p["w"]["preruns"][p["prerun"]]
            readings = pre["readings"]
            if p["truth"] is not None:
                readings = [p["truth"].shot(v, fg, m, p["identity_fg"])
                            for v, (fg, m) in zip(p["w"]["shots"], readings)]
            p["readings"] = readings
            prerun_seconds[id(p)] = pre["seconds"]
            for v, (fg, matches), end in zip(p["w"]["shots"], readings, pre["ends"]):
                agreeing = None  # other noise agrees nowhere: no background lock
                if p["run"].agreement_lock and condition.seeds == "identity":
                    agreeing = agreeing_tokens(end, p["w"]["identity_after"][pre["steps"] - 1], self.pipe.backbone,
                                               p["config"].background_lock_agreement)
                shot = shot_locks(p["config"], p["identity_fg"], fg, matches, self.base.num_inference_steps, agreeing)
                if shot:
                    locks[len(items)] = (shot, lambda i, _, after=p["w"]["identity_after"]: after[i])
                items.append((condition.shot_video(v, p["w"]["identity"]), VideoState(source=p["w"]["record"]),
                              p["run"].maker.shot_plans(p["identity_fg"], fg, matches), None))
        start = time.perf_counter()
        latents, _ = self._denoise(items, on_step_end=LatentLocks(locks, self.pipe.backbone) or None)
        frames = [per[0]["run"].frames(lat) for lat in latents]
        seconds = (time.perf_counter() - start) / len(items)
        outs, k = [], 0
        for p in per:
            n = len(p["w"]["shots"])
            extra = {"shot_masks": [fg for fg, _ in p["readings"]],
                     "foreground_pairs": [int(m.foreground_pairs(fg, p["identity_fg"], p["config"].match_threshold)[0]
                                              .numel()) for fg, m in p["readings"]],
                     "oracle_log": p["truth"].log if p["truth"] is not None else None}
            outs.append((np.stack(frames[k:k + n]), seconds + prerun_seconds[id(p)], extra))
            k += n
        return outs

    def _finish(self, w: dict, cname: str, frames: np.ndarray, seconds: float, extra: dict) -> None:
        from .evaluate import iou, score_clip
        from .shot_metrics import belt_colour

        bs = w["bench"]
        _save_frames(self.out, bs.name, cname, frames)
        ident = score_clip(w["identity_frames"])
        belt = belt_colour(w["identity_frames"], ident.mask, ident.character_kind)
        shots = []
        for i, (f, action) in enumerate(zip(frames, bs.actions)):
            row = compare(w["identity_frames"], f, action, bs.shared, ident, belt)
            row["seconds"] = seconds
            if extra.get("shot_masks") is not None:
                mask = extra["shot_masks"][i].cpu().numpy().astype(bool)
                row["mask_iou"] = iou(mask, world.latent_token_mask(score_clip(f).mask))
                row["foreground_pairs"] = extra["foreground_pairs"][i]
            shots.append(row)
        record = {"story": bs.name, "condition": cname, "spec": bs.spec(), "fingerprint": self.fingerprint,
                  "shots": shots}
        if extra.get("oracle_log") is not None:
            record["oracle_log"] = extra["oracle_log"]
        self._append(record)


def with_new_knobs(fingerprint: dict) -> dict:
    """A record's fingerprint with the BachVid knobs added since it was made, at their defaults: a
    record made before a knob existed was made with what the knob's default does (knobs beyond the
    paper default to off), so it still counts for a config that leaves the knob there."""
    from ..method.config import BachVidConfig

    defaults = _jsonable(BachVidConfig().to_dict())
    config = fingerprint.get("config")
    if not isinstance(config, dict):
        return fingerprint
    return {**fingerprint, "config": {**{k: v for k, v in defaults.items() if k not in config}, **config}}


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda x: list(x) if isinstance(x, (tuple, set)) else str(x)))


# Summaries ---------------------------------------------------------------------------------------------------

def story_values(records: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """condition -> metric -> story -> the story's mean over its shots (NaN where undefined)."""
    out: dict = {}
    for r in records:
        for metric in (*METRICS, "seconds", "mask_iou"):
            values = [s.get(metric) for s in r["shots"]]
            values = [v for v in values if v is not None]
            out.setdefault(r["condition"], {}).setdefault(metric, {})[r["story"]] = \
                float(np.mean(values)) if values else float("nan")
    return out


def summarize(records: list[dict], stories: list[BenchStory], conditions: list[str], resamples: int = 2000,
              seed: int = 0) -> dict:
    values = story_values(records)
    made = {r["story"] for r in records}
    stories = [s for s in stories if s.name in made]
    names = [s.name for s in stories]
    summary = {"stories": len(stories), "shared_stories": sum(s.shared for s in stories),
               "resamples": resamples, "bootstrap_seed": seed, "conditions": {}}
    for c in conditions:
        if c not in values:
            continue
        entry = {"label": CONDITIONS[c].label, "metrics": {}}
        reference = option_reference(c, records) if c in OPTIONS else CONDITIONS[c].compared_with
        if c in OPTIONS or reference:
            entry["compared_with"] = reference
        for metric in (*METRICS, "seconds", "mask_iou"):
            column = np.array([values[c].get(metric, {}).get(n, np.nan) for n in names])
            finite = column[np.isfinite(column)]
            m = {"mean": float(finite.mean()) if len(finite) else None, "n": int(len(finite))}
            for base in BASELINES:
                if base in values and metric in values[base]:
                    other = np.array([values[base][metric].get(n, np.nan) for n in names])
                    m[f"vs {base}"] = paired_bootstrap(column, other, resamples, seed) if c != base else None
            if (c in PARTS or c in TRUTHS) and "bachvid" in values and metric in values["bachvid"]:
                full = np.array([values["bachvid"][metric].get(n, np.nan) for n in names])
                with_, without = (full, column) if c in PARTS else (column, full)
                m["part adds"] = paired_bootstrap(with_, without, resamples, seed)
            elif reference in values and metric in values[reference]:
                without = np.array([values[reference][metric].get(n, np.nan) for n in names])
                m["part adds"] = paired_bootstrap(column, without, resamples, seed)
            entry["metrics"][metric] = m
        oracle = [e for r in records if r["condition"] == c for e in r.get("oracle_log") or []]
        if oracle:
            entry["attention_readings"] = {
                "identity_mask_iou": _mean([e["mask_iou"] for e in oracle if e["role"] == "identity"]),
                "shot_mask_iou": _mean([e["mask_iou"] for e in oracle if e["role"] == "shot"]),
                "shot_match_accuracy": _mean([e["match_accuracy"] for e in oracle if e["role"] == "shot"]),
            }
        summary["conditions"][c] = entry
    return summary


def custom_condition(text: str) -> Condition:
    """'NAME:knob=value;...' (`--condition`) -> a BachVid condition on the model's config with those
    knobs changed, compared with the same run without them (bachvid-idseed with `seeds=identity`, else
    bachvid). Keys beside the config's knobs: seeds (own or identity), oracle_masks, oracle_matches."""
    from ..method.config import BachVidConfig, parse_knob

    name, _, spec = text.partition(":")
    name = name.strip()
    if not name or not spec or name in BUILT_IN:
        raise ValueError(f"--condition {text!r}: expected a new NAME:knob=value;... (built-in names are taken)")
    changes, fields = {}, {"seeds": "own"}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValueError(f"--condition {text!r}: {part!r} is not knob=value")
        if key == "seeds":
            if value not in ("own", "identity"):
                raise ValueError(f"--condition {text!r}: seeds is 'own' or 'identity', not {value!r}")
            fields["seeds"] = value
        elif key in ("oracle_masks", "oracle_matches"):
            fields[key] = value.lower() in ("1", "true", "yes")
        else:
            knob, parsed = parse_knob(part)
            changes[knob] = parsed
    BachVidConfig().replace(**changes)  # a bad value fails here, before any generation
    reference = "bachvid-idseed" if fields["seeds"] == "identity" else "bachvid"
    knobs = ", ".join(f"{k}={v}" for k, v in changes.items()) or "the model's config"
    label = f"BachVid, {knobs}" + (", shots on the identity's seed" if fields["seeds"] == "identity" else "")
    label += "".join(f", true {k[7:]}" for k in ("oracle_masks", "oracle_matches") if fields.get(k))
    return Condition(name, label, changes=changes, compared_with=reference, **fields)


def run_config(records: list[dict], condition: str) -> dict | None:
    """The BachVid config a condition ran with: its records' model config (`with_new_knobs`) and the
    condition's changes."""
    record = next((r for r in records if r["condition"] == condition and "fingerprint" in r), None)
    if record is None:
        return None
    return {**with_new_knobs(record["fingerprint"]).get("config", {}), **_jsonable(CONDITIONS[condition].changes)}


def option_reference(option: str, records: list[dict]) -> str | None:
    """What an option beyond the paper is compared with: the run on the same seeds, without oracles,
    whose config is the option's with the option's own knobs back at their defaults (None: not run)."""
    from ..method.config import BachVidConfig

    mine = run_config(records, option)
    if mine is None:
        return None
    defaults = _jsonable(BachVidConfig().to_dict())
    want = {**mine, **{k: defaults[k] for k in CONDITIONS[option].changes}}
    for c in dict.fromkeys(r["condition"] for r in records):
        other = CONDITIONS.get(c)
        if (c != option and other is not None and other.bachvid and not other.oracle
                and other.seeds == CONDITIONS[option].seeds and run_config(records, c) == want):
            return c
    return None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def format_value(metric: str, x: float | None) -> str:
    if x is None:
        return "-"
    if metric in ("belt_kept", "action_right"):
        return f"{100 * x:.0f}%"
    if metric == "background_psnr":
        return f"{x:.1f}"
    if metric == "seconds":
        return f"{x:.1f}"
    return f"{x:.3f}"


def format_delta(metric: str, d: dict | None) -> str:
    if not d:
        return ""
    scale, unit = (100, " pt") if metric in ("belt_kept", "action_right") else (1, "")
    digits = 1 if metric in ("background_psnr", "belt_kept", "action_right", "seconds") else 3
    text = f"{scale * d['mean']:+.{digits}f} [{scale * d['low']:+.{digits}f}, {scale * d['high']:+.{digits}f}]{unit}"
    return f"**{text}**" if d["significant"] else text


def markdown_table(summary: dict) -> str:
    metrics = (*METRICS, "seconds")
    head = ["condition"]
    for m in METRICS:
        head += [METRIC_LABELS[m], "vs identity's seed", "vs own seeds"]
    head.append(METRIC_LABELS["seconds"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, entry in summary["conditions"].items():
        row = [entry["label"]]
        for m in metrics:
            x = entry["metrics"].get(m, {})
            row.append(format_value(m, x.get("mean")))
            if m != "seconds":
                row += [format_delta(m, x.get("vs vanilla-idseed")), format_delta(m, x.get("vs vanilla-own"))]
        lines.append("| " + " | ".join(row) + " |")
    n = summary["stories"]
    notes = [
        "",
        f"{n} stories ({summary['shared_stories']} shared background, {n - summary['shared_stories']} switched), "
        "identity + shots each; a story's value is the mean over its shots. Differences: condition minus baseline, "
        f"paired over stories, mean [95% bootstrap CI, {summary['resamples']} resamples]; **bold**: the CI excludes 0. "
        "Background PSNR on shared-background stories only; belt colour on stories whose identity's belt is readable "
        "(n below). Seconds per shot: batched generation on the machine that ran it (identity not counted).",
    ]
    ns = {m: max((e["metrics"].get(m, {}).get("n", 0) for e in summary["conditions"].values()), default=0)
          for m in METRICS}
    notes.append("Stories scored per metric: " + ", ".join(f"{METRIC_LABELS[m]} {ns[m]}" for m in METRICS) + ".")
    parts = [c for c in summary["conditions"]
             if c in PARTS or c in TRUTHS or c in OPTIONS or CONDITIONS[c].compared_with]
    if parts:
        notes += ["", "| what it adds to BachVid (own seeds), paired: a part (BachVid minus BachVid with it off), "
                      "the truth (the oracle run minus BachVid), an option beyond the paper (the run with it minus "
                      "the same run without it) | "
                      + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for c in sorted(parts, key=lambda c: (c in TRUTHS, c in OPTIONS)):
            cells = [format_delta(m, summary["conditions"][c]["metrics"].get(m, {}).get("part adds")) or "-"
                     for m in METRICS]
            label = (PARTS.get(c) or TRUTHS.get(c)
                     or f"{OPTIONS.get(c, CONDITIONS[c].label)} (against {summary['conditions'][c].get('compared_with')})")
            notes.append(f"| {label} | " + " | ".join(cells) + " |")
    readings = {c: e["attention_readings"] for c, e in summary["conditions"].items() if "attention_readings" in e}
    if readings:
        notes += ["", "| attention readings vs truth (logged in oracle runs) | identity mask IoU | shot mask IoU | "
                      "shot match accuracy (within 1 token) |", "|---|---|---|---|"]
        for c, r in readings.items():
            notes.append(f"| {summary['conditions'][c]['label']} | " + " | ".join(
                "-" if r[k] is None else f"{r[k]:.2f}" for k in ("identity_mask_iou", "shot_mask_iou",
                                                                  "shot_match_accuracy")) + " |")
    mask = {c: e["metrics"].get("mask_iou", {}).get("mean") for c, e in summary["conditions"].items()}
    mask = {c: v for c, v in mask.items() if v is not None}
    if mask:
        notes += ["", "Shot mask used vs the evaluator's mask of the generated shot (token IoU): " + ", ".join(
            f"{summary['conditions'][c]['label']} {v:.2f}" for c, v in mask.items()) + "."]
    return "\n".join(lines + notes) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = [c for c in summary["conditions"] if c not in BASELINES]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 0.45 * len(conditions) + 1.8),
                             sharey=True)
    y = np.arange(len(conditions))
    for ax, metric in zip(axes, METRICS):
        scale = 100 if metric in ("belt_kept", "action_right") else 1
        for k, (base, colour) in enumerate((("vanilla-idseed", "tab:blue"), ("vanilla-own", "tab:gray"))):
            ds = [summary["conditions"][c]["metrics"].get(metric, {}).get(f"vs {base}") for c in conditions]
            mean = np.array([scale * d["mean"] if d else np.nan for d in ds])
            err = np.array([[scale * (d["mean"] - d["low"]), scale * (d["high"] - d["mean"])] if d else [0, 0]
                            for d in ds]).T
            ax.barh(y + (k - 0.5) * 0.38, mean, height=0.36, xerr=err, color=colour, capsize=2,
                    label=f"vs {'identity' if base == 'vanilla-idseed' else 'own'} seed")
        ax.axvline(0, color="black", lw=0.8)
        unit = " (points)" if scale == 100 else ""
        better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        ax.set_title(f"{METRIC_LABELS[metric]}{unit}\n({better} is better)", fontsize=9)
    axes[0].set_yticks(y, [summary["conditions"][c]["label"] for c in conditions], fontsize=8)
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Difference to the baselines, mean and 95% bootstrap CI over {summary['stories']} stories",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sheet(out: Path, stories: list[BenchStory], count: int, path: Path) -> bool:
    """identity | vanilla identity's seed shots | BachVid shots, one row per story (first `count`
    stories with those made; BachVid: own seeds, else on the identity's seed), and under it a row per
    option beyond the paper that ran (e.g. "+ soft background lock"), its shots under BachVid's."""
    from ..io.outputs import contact_sheet

    rows, shown = [], 0
    for bs in stories:
        ident = _load_frames(out, bs.name, "identity")
        same = _load_frames(out, bs.name, "vanilla-idseed")
        made = next(((c, f) for c in ("bachvid", "bachvid-idseed")
                     if (f := _load_frames(out, bs.name, c)) is not None), None)
        if ident is None or same is None or made is None:
            continue
        name, ours = made
        bg = "shared" if bs.shared else "switched"
        seeds = "" if name == "bachvid" else " (identity's seed)"
        rows.append((f"{bs.name} {bs.character} {bs.background} ({bg}): identity | same seed: "
                     f"{', '.join(bs.actions)} | BachVid{seeds}: {', '.join(bs.actions)}",
                     np.stack([ident, *same, *ours])))
        blank = np.full_like(ident, 255)
        for option, text in OPTIONS.items():
            extra = _load_frames(out, bs.name, option)
            if extra is not None:
                rows.append((f"  + {text.split(',')[0]}: {', '.join(bs.actions)}",
                             np.stack([blank, *[blank] * len(same), *extra])))
        shown += 1
        if shown >= count:
            break
    if not rows:
        return False
    contact_sheet(path, rows, cell=128)
    return True


def rescore(out: Path, stories: list[BenchStory]) -> int:
    """Score every record's shots again from its saved videos (after a change to the metrics),
    keeping what only generation knows (seconds, masks used, matched pairs, oracle logs);
    records.jsonl is rewritten atomically. Returns the records rescored."""
    from .evaluate import score_clip
    from .shot_metrics import belt_colour

    specs = {s.name: s for s in stories}
    records, idents = _read_records(out), {}
    count = 0
    for r in records:
        bs = specs.get(r["story"])
        frames = _load_frames(out, r["story"], r["condition"])
        if bs is None or frames is None:
            continue
        if r["story"] not in idents:
            ident_frames = _load_frames(out, r["story"], "identity")
            score = score_clip(ident_frames)
            idents[r["story"]] = (ident_frames, score, belt_colour(ident_frames, score.mask, score.character_kind))
        ident_frames, score, belt = idents[r["story"]]
        for shot, f, action in zip(r["shots"], frames, bs.actions):
            kept = {k: shot[k] for k in ("seconds", "mask_iou", "foreground_pairs") if k in shot}
            shot.clear()
            shot.update(compare(ident_frames, f, action, bs.shared, score, belt), **kept)
        count += 1
    path = out / "records.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
    return count


def report(out: Path, stories: list[BenchStory], conditions: list[str], resamples: int = 2000,
           sheet_stories: int = 4) -> dict:
    bench_records = [r for r in _read_records(out) if r["story"] in {s.name for s in stories}
                     and r["condition"] in conditions]
    summary = summarize(bench_records, stories, conditions, resamples)
    summary["story_list"] = [{"name": s.name, **s.spec()} for s in stories]
    summary["complete"] = {c: sum(1 for r in bench_records if r["condition"] == c) for c in conditions}
    table = markdown_table(summary)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    if any(c not in BASELINES for c in summary["conditions"]):
        plot(summary, out / "plot.png")
    sheet(out, stories, sheet_stories, out / "sheet.png")
    return summary


def _read_records(out: Path) -> list[dict]:
    path = out / "records.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Command line --------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--model", default=None, help="toy-world model folder (default: the shipped one)")
    parser.add_argument("--stories", type=int, default=32)
    parser.add_argument("--shots", type=int, default=3, help="shots per story (1-4)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help=f"comma-separated, from {', '.join(CONDITIONS)}")
    parser.add_argument("--condition", action="append", default=[], metavar="NAME:knob=value;...",
                        help="a condition of your own, run after the named ones and compared with the same run "
                             "without its knobs, e.g. 'lock1:character_latents_until=1;seeds=identity' (repeatable; "
                             "give it again with --report-only)")
    parser.add_argument("--out", default="runs/results", help="folder: records.jsonl (resume), videos/, table.md, "
                                                              "results.json, plot.png, sheet.png")
    parser.add_argument("--steps", type=int, default=None, help="override the model's default steps (tests)")
    parser.add_argument("--batch", type=int, default=4, help="stories whose shots denoise in one batch")
    parser.add_argument("--bench-seed", type=int, default=BENCH_SEED, help="the stories' seed stream")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--sheet-stories", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--report-only", action="store_true", help="only summarize what records.jsonl holds")
    parser.add_argument("--rescore", action="store_true",
                        help="score the saved videos again (after a change to the metrics) before the report")
    parser.set_defaults(run=run)


def run(args) -> int:
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    for text in args.condition:
        try:
            custom = custom_condition(text)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        CONDITIONS[custom.name] = custom
        conditions.append(custom.name)
        if custom.compared_with not in conditions:
            print(f"note: {custom.name} is compared with {custom.compared_with}, which runs too", file=sys.stderr)
            conditions.insert(len(conditions) - 1, custom.compared_with)
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        print(f"error: unknown condition(s) {', '.join(unknown)}; valid: {', '.join(CONDITIONS)}", file=sys.stderr)
        return 2
    if not any(c in BASELINES for c in conditions):
        print("error: --conditions needs a baseline (vanilla-idseed or vanilla-own)", file=sys.stderr)
        return 2
    if any(CONDITIONS[c].oracle for c in conditions) and "vanilla-own" not in conditions:
        print("note: oracle conditions without vanilla-own generate the plain shots they need themselves",
              file=sys.stderr)
    stories = benchmark_stories(args.stories, args.shots, args.bench_seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        import torch

        from ..pipeline import BachVidPipeline

        if args.threads:
            torch.set_num_threads(args.threads)
        quiet_loading_bars_off_terminal()
        pipe = BachVidPipeline.from_pretrained(args.model)
        pipe.pipe.set_progress_bar_config(disable=True)
        settings = pipe.default_settings()
        if args.steps:
            settings = replace(settings, num_inference_steps=args.steps)
        Bench(pipe, out, settings, pipe.default_config(), batch=args.batch,
              log=lambda m: print(m, flush=True)).run(stories, conditions)
    if args.rescore:
        print(f"rescored {rescore(out, stories)} records from {out / 'videos'}")
    summary = report(out, stories, conditions, args.resamples, args.sheet_stories)
    print(markdown_table(summary))
    print(f"table.md, results.json, plot.png, sheet.png: {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.results",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.description = __doc__
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
