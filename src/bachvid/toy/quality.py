"""Quality bars of a toy model: plain generations of held-out prompts, scored from pixels.

    python -m bachvid.toy.quality --samples 64                  # the shipped model
    python -m bachvid.toy.quality --model runs/toy/model        # any toy-world model folder
    python -m bachvid.toy.quality --references --time           # + scorer on rendered clips and on
                                                                #   their VAE round trips, + timing

Generation is the stock diffusers `CogVideoXPipeline` loaded from the folder (BachVid is not
involved): its scheduler, the model's default steps and guidance from bachvid.json unless
overridden, one seed per sample (`torch.Generator().manual_seed(seed)`; videos are generated
several per call, each with its own generator, so each gets the noise it would get alone). The
world (v1: 17 x 64 x 64, v2: 17 x 96 x 96) is the model's: its bachvid.json frames and size.
Prompts: the 16 *held-out* combinations of `world.split_combinations()` (never seen in training),
in turn; `--combinations training` draws the training ones instead, to tell generalisation from
fit. The pixel scorer (`evaluate.score_clip`) reads background kind, character kind, action and a
character mask. Bars: background >= 90%, character >= 90%, action >= 80%.

Rendered clips carry a true mask, so `--references` also reports the scorer's accuracy and mask IoU
against the truth on rendered held-out clips and on their VAE round trips (the best a model with
this VAE can reach). Generated clips have no truth mask; for them the report gives the mask's mean
area and its frame-to-frame IoU (a steady character).

Every scored sample is appended to `--out`/samples.jsonl as soon as it is made, so an interrupted
run resumes where it stopped (the same command again); the report, a contact sheet of the first
16 videos and the videos themselves (.npz) are written there too.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..io.outputs import contact_sheet
from ..io.terminal import quiet_loading_bars_off_terminal
from ..method.prompt import compose_prompt
from . import world
from .evaluate import iou, score_clip
from .stats import paired_bootstrap_by_key

BARS = {"background": 0.9, "character": 0.9, "action": 0.8}
FRAMES, SIZE = world.FRAMES, world.SIZE  # world v1's clips (17 x 64 x 64), for callers without a model's defaults


COMBINATIONS = ("held-out", "training")


def held_out_prompts(samples: int, seed: int = 0, combinations: str = "held-out"):
    """[(combo, seed)]: the held-out combinations (or, to tell generalisation from fit, the training
    ones) in turn, each sample with its own seed."""
    if combinations not in COMBINATIONS:
        raise ValueError(f"combinations must be one of {COMBINATIONS}, not {combinations!r}")
    training, held = world.split_combinations()
    combos = held if combinations == "held-out" else training
    rng = np.random.default_rng(seed)
    return [(combos[i % len(combos)], int(rng.integers(1 << 20))) for i in range(samples)]


def load(model=None, device: str = "cpu"):
    """(stock diffusers pipeline in float32 on `device`, the model's default steps, guidance, frames and
    size, folder).

    Loaded by `BachVidPipeline.from_pretrained` (one loading path for everything), then with
    BachVid's attention processors taken out again: the bars are about the model alone. The samples'
    generators stay on the CPU, so a seed draws the same initial noise on every device."""
    from ..models import DEFAULT_MODEL_DIR, shipped_model_path
    from ..pipeline import BachVidPipeline

    folder = (shipped_model_path(str(model)) or Path(model)) if model else DEFAULT_MODEL_DIR
    if not (folder / "model_index.json").is_file():
        raise SystemExit(f"no diffusers model folder at {folder}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this machine has no CUDA device (use --device cpu)")
    quiet_loading_bars_off_terminal()
    bachvid = BachVidPipeline.from_pretrained(folder).to(device)
    bachvid.backbone.uninstall()
    bachvid.pipe.set_progress_bar_config(disable=True)
    settings = bachvid.default_settings()
    return bachvid.pipe, _defaults(settings), folder


def _defaults(settings) -> dict:
    """What `measure` needs of a model's GenerationSettings: steps, guidance and the clip shape
    (which says the world: `world.world_of_size`)."""
    return {"num_inference_steps": settings.num_inference_steps, "guidance_scale": settings.guidance_scale,
            "num_frames": settings.num_frames, "size": settings.height}


def steps_and_guidance(defaults: dict, steps: int | None = None, guidance: float | None = None) -> tuple[int, float]:
    """The steps and guidance to run: the given ones, else the model's defaults (`load`)."""
    return (int(steps or defaults["num_inference_steps"]),
            float(guidance if guidance is not None else defaults["guidance_scale"]))


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float,
             frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """uint8 (B, F, H, W, 3) from the stock pipeline, one generator per video. The text length is the
    tokenizer's (the toy models are built with it equal to the model's: CogVideoX's
    max_text_seq_length; Wan has no such config field)."""
    video = pipe(prompt=prompts, negative_prompt=[""] * len(prompts), num_frames=frames, height=size, width=size,
                 num_inference_steps=steps, guidance_scale=guidance,
                 generator=[torch.Generator().manual_seed(s) for s in seeds],
                 max_sequence_length=pipe.tokenizer.model_max_length, output_type="np").frames
    return (np.clip(np.asarray(video), 0, 1) * 255 + 0.5).astype(np.uint8)


def _record(score, combo, sample_seed) -> dict:
    mask = score.mask
    steady = np.mean([iou(mask[i], mask[i + 1]) for i in range(len(mask) - 1)])
    return {"combo": list(combo), "seed": sample_seed, "background": score.background_kind,
            "character": score.character_kind, "action": score.action, "track": score.track,
            "mask_area": float(mask.mean()), "mask_steady": float(steady)}


def summarize(records: list[dict]) -> dict:
    n = len(records)
    right, confusion, per_action = Counter(), Counter(), Counter()
    for r in records:
        b, c, a = r["combo"]
        hits = {"background": r["background"] == b, "character": r["character"] == c, "action": r["action"] == a}
        right.update(k for k, v in hits.items() if v)
        right["all"] += all(hits.values())
        per_action[a, "n"] += 1
        per_action[a, "right"] += hits["action"]
        for key, truth in (("background", b), ("character", c), ("action", a)):
            if not hits[key]:
                confusion[f"{truth}->{r[key]}"] += 1
    return {"samples": n, **{k: right[k] / max(n, 1) for k in ("background", "character", "action", "all")},
            "action_by_kind": {a: per_action[a, "right"] / per_action[a, "n"] for a in world.ACTIONS
                               if per_action[a, "n"]},
            "confusions": dict(confusion.most_common(10)),
            "wrong_actions_trained_for_the_pair": action_binding(records),
            "mask_area": float(np.mean([r["mask_area"] for r in records])) if records else None,
            "mask_frame_to_frame_iou": float(np.mean([r["mask_steady"] for r in records])) if records else None}


def action_binding(records: list[dict]) -> dict:
    """Of the samples whose action is read wrong, how many show an action that training paired with
    the prompt's background and character, against chance (the share of the other actions that
    training paired with it). Near 1 against a lower chance: the model ties motion to the trained
    (background, character) pair instead of reading the action words (world-v2 models did: 23 of 23)."""
    trained = {}
    for b, c, a in world.split_combinations()[0]:
        trained.setdefault((b, c), set()).add(a)
    wrong = [r for r in records if r["action"] != r["combo"][2]]
    paired = [r["action"] in trained.get(tuple(r["combo"][:2]), ()) for r in wrong]
    chance = [len(trained.get(tuple(r["combo"][:2]), set()) - {r["combo"][2]}) / (len(world.ACTIONS) - 1)
              for r in wrong]
    return {"wrong": len(wrong), "from_trained_pair": int(sum(paired)),
            "chance": float(np.mean(chance)) if wrong else None}


def read_samples(folder: Path) -> list[dict]:
    """The records of a quality run's folder (its samples.jsonl, one JSON line per video)."""
    return [json.loads(line) for line in (Path(folder) / "samples.jsonl").read_text().splitlines() if line.strip()]


def compare_actions(records: list[dict], other: list[dict]) -> dict | None:
    """Action accuracy of `records` minus `other`'s on the samples both have (same combination and
    seed: two models run with the same --samples and --seed), as a paired difference per combination
    (a combination's samples move together) with a 95% bootstrap interval over combinations. None
    when fewer than two combinations are shared."""
    theirs = {(tuple(r["combo"]), r["seed"]): r["action"] == r["combo"][2] for r in other}
    mine: dict = {}
    for r in records:
        key = (tuple(r["combo"]), r["seed"])
        if key in theirs:
            mine.setdefault(key[0], []).append((r["action"] == r["combo"][2], theirs[key]))
    result = paired_bootstrap_by_key({c: float(np.mean([a for a, _ in v])) for c, v in mine.items()},
                                     {c: float(np.mean([b for _, b in v])) for c, v in mine.items()})
    if result is not None:
        result["samples"] = sum(len(v) for v in mine.values())
    return result


def measure(pipe, defaults: dict | None = None, samples: int = 64, seed: int = 0, steps: int | None = None,
            guidance: float | None = None, batch: int = 8, out: Path | None = None, log=print,
            combinations: str = "held-out") -> dict:
    """Generate and score `samples` held-out videos; with `out`, append each record to out/samples.jsonl
    and skip the ones already there (resume). `pipe` is a stock CogVideoXPipeline (or a BachVidPipeline,
    whose stock pipeline is used)."""
    if defaults is None:  # a BachVidPipeline knows its own; a stock one needs `load`'s
        if not hasattr(pipe, "default_settings"):
            raise TypeError("measure: give the model's defaults (quality.load returns them) with a stock pipeline")
        defaults = _defaults(pipe.default_settings())
    pipe = getattr(pipe, "pipe", pipe)
    steps, guidance = steps_and_guidance(defaults, steps, guidance)
    items = held_out_prompts(samples, seed, combinations)
    records: list[dict] = []
    videos: list[np.ndarray] = []
    done_file = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        done_file = out / "samples.jsonl"
        if done_file.is_file():
            records = read_samples(out)
            wanted = [[list(c), s] for c, s in items[: len(records)]]
            if [[r["combo"], r["seed"]] for r in records] != wanted:
                raise SystemExit(f"{done_file} holds other samples (another seed, model or count): "
                                 "remove it or pick another --out")
        if (out / "videos.npz").is_file() and records:
            videos = list(np.load(out / "videos.npz")["videos"][: len(records)])
    start, made = time.perf_counter(), 0
    for i in range(len(records), len(items), batch):
        chunk = items[i : i + batch]
        frames = generate(pipe, [compose_prompt(*world.texts(*c)) for c, _ in chunk], [s for _, s in chunk],
                          steps, guidance, defaults.get("num_frames", FRAMES), defaults.get("size", SIZE))
        new = [_record(score_clip(v), c, s) for v, (c, s) in zip(frames, chunk)]
        records += new
        videos += list(frames)
        made += len(chunk)
        if done_file is not None:
            with open(done_file, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
            np.savez_compressed(out / "videos.npz", videos=np.stack(videos))
        log(f"{len(records)}/{len(items)} videos, {(time.perf_counter() - start) / made:.2f} s each")
    report = {**summarize(records), "steps": steps, "guidance": guidance, "seed": seed, "combinations": combinations}
    if made:
        report["seconds_per_video_batched"] = (time.perf_counter() - start) / made
    if out is not None and videos:
        contact_sheet(out / "sheet.png", [(" ".join(r["combo"]), v) for r, v in zip(records[:16], videos)], cell=128)
    return report


@torch.no_grad()
def references(pipe, samples: int = 64, seed: int = 0, size: int = SIZE) -> dict:
    """The scorer on rendered held-out clips of the world of this frame size and on their VAE round
    trips, masks against the truth."""
    vae = getattr(pipe, "pipe", pipe).vae
    rendered, round_trip, ious, l1 = [], [], {"rendered": [], "vae": []}, []
    for combo, sample_seed in held_out_prompts(samples, seed):
        clip = world.render_clip(*combo, seed=sample_seed, world=world.world_of_size(size))
        x = torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].to(vae.device, torch.float32) / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample[0]
        recon = ((y.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
        l1.append(float(np.abs(recon.astype(np.float32) - clip.frames).mean()))
        for name, frames, bucket in (("rendered", clip.frames, rendered), ("vae", recon, round_trip)):
            score = score_clip(frames)
            bucket.append(_record(score, combo, sample_seed))
            ious[name].append(iou(score.mask, clip.mask))
    return {"rendered": {**summarize(rendered), "mask_iou_vs_truth": float(np.mean(ious["rendered"]))},
            "vae_round_trip": {**summarize(round_trip), "mask_iou_vs_truth": float(np.mean(ious["vae"])),
                               "pixel_l1": float(np.mean(l1))}}


def time_one_video(model=None, steps: int | None = None, guidance: float | None = None,
                   device: str = "cpu") -> dict:
    """Wall time of loading the model and of one plain video (batch 1) at the defaults."""
    start = time.perf_counter()
    pipe, defaults, _ = load(model, device)
    loaded = time.perf_counter()
    steps, guidance = steps_and_guidance(defaults, steps, guidance)
    generate(pipe, [compose_prompt(*world.texts("meadow", "robot", "jump"))], [0], steps, guidance,
             defaults["num_frames"], defaults["size"])
    done = time.perf_counter()
    return {"load_seconds": round(loaded - start, 2), "generate_seconds": round(done - loaded, 2), "steps": steps,
            "guidance": guidance, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="diffusers folder (default: the shipped toy model)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-sample seeds")
    parser.add_argument("--steps", type=int, default=None, help="override the model's default steps")
    parser.add_argument("--guidance", type=float, default=None, help="override the model's default guidance")
    parser.add_argument("--batch", type=int, default=8, help="videos per pipeline call")
    parser.add_argument("--combinations", choices=COMBINATIONS, default="held-out",
                        help="prompts from the held-out combinations (the bars) or the training ones (fit)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:1; default cpu)")
    parser.add_argument("--out", default=None,
                        help="folder for samples.jsonl (resume), report.json, sheet.png, videos.npz "
                             "(default: runs/quality/<model>-n<samples>-s<seed>-<steps>-<guidance>)")
    parser.add_argument("--references", action="store_true", help="also score rendered clips and VAE round trips")
    parser.add_argument("--time", action="store_true", help="also time loading + one video at batch size 1")
    parser.add_argument("--against", default=None, metavar="DIR",
                        help="an earlier quality run's folder (same --samples, --seed, --combinations): "
                             "the action accuracy difference, paired, with a 95%% interval")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {}
    if args.time:
        report["timing"] = time_one_video(args.model, args.steps, args.guidance, args.device)
    against = None
    if args.against:
        against_file = Path(args.against) / "samples.jsonl"
        if not against_file.is_file():
            raise SystemExit(f"--against {args.against}: no samples.jsonl there (a `quality --out` folder)")
        against = read_samples(against_file.parent)
    pipe, defaults, folder = load(args.model, args.device)
    steps, guidance = steps_and_guidance(defaults, args.steps, args.guidance)
    out = Path(args.out) if args.out else Path("runs/quality") / (
        f"{folder.resolve().name}-n{args.samples}-s{args.seed}-{steps}-{guidance:g}"
        + ("" if args.combinations == "held-out" else f"-{args.combinations}"))
    report["model"] = str(folder)
    if args.references:
        report["references"] = references(pipe, args.samples, args.seed, defaults["size"])
    report["generated"] = measure(pipe, defaults, args.samples, args.seed, steps, guidance, args.batch, out,
                                  log=lambda m: print(m, flush=True), combinations=args.combinations)
    if against is not None:
        records = read_samples(out)
        report["against"] = {"folder": str(args.against), "action": compare_actions(records, against)}
        if report["against"]["action"] is None:
            raise SystemExit(f"--against {args.against}: its samples are other prompts or seeds than this run's "
                             "(use the same --samples, --seed and --combinations)")
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    generated = report["generated"]
    for key, bar in BARS.items():
        print(f"{key:10s} {generated[key]:6.1%}  (bar {bar:.0%})  {'ok' if generated[key] >= bar else 'BELOW'}")
    binding = generated["wrong_actions_trained_for_the_pair"]
    if binding["wrong"]:
        print(f"wrong actions that training paired with the prompt's background and character: "
              f"{binding['from_trained_pair']}/{binding['wrong']} (chance {binding['chance']:.0%})")
    if against is not None:
        d = report["against"]["action"]
        print(f"action against {args.against}: {100 * d['mean']:+.1f} points [{100 * d['low']:+.1f}, "
              f"{100 * d['high']:+.1f}] over {d['n']} combinations ({d['samples']} samples, paired)"
              + ("" if d["significant"] else ": not significant"))
    print(f"report, sheet and videos: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
