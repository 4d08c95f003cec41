"""Why does BachVid's injection do so little on the toy model? Separated with ground truth.

For toy stories (identity "stands still", three shots, shared background), every shot is made
under a set of *conditions*: two vanilla baselines (own seed per shot; the identity's seed for
every shot, "use the same prompt and seed"), BachVid as shipped, BachVid with oracle masks and/or
oracle matches (`oracle.TruthReadings`), and injection-strength variants (a logit bias on the
injected keys, more vital layers, injection to the last step), plus attributions (token merge
off, background injection off) and any `--condition NAME:knob=value;...` given.

Per shot, from pixels (the toy evaluator; identity and shot of the same run):
- background PSNR and mean absolute error to the identity on pixels that are background in both;
- the character's colour-histogram distance to the identity's (1 - intersection), whether the
  identity's belt colour (`accessory_of`) is still there, whether the character kind and the
  action asked for are read back;
- for BachVid runs: IoU of the attention-read mask and accuracy of the attention-read matches
  against the truth (`TruthReadings.log`), and the attention mass that background and
  foreground queries put on the injected identity keys per (step, vital layer) (`MassProbe`), and
  where that attention goes in the identity (`injected_spread`: near the query's own place, or
  spread over the identity's tokens like a uniform average);
- for conditions marked `x0`: the background error of the *predicted x0* (the scheduler's
  `pred_original_sample`, decoded by the VAE) at several steps, to the identity's final video.

Rows go to `OUT/rows-*.jsonl` (resumable per story and condition; `--shard i/k` splits the
stories over processes); `--report` reads every rows file in OUT and writes `table.md`,
`belt.md`, `spread.md`, `summary.json` and PNGs (attention-mass heatmaps, x0 error curves). Differences to a reference
condition get a paired bootstrap CI over stories.

    python -m bachvid.toy.diagnose --stories 16 --seed 7000 --out runs/diagnosis --shard 0/2
    python -m bachvid.toy.diagnose --out runs/diagnosis --report
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..io.story import Shot, Story
from ..io.terminal import quiet_loading_bars_off_terminal
from . import world
from .consistency import colour_histogram
from .evaluate import score_clip
from .stats import paired_bootstrap_by_key

BASELINE = "vanilla_identity_seed"
X0_FRACTIONS = (0.1, 0.3, 0.6)  # plus the final video (step = number of steps)
ACCESSORIES = np.array([(30, 30, 30), (250, 200, 0), (0, 120, 40), (240, 120, 160)], np.float32)  # world.render_clip
MOVING = ("left", "jump", "closer", "right")


@dataclass(frozen=True)
class Condition:
    name: str
    label: str
    kind: str = "bachvid"  # "vanilla_own", "vanilla_identity_seed" or "bachvid"
    changes: tuple = ()  # BachVidConfig changes, (knob, value) pairs; vital_layers "all": every layer
    oracle_masks: bool | str = False  # "identity": only the identity's mask is the truth
    oracle_matches: bool = False
    identity_seed: bool = False  # shots use the identity's seed (not a config knob: a story choice)
    x0: bool = False  # decode the predicted x0 at X0_FRACTIONS

    def config(self, pipe):
        changes = dict(self.changes)
        if changes.get("vital_layers") == "all":
            changes["vital_layers"] = tuple(range(pipe.backbone.num_layers))
        return pipe.default_config(**changes)


STRONG = (("injected_logit_bias", 3.0), ("vital_layers", "all"), ("inject_end", 1.0))
CONDITIONS = {c.name: c for c in (
    Condition("vanilla_own", "vanilla, own seed per shot", kind="vanilla_own"),
    Condition(BASELINE, "vanilla, the identity's seed", kind=BASELINE, x0=True),
    Condition("bachvid", "BachVid as shipped (attention masks + matches)", x0=True),
    Condition("oracle_masks", "oracle masks", oracle_masks=True),
    Condition("oracle_matches", "oracle matches", oracle_matches=True),
    Condition("oracle_both", "oracle masks + matches", oracle_masks=True, oracle_matches=True),
    Condition("carried_masks", "shot masks carried from the identity's by matches (shot_mask matches)",
              changes=(("shot_mask", "matches"),)),
    Condition("oracle_identity_mask", "true identity mask, carried into shots by matches",
              changes=(("shot_mask", "matches"),), oracle_masks="identity"),
    Condition("bias1", "injected_logit_bias 1", changes=(("injected_logit_bias", 1.0),)),
    Condition("bias2", "injected_logit_bias 2", changes=(("injected_logit_bias", 2.0),)),
    Condition("bias3", "injected_logit_bias 3", changes=(("injected_logit_bias", 3.0),)),
    Condition("vital_all", "all 8 layers vital", changes=(("vital_layers", "all"),)),
    Condition("inject_end1", "inject_end 1.0", changes=(("inject_end", 1.0),)),
    Condition("strong", "bias 3 + all layers + inject_end 1.0", changes=STRONG, x0=True),
    Condition("oracle_both_strong", "oracles + bias 3 + all layers + inject_end 1.0", changes=STRONG,
              oracle_masks=True, oracle_matches=True),
    Condition("merge_off", "token merge off", changes=(("token_merge", False),)),
    Condition("fg_injection_off", "foreground injection off", changes=(("foreground_injection", False),)),
    Condition("bg_injection_off", "background injection off", changes=(("shared_background", False),)),
    Condition("bachvid_identity_seed", "BachVid, shots on the identity's seed", identity_seed=True),
)}
DEFAULT_CONDITIONS = tuple(CONDITIONS)


def parse_condition(text: str) -> Condition:
    """'NAME:knob=value;knob=value' -> a Condition; values are JSON (lists become tuples); the keys
    oracle_masks, oracle_matches, identity_seed and x0 set those fields (foreground_bias: the
    foreground_logit_bias knob, the name earlier diagnoses used);
    vital_layers=all."""
    name, _, spec = text.partition(":")
    changes, switches = [], {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--condition {text!r}: expected NAME:knob=value;...")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        parsed = tuple(parsed) if isinstance(parsed, list) else parsed
        if key == "oracle_masks" and parsed == "identity":
            switches[key] = parsed
        elif key in ("oracle_masks", "oracle_matches", "identity_seed", "x0"):
            switches[key] = bool(parsed)
        elif key == "foreground_bias":
            changes.append(("foreground_logit_bias", float(parsed)))
        else:
            changes.append((key, parsed))
    return Condition(name, spec or name, changes=tuple(changes), **switches)


# Stories ----------------------------------------------------------------------------------------

def diagnosis_stories(count: int, seed: int) -> list[Story]:
    """`count` shared-background stories from held-out combinations: the background and character
    of a held-out (background, character, action), identity "stands still", three moving shots (the
    combination's action first when it moves), a drawn seed."""
    _, held_out = world.split_combinations()
    rng = np.random.default_rng(seed)
    stories = []
    for i in range(count):
        b, c, a = held_out[rng.integers(len(held_out))]
        actions = ([a] if a != "stand" else []) + [x for x in ("left", "jump", "closer", "right") if x != a]
        shots = tuple(Shot(world.BACKGROUNDS[b], world.ACTIONS[x]) for x in actions[:3])
        stories.append(Story(name=f"dx-{seed}-{i:02d}", character=world.CHARACTERS[c],
                             identity=Shot(world.BACKGROUNDS[b], world.ACTIONS["stand"]), shots=shots,
                             seed=int(rng.integers(1 << 20))))
    return stories


def action_key(text: str) -> str:
    return {v: k for k, v in world.ACTIONS.items()}[text]


# Metrics ----------------------------------------------------------------------------------------

def accessory_of(frames: np.ndarray, mask: np.ndarray) -> int | None:
    """Which of the world's belt colours the character wears: the pixels of its belt band (body
    height 0.50-0.58 of the mask's box, per frame) vote for the nearest belt colour; None when no
    colour gets 15% of the band. Right on 60/60 rendered clips read through the evaluator's mask."""
    votes = np.zeros(len(ACCESSORIES))
    total = 0
    for f in range(len(frames)):
        ys, xs = np.nonzero(mask[f])
        if len(ys) < 20:
            continue
        y0, y1 = ys.min(), ys.max() + 1
        v = (np.arange(mask.shape[1]) + 0.5 - y0) / max(y1 - y0, 1)
        band = mask[f] & ((v > 0.5) & (v < 0.58))[:, None]
        pixels = frames[f][band].astype(np.float32)
        if not len(pixels):
            continue
        distance = ((pixels[:, None] - ACCESSORIES[None]) ** 2).sum(-1)
        near = distance.min(-1) < 60**2
        votes += np.bincount(distance.argmin(-1)[near], minlength=len(ACCESSORIES))
        total += len(pixels)
    if total == 0 or votes.max() < 0.15 * total:
        return None
    return int(votes.argmax())


def background_both(identity_score, shot_score) -> np.ndarray:
    return ~identity_score.mask & ~shot_score.mask


def background_error(identity_frames, frames, both) -> tuple[float, float]:
    """(mean absolute error, PSNR in dB) over `both` pixels."""
    diff = identity_frames.astype(np.float32) - frames.astype(np.float32)
    if not both.any():
        return float("nan"), float("nan")
    mse = float((diff**2)[both].mean())
    return float(np.abs(diff)[both].mean()), float(10 * np.log10(255.0**2 / max(mse, 1e-6)))


def belt_fields(identity_frames, shot_frames, ident, shot) -> dict:
    """The results table's palette-free belt reader (`shot_metrics.belt_colour`), kept apart from
    `accessory_of` so that a diagnosis can say why a belt is lost: unreadable in the shot
    (`shot_belt_read` 0) or read in another colour (`belt_distance` > BELT_MATCH)."""
    from .shot_metrics import BELT_MATCH, belt_colour, belt_distance

    identity_belt = belt_colour(identity_frames, ident.mask, ident.character_kind)
    if identity_belt is None:
        return {"belt_kept": None, "shot_belt_read": None, "belt_distance": None}
    shot_belt = belt_colour(shot_frames, shot.mask, ident.character_kind)
    distance = belt_distance(identity_belt, shot_belt)
    return {"belt_kept": float(distance is not None and distance <= BELT_MATCH),
            "shot_belt_read": float(shot_belt is not None), "belt_distance": distance}


def shot_metrics(identity_frames: np.ndarray, shot_frames: np.ndarray, action: str, identity_score=None):
    """(metrics row, the shot's ClipScore) of a shot against its identity video."""
    ident = identity_score or score_clip(identity_frames)
    shot = score_clip(shot_frames)
    both = background_both(ident, shot)
    mae, psnr = background_error(identity_frames, shot_frames, both)
    distance = 1.0 - float(np.minimum(colour_histogram(identity_frames, ident.mask),
                                      colour_histogram(shot_frames, shot.mask)).sum())
    id_acc = accessory_of(identity_frames, ident.mask)
    row = {"bg_psnr": psnr, "bg_mae": mae, "hist_distance": distance,
           "accessory_kept": None if id_acc is None else float(accessory_of(shot_frames, shot.mask) == id_acc),
           **belt_fields(identity_frames, shot_frames, ident, shot),
           "action_right": float(shot.action == action),
           "character_kept": float(shot.character_kind == ident.character_kind)}
    return row, shot


# Instruments ---------------------------------------------------------------------------------------

class X0Capture:
    """Keeps the scheduler's predicted x0 (`pred_original_sample`) of armed videos at some steps.

    Wraps the pipeline's scheduler.step (its copies too; `remove()` undoes it). `arm(videos,
    steps)` expects the next videos x steps calls to be one denoising run of `videos` videos in
    batch order (as the backbone steps them)."""

    def __init__(self, pipe, steps):
        self.scheduler = pipe.pipe.scheduler
        self.steps = set(steps)
        self.out: list[dict] | None = None
        self.videos = self.calls = self.total = 0
        # The scheduler's class is swapped for a subclass whose step reports here: unlike a patched
        # instance method, it follows the per-video deep copies that Wan's multistep UniPC needs.
        self.kind = type(self.scheduler)
        capture, kind = self, self.kind

        def step(scheduler, *args, **kwargs):
            result = kind.step(scheduler, *args, **kwargs)
            capture._seen(result, scheduler)
            return result

        self.scheduler.__class__ = type(f"Capturing{kind.__name__}", (kind,), {"step": step})

    def remove(self) -> None:
        self.scheduler.__class__ = self.kind

    def arm(self, videos: int, steps: int) -> None:
        self.videos, self.calls, self.total = videos, 0, videos * steps
        self.out = [{} for _ in range(videos)]

    def _seen(self, result, scheduler) -> None:
        if self.out is None or self.calls >= self.total:
            return
        step, video = divmod(self.calls, self.videos)
        if step in self.steps:
            x0 = self._predicted_x0(result, scheduler)
            self.out[video][step] = x0.detach().clone()
        self.calls += 1

    @staticmethod
    def _predicted_x0(result, scheduler):
        """DDIM (CogVideoX) returns x0 beside the sample; UniPC (Wan) returns none, but keeps its x0
        prediction (predict_x0: sample - sigma * velocity for flow matching) as its last model output."""
        if isinstance(result, tuple) and len(result) > 1:
            return result[1]
        if getattr(result, "pred_original_sample", None) is not None:
            return result.pred_original_sample
        if getattr(scheduler.config, "predict_x0", False) and getattr(scheduler, "model_outputs", None):
            return scheduler.model_outputs[-1]
        raise TypeError(f"{type(scheduler).__name__} gives no predicted x0 to decode")

    def take(self) -> list[dict]:
        out, self.out = self.out, None
        return out or []


def x0_errors(pipe, settings, predicted: dict, identity_frames, both) -> dict:
    import torch

    from .oracle import _to_uint8

    errors = {}
    with torch.inference_mode():
        for step, x0 in sorted(predicted.items()):
            frames = _to_uint8(pipe.backbone.decode(x0, settings.num_frames))
            errors[str(step)] = background_error(identity_frames, frames, both)[0]
    return errors


# Running one story --------------------------------------------------------------------------------

def vanilla(pipe, spans, seed, settings, capture: X0Capture | None):
    from ..method.plan import PLAIN

    if capture is not None:
        capture.arm(1, settings.num_inference_steps)
    out = pipe.denoise(spans, seed, settings, lambda i: PLAIN)
    return out.frames, (capture.take()[0] if capture is not None else {})


def run_story(pipe, story: Story, base_settings, conditions: list[Condition], done: set, write,
              keep=None) -> None:
    """Every condition not in `done` on one story; `write(row)` gets one row per shot; `keep(name,
    frames)`, when given, gets every video made (to look at what a number hides)."""
    import torch

    from ..modes import Instruments
    from .analyze import MassProbe
    from .oracle import TruthReadings, plain_key

    settings = base_settings.for_story(story)
    n = settings.num_inference_steps
    x0_steps = sorted({min(round(f * n), n - 1) for f in X0_FRACTIONS})
    capture = X0Capture(pipe, x0_steps)
    try:
        cache: dict = {}
        ident_spans = pipe.spans(story.identity.background, story.character, story.identity.action)
        ident_frames, _ = vanilla(pipe, ident_spans, story.seed, settings, None)
        cache[plain_key(ident_spans.prompt, story.seed, settings)] = ident_frames
        ident_score = score_clip(ident_frames)
        plain = {}  # (kind, shot) -> (frames, x0)
        wanted_vanilla = {c.kind for c in conditions if c.kind != "bachvid" and (story.name, c.name) not in done}
        wanted_vanilla |= {"vanilla_own"}  # the oracle's plain shots (cheap enough, and shared)
        if any(c.identity_seed for c in conditions):
            wanted_vanilla.add(BASELINE)
        for i, shot in enumerate(story.shots):
            spans = pipe.spans(shot.background, story.character, shot.action)
            for kind in sorted(wanted_vanilla):
                seed = story.shot_seed(i, story.seed) if kind == "vanilla_own" else story.seed
                want_x0 = any(c.kind == kind and c.x0 for c in conditions)
                frames, x0 = vanilla(pipe, spans, seed, settings, capture if want_x0 else None)
                plain[kind, i] = (frames, x0)
                cache[plain_key(spans.prompt, seed, settings)] = frames

        for condition in conditions:
            if (story.name, condition.name) in done:
                continue
            start = time.perf_counter()
            if condition.kind != "bachvid":
                for i, shot in enumerate(story.shots):
                    frames, x0 = plain[condition.kind, i]
                    row, shot_score = shot_metrics(ident_frames, frames, action_key(shot.action), ident_score)
                    if keep is not None:
                        keep(f"{story.name}-{condition.name}-{i}", frames)
                    if condition.x0:
                        row["x0_error"] = x0_errors(pipe, settings, x0, ident_frames,
                                                    background_both(ident_score, shot_score))
                        row["x0_error"][str(n)] = row["bg_mae"]
                    write({"story": story.name, "condition": condition.name, "shot": i,
                           "action": action_key(shot.action), **row})
                continue
            config = condition.config(pipe)
            shot_settings = replace(settings, shot_seeds="identity" if condition.identity_seed else "own")
            readings = TruthReadings(pipe, settings, masks=condition.oracle_masks, matches=condition.oracle_matches,
                                     cache=cache)
            masses = MassProbe(shared_background=config.shared_background,
                               grid=pipe.backbone.token_grid(settings.num_frames, settings.height, settings.width))
            armed = {"count": 0}

            def probe(video):
                if condition.x0 and armed["count"] % len(story.shots) == 0:
                    capture.arm(len(story.shots), n)
                armed["count"] += 1
                return masses(video)

            results = list(pipe.generate(story, shot_settings, config, identity_mode="cache",
                                         group=len(story.shots), progress=False,
                                         instruments=Instruments(readings=readings, probe=probe)))
            seconds = time.perf_counter() - start
            predicted = capture.take() if condition.x0 else []
            identity, shots = results[0], results[1:]
            id_score = score_clip(identity.frames)
            logs = [e for e in readings.log if e["role"] == "shot"]
            id_log = next((e for e in readings.log if e["role"] == "identity"), {})
            if keep is not None:
                keep(f"{story.name}-{condition.name}-identity", identity.frames)
            for k, (shot, result) in enumerate(zip(story.shots, shots)):
                row, shot_score = shot_metrics(identity.frames, result.frames, action_key(shot.action), id_score)
                if keep is not None:
                    keep(f"{story.name}-{condition.name}-{k}", result.frames)
                row.update(seconds_story=seconds, identity_mask_iou=id_log.get("mask_iou"),
                           mask_iou=logs[k].get("mask_iou") if k < len(logs) else None,
                           match_accuracy=logs[k].get("match_accuracy") if k < len(logs) else None,
                           foreground_pairs=result.stats.get("foreground_pairs"),
                           foreground_tokens=result.stats.get("foreground_tokens"),
                           identity_same=float(np.abs(identity.frames.astype(np.int16)
                                                      - ident_frames.astype(np.int16)).max()))
                row["mass"] = {kind: _str_keys(masses.video_table(k, kind)) for kind in masses.kinds} \
                    if k < len(masses.per_video) else {}
                row["mass_share"] = {kind: masses.share(k, kind) for kind in masses.kinds} \
                    if k < len(masses.per_video) else {}
                row["spread"] = {kind: {str(l): v for l, v in masses.spread(k, kind).items()} for kind in masses.kinds} \
                    if k < len(masses.spreads) else {}
                if condition.x0 and k < len(predicted):
                    row["x0_error"] = x0_errors(pipe, settings, predicted[k], identity.frames,
                                                background_both(id_score, shot_score))
                    row["x0_error"][str(n)] = row["bg_mae"]
                write({"story": story.name, "condition": condition.name, "shot": k,
                       "action": action_key(shot.action), **row})
            del results
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    finally:
        capture.remove()


def _str_keys(table: dict) -> dict:
    return {str(s): {str(l): v for l, v in row.items()} for s, row in table.items()}


# Aggregation ----------------------------------------------------------------------------------------

METRICS = ("bg_psnr", "bg_mae", "hist_distance", "accessory_kept", "belt_kept", "shot_belt_read", "action_right",
           "character_kept", "mask_iou", "match_accuracy")


def read_rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(out).glob("rows-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def story_means(rows: list[dict], condition: str, metric: str) -> dict[str, float]:
    """Per story: the mean of `metric` over its shots (shots without a value left out)."""
    per: dict[str, list] = {}
    for r in rows:
        if r["condition"] == condition and r.get(metric) is not None and np.isfinite(r[metric]):
            per.setdefault(r["story"], []).append(r[metric])
    return {s: float(np.mean(v)) for s, v in per.items()}


def mass_tables(rows: list[dict], condition: str) -> dict:
    """{kind: {step: {layer: mean over shots}}} of a condition's attention mass on injected keys."""
    merged: dict = {}
    for r in rows:
        if r["condition"] != condition:
            continue
        for kind, table in (r.get("mass") or {}).items():
            for s, row in table.items():
                for l, v in row.items():
                    if v is not None and np.isfinite(v):
                        merged.setdefault(kind, {}).setdefault(int(s), {}).setdefault(int(l), []).append(v)
    return {k: {s: {l: float(np.mean(v)) for l, v in sorted(row.items())} for s, row in sorted(t.items())}
            for k, t in merged.items()}


def mean_mass(rows, condition, kind) -> float | None:
    table = mass_tables(rows, condition).get(kind)
    if not table:
        return None
    return float(np.mean([v for row in table.values() for v in row.values()]))


def x0_curves(rows, condition) -> dict[int, float]:
    per: dict[int, list] = {}
    for r in rows:
        if r["condition"] == condition and r.get("x0_error"):
            for s, v in r["x0_error"].items():
                per.setdefault(int(s), []).append(v)
    return {s: float(np.mean(v)) for s, v in sorted(per.items())}


def complete_rows(rows: list[dict], conditions: list[str] | None = None) -> list[dict]:
    """The rows of the stories that have every condition (all of `conditions`, default: all seen)."""
    conditions = conditions or list(dict.fromkeys(r["condition"] for r in rows))
    have: dict[str, set] = {}
    for r in rows:
        have.setdefault(r["story"], set()).add(r["condition"])
    stories = {s for s, c in have.items() if set(conditions) <= c}
    return [r for r in rows if r["story"] in stories and r["condition"] in conditions]


def summarise(rows: list[dict], reference: str = BASELINE, second: str = "bachvid") -> dict:
    """Per condition, means over the stories that have every condition (per story: the mean of its
    shots), and paired bootstrap CIs against `reference` and `second`."""
    rows = complete_rows(rows)
    conditions = [c for c in dict.fromkeys(r["condition"] for r in rows)]
    summary = {}
    for c in conditions:
        entry = {"stories": len(story_means(rows, c, "bg_psnr")), "shots": sum(r["condition"] == c for r in rows),
                 "belt_stories": len(story_means(rows, c, "accessory_kept"))}
        for m in METRICS:
            means = story_means(rows, c, m)
            entry[m] = float(np.mean(list(means.values()))) if means else None
        for m in ("bg_psnr", "hist_distance", "accessory_kept"):
            for ref in (reference, second):
                if ref in conditions and ref != c:
                    entry[f"{m}_vs_{ref}"] = paired_bootstrap_by_key(story_means(rows, c, m), story_means(rows, ref, m),
                                                                 resamples=10000)
        entry["mass_background"] = mean_mass(rows, c, "background")
        entry["mass_foreground"] = mean_mass(rows, c, "foreground")
        summary[c] = entry
    return summary


def _ci(d: dict | None, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    if not d:
        return "-"
    sig = "**" if d["significant"] else ""
    return (f"{sig}{d['mean'] * scale:+.{digits}f}{unit} [{d['low'] * scale:+.{digits}f}, "
            f"{d['high'] * scale:+.{digits}f}]{sig}")


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _belt(entry: dict) -> str:
    """Belt kept, with its story count when not every story has a readable identity belt."""
    counted = entry.get("belt_stories", entry["stories"])
    value = _num(entry["accessory_kept"], ".2f")
    return value if entry["accessory_kept"] is None or counted == entry["stories"] else f"{value} (n={counted})"


def _versus(labels: dict, reference: str) -> str:
    """The header of the columns that compare with `reference`."""
    return "vs identity's seed" if reference == BASELINE else f"vs {labels.get(reference, reference)}"


def markdown_table(summary: dict, labels: dict, reference: str = BASELINE, second: str = "bachvid") -> str:
    against = _versus(labels, reference)
    head = (f"| condition | bg PSNR dB | {against} | vs BachVid | char. hist. dist. | {against} "
            "| belt kept | action right | mask IoU (read) | match acc. (read) | mass bg | mass fg |")
    lines = [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    for name, e in summary.items():
        lines.append("| " + " | ".join([
            labels.get(name, name), _num(e["bg_psnr"], ".2f"), _ci(e.get(f"bg_psnr_vs_{reference}"), "", 1, 2),
            _ci(e.get(f"bg_psnr_vs_{second}"), "", 1, 2), _num(e["hist_distance"], ".3f"),
            _ci(e.get(f"hist_distance_vs_{reference}"), "", 1, 3), _belt(e),
            _num(e["action_right"], ".2f"), _num(e["mask_iou"], ".2f"), _num(e["match_accuracy"], ".2f"),
            _num(e["mass_background"], ".3f"), _num(e["mass_foreground"], ".3f")]) + " |")
    return "\n".join(lines) + "\n"


def doc_table(summary: dict, labels: dict, reference: str = BASELINE, second: str = "bachvid",
              extra: dict | None = None) -> str:
    """The diagnosis table: per condition, background PSNR with its paired differences to BachVid
    and to `reference`, the character's histogram distance (difference to BachVid), belt kept,
    action right, the quality of the masks and matches that were used (attention-read ones scored
    against the truth; "truth" for oracles) and the attention mass on injected keys."""
    head = (f"| condition | bg PSNR dB | Δ vs BachVid | Δ {_versus(labels, reference)} | char. hist. dist. | Δ vs BachVid "
            "| belt kept | action right | masks / matches used | mass on injected keys: bg / fg |")
    lines = [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    conditions = {**CONDITIONS, **(extra or {})}
    for name, e in summary.items():
        c = conditions.get(name)
        if e["mask_iou"] is None:
            used = "-"
        else:
            masks = f"IoU {e['mask_iou']:.2f}"
            if c is not None and c.oracle_masks == "identity":
                masks = f"identity: truth; shots: IoU {e['mask_iou']:.2f}"
            elif c is not None and c.oracle_masks:
                masks = "truth"
            matches = "truth" if c is not None and c.oracle_matches else f"acc. {e['match_accuracy']:.2f}"
            used = f"{masks} / {matches}"
        mass = "-" if e["mass_foreground"] is None else (
            f"{_num(e['mass_background'], '.2f')} / {e['mass_foreground']:.2f}")
        lines.append("| " + " | ".join([
            labels.get(name, name), _num(e["bg_psnr"], ".2f"), _ci(e.get(f"bg_psnr_vs_{second}"), "", 1, 2),
            _ci(e.get(f"bg_psnr_vs_{reference}"), "", 1, 2), _num(e["hist_distance"], ".3f"),
            _ci(e.get(f"hist_distance_vs_{second}"), "", 1, 3), _belt(e),
            _num(e["action_right"], ".2f"), used, mass]) + " |")
    return "\n".join(lines) + "\n"


def belt_table(rows: list[dict], labels: dict) -> str:
    """Where the belt is lost, per condition: kept overall and per action (the results' palette-free
    reader; shots whose identity belt is readable), and how often the shot's belt is readable at
    all: a lock that pastes the identity's belt in the wrong place leaves no readable belt, a shot
    that draws its own belt shows another colour."""
    actions = [a for a in MOVING if any(r.get("action") == a and r.get("belt_kept") is not None for r in rows)]
    head = "| condition | belt kept | " + " | ".join(actions) + " | shot's belt readable | shots |"
    lines = [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    for c in dict.fromkeys(r["condition"] for r in rows):
        scored = [r for r in rows if r["condition"] == c and r.get("belt_kept") is not None]
        if not scored:
            continue
        share = lambda rs, key: f"{np.mean([r[key] for r in rs]):.2f}" if rs else "-"  # noqa: E731
        per_action = [share([r for r in scored if r["action"] == a], "belt_kept") for a in actions]
        lines.append(f"| {labels.get(c, c)} | {share(scored, 'belt_kept')} | " + " | ".join(per_action)
                     + f" | {share(scored, 'shot_belt_read')} | {len(scored)} |")
    return "\n".join(lines) + "\n"


def spread_table(rows: list[dict], labels: dict) -> str:
    """Where the injected attention goes, per condition, kind and vital layer (mean over shots of
    `analyze.injected_spread`): a copy that keeps per-place detail attends near the query's own place;
    a spread near the uniform one hands every query the same average of the identity's tokens."""
    head = ("| condition | queries | layer | distance to the attended keys (tokens) | uniform | share at the "
            "query's own (h, w) | uniform |")
    lines = [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    for c in dict.fromkeys(r["condition"] for r in rows):
        for kind in ("background", "foreground"):
            per_layer: dict = {}
            for r in rows:
                if r["condition"] == c:
                    for layer, values in (r.get("spread") or {}).get(kind, {}).items():
                        per_layer.setdefault(int(layer), []).append(values)
            for layer, values in sorted(per_layer.items()):
                mean = {name: np.mean([v[name] for v in values]) for name in values[0]}
                lines.append(f"| {labels.get(c, c)} | {kind} | {layer} | {mean['distance']:.2f} | "
                             f"{mean['distance_uniform']:.2f} | {mean['own_place']:.3f} | {mean['own_place_uniform']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_x0(rows, conditions, labels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for c in conditions:
        curve = x0_curves(rows, c)
        if curve:
            ax.plot(list(curve), list(curve.values()), marker="o", label=labels.get(c, c))
    ax.set_xlabel("denoising step (predicted x0 decoded)")
    ax.set_ylabel("background error to the identity (mean |px|)")
    ax.set_title("background error of the shot's predicted x0, background-in-both pixels", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, reference: str = BASELINE, extra_labels: dict | None = None,
           only: list[str] | None = None, extra: dict | None = None) -> dict:
    """table.md, summary.json and PNGs from the rows in `out`, over the stories that have every
    condition (`only`: these conditions, in this order)."""
    from .analyze import heatmap

    out = Path(out)
    rows = read_rows(out)
    if only:
        rows = sorted((r for r in rows if r["condition"] in only), key=lambda r: only.index(r["condition"]))
    rows = complete_rows(rows)
    labels = {c.name: c.label for c in CONDITIONS.values()} | (extra_labels or {})
    summary = summarise(rows, reference)
    table = markdown_table(summary, labels, reference)
    (out / "table.md").write_text(table)
    (out / "doc_table.md").write_text(doc_table(summary, labels, reference, extra=extra))
    if any("belt_kept" in r for r in rows):
        (out / "belt.md").write_text(belt_table(rows, labels))
    if any(r.get("spread") for r in rows):
        (out / "spread.md").write_text(spread_table(rows, labels))
    curves = {c: x0_curves(rows, c) for c in summary}
    masses = {c: mass_tables(rows, c) for c in summary}
    (out / "summary.json").write_text(json.dumps({"summary": summary, "x0": curves,
                                                  "mass": {c: {k: _str_keys(t) for k, t in m.items()}
                                                           for c, m in masses.items()}}, indent=2) + "\n")
    for c, m in masses.items():
        for kind, t in m.items():
            top = max(0.05, max(v for row in t.values() for v in row.values()))
            heatmap(_str_keys(t), out / f"mass_{c}_{kind}.png",
                    f"attention mass on injected identity keys, {kind} queries\n{labels.get(c, c)}",
                    label="softmax share", vmin=0.0, vmax=round(top + 0.005, 2), transpose=True)
    plot_x0(rows, [c for c in summary if curves[c]], labels, out / "x0_background_error.png")
    print(table)
    return summary


def keep_frames(out: Path):
    """A `keep` for run_story: each video as OUT/frames/NAME.npz."""
    folder = out / "frames"
    folder.mkdir(exist_ok=True)
    return lambda name, frames: np.savez_compressed(folder / f"{name}.npz", frames=np.asarray(frames))


# The command --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.diagnose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--stories", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7000, help="seed of the story draw")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS),
                        help="comma-separated condition names (default: all built-in)")
    parser.add_argument("--condition", action="append", default=[], metavar="NAME:knob=value;...",
                        help="an extra condition, e.g. 'fix:injected_logit_bias=2;vital_layers=all' (repeatable)")
    parser.add_argument("--shard", default="0/1", help="i/k: run stories i, i+k, ... (for parallel processes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", default=BASELINE, help="condition the CIs compare with (report)")
    parser.add_argument("--report", action="store_true", help="only aggregate the rows in --out")
    parser.add_argument("--only", default="", help="with --report: these conditions only, in this order")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=TEXT",
                        help="with --report: how a condition is named in the tables (repeatable)")
    parser.add_argument("--keep-frames", action="store_true",
                        help="also write every video as OUT/frames/STORY-CONDITION-SHOT.npz (uint8 frames)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [parse_condition(text) for text in args.condition]
    if args.report:
        labels = {c.name: c.label for c in extra} | dict(text.split("=", 1) for text in args.label)
        report(out, args.reference, labels, [c for c in args.only.split(",") if c], {c.name: c for c in extra})
        return 0

    import torch

    from ..pipeline import BachVidPipeline

    torch.set_num_threads(args.threads)
    names = [n for n in args.conditions.split(",") if n]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise SystemExit(f"unknown conditions {unknown}; known: {', '.join(CONDITIONS)}")
    conditions = [CONDITIONS[n] for n in names] + extra
    index, _, count = args.shard.partition("/")
    index, count = int(index), int(count or 1)
    quiet_loading_bars_off_terminal()
    pipe = BachVidPipeline.from_pretrained(args.model)
    # Shots on their own seeds unless a condition says otherwise, whatever the model's default.
    settings = replace(pipe.default_settings(), shot_seeds="own")
    if args.steps:
        settings = replace(settings, num_inference_steps=args.steps)
    rows_path = out / f"rows-{args.seed}-{index}of{count}.jsonl"
    done = set()
    if rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add((r["story"], r["condition"]))
    stories = diagnosis_stories(args.stories, args.seed)[index::count]
    (out / "conditions.json").write_text(json.dumps({c.name: {"label": c.label, "kind": c.kind,
                                                              "changes": [list(x) for x in c.changes],
                                                              "oracle_masks": c.oracle_masks,
                                                              "oracle_matches": c.oracle_matches,
                                                              "identity_seed": c.identity_seed}
                                                     for c in conditions}, indent=2) + "\n")
    with rows_path.open("a") as sink:
        def write(row):
            sink.write(json.dumps(row) + "\n")
            sink.flush()

        for k, story in enumerate(stories):
            start = time.perf_counter()
            todo = [c for c in conditions if (story.name, c.name) not in done]
            if not todo:
                continue
            run_story(pipe, story, settings, conditions, done, write, keep_frames(out) if args.keep_frames else None)
            print(f"[diagnose] {story.name} ({k + 1}/{len(stories)}): {len(todo)} conditions in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
