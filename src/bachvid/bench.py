"""`bachvid bench`: vanilla against BachVid in each identity mode, on the same story and seeds, in one run.

Per mode it reports seconds per video, peak memory (CUDA peak allocated on a GPU; resident set
size on a CPU, sampled) and both as ratios to vanilla in the same run. Every transformer forward
is timed (synchronised) and labelled with its phase (identity alone, pre-run, injected or plain
real-run step), so a short schedule (`--steps 10`, what a lent GPU's minutes allow at full size)
also yields the per-step costs, and from them the ratio for the full schedule (`--extrapolate 50`:
same per-step costs, the step counts of 50 steps).

    bachvid bench                                   # the default model, on this machine
    bachvid bench --random-weights cogvideox-5b     # full CogVideoX-5B config, random bf16 weights (GPU)
    bachvid bench --random-weights wan2.1-t2v-1.3b  # Wan2.1-T2V-1.3B at 81x480x832, random bf16 weights (GPU)

Wan runs its CFG branches as two forwards per step; they are timed as one (a step's cost), so
the phases and ratios read the same on both backbones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict

from .method.config import parse_knob

MODES = ("vanilla", "cache", "replay", "lockstep")
RANDOM_ARCHITECTURES = ("cogvideox-5b", "cogvideox-2b", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-t2v-a14b")


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time and memory of BachVid's identity modes against vanilla generation")
    p.add_argument("--model", default=None, help="diffusers folder or hub id (default: the built-in toy model)")
    p.add_argument("--random-weights", choices=RANDOM_ARCHITECTURES, default=None,
                   help="build this real architecture with random weights instead of loading one (no download)")
    p.add_argument("--layers", type=int, default=None, help="with --random-weights: fewer layers (CPU smoke runs)")
    p.add_argument("--heads", type=int, default=None, help="with --random-weights: fewer heads (CPU smoke runs)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated, from {', '.join(MODES)}; MODE:N runs it with N shots per batch")
    p.add_argument("--shots", type=int, default=3, help="shots after the identity video")
    p.add_argument("--group", type=int, default=None, help="shots per batch (default: as many as fit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, dest="num_inference_steps")
    p.add_argument("--frames", type=int, dest="num_frames")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--guidance", type=float, dest="guidance_scale")
    p.add_argument("--extrapolate", type=int, default=None,
                   help="also give ratios for a schedule of this many steps, from the measured per-step costs")
    p.add_argument("--coarse", type=int, default=None, metavar="K",
                   help="with --extrapolate: also the ratio with a coarse pre-run of stride K, from the same "
                        "measured per-phase costs (the pre-run's phases cost the same per forward)")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="profile the last mode's run with torch.profiler and write its op table here "
                        "(sorted by device time on a GPU, CPU time otherwise); its timings are then not comparable")
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                   help="a BachVidConfig knob for every BachVid mode, e.g. --set prerun_stride=5 (repeatable)")
    p.add_argument("--decode", action="store_true", help="include VAE decoding (the same cost for every mode)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    p.set_defaults(run=run_bench)


# Measuring ------------------------------------------------------------------------------------

class ForwardClock:
    """Times every forward of a module, or of each of several (Wan 2.2's experts), CUDA-synchronised,
    and keeps its batch size."""

    def __init__(self, module, device):
        self.modules = list(module) if isinstance(module, (list, tuple)) else [module]
        self.cuda = device.type == "cuda"
        self.records: list[tuple[int, float]] = []
        self.peaks: list[int] = []  # CUDA peak allocated during each forward (0 on a CPU)
        self.overall = 0  # the peak over the whole block, between forwards too
        self._start = 0.0

    def _sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __enter__(self):
        def before(module, args, kwargs):
            self._sync()
            if self.cuda:
                import torch

                self.overall = max(self.overall, torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()
            self._start = time.perf_counter()

        def after(module, args, kwargs, output):
            self._sync()
            self.records.append((kwargs["hidden_states"].shape[0], time.perf_counter() - self._start))
            if self.cuda:
                import torch

                self.peaks.append(torch.cuda.max_memory_allocated())
                self.overall = max(self.overall, self.peaks[-1])

        self._handles = [handle for module in self.modules
                         for handle in (module.register_forward_pre_hook(before, with_kwargs=True),
                                        module.register_forward_hook(after, with_kwargs=True))]
        return self

    def steps(self, per_step: int) -> tuple[list[tuple[int, float]], list[int]]:
        """Records and peaks with every `per_step` consecutive forwards as one (a backbone running
        its CFG branches as separate forwards makes two per step): batch of the first, summed
        seconds, the larger peak."""
        if per_step == 1:
            return self.records, self.peaks
        records = [(self.records[i][0], sum(s for _, s in self.records[i:i + per_step]))
                   for i in range(0, len(self.records), per_step)]
        peaks = [max(self.peaks[i:i + per_step]) for i in range(0, len(self.peaks), per_step)]
        return records, peaks

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()


class PeakMemory:
    """Peak memory during a block: CUDA's peak allocated bytes, or the process's sampled RSS on a CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = threading.Event()
            self.peak = self._rss()

            def sample():
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, self._rss())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


# What each forward of a mode is ----------------------------------------------------------------

def forward_labels(mode: str, steps: int, prerun_steps: int, inject: range, shots: int, group: int,
                   read_steps: frozenset[int] = frozenset(), stride: int = 1) -> list[str]:
    """The phase of every transformer forward a story makes, in order (one forward per step).

    Pre-run steps that read the mask or the matches (read_steps) are labelled apart: their extra
    cost is paid once per pre-run, not at every pre-run step. A coarse pre-run (stride k) runs
    every k-th of the prerun_steps; lockstep's identity still runs all of them alone."""
    def real(tag):
        return [f"{tag}:real-{'injected' if i in inject else 'plain'}" for i in range(steps)]

    if mode == "vanilla":
        return ["vanilla"] * (steps * (1 + shots))
    groups = [min(group, shots - first) for first in range(0, shots, group)]
    alone = prerun_steps if mode == "lockstep" and shots else steps
    labels = ["identity"] * alone
    for g, size in enumerate(groups):
        tag = f"group{size}"
        labels += [f"{tag}:prerun-read" if i in read_steps else f"{tag}:prerun"
                   for i in range(0, prerun_steps, stride)]
        labels += real(tag)
    return labels


def extrapolated_seconds(labels: list[str], seconds: list[float], target_labels: list[str]) -> float:
    """The same per-forward costs (mean per label) summed over another schedule's forwards."""
    by_label = defaultdict(list)
    for label, s in zip(labels, seconds):
        by_label[label].append(s)
    mean = {label: sum(v) / len(v) for label, v in by_label.items()}
    missing = sorted(set(target_labels) - set(mean))
    if missing:
        raise ValueError(f"no measured forward for {', '.join(missing)}: run more steps")
    return sum(mean[label] for label in target_labels)


# The run -------------------------------------------------------------------------------------

def _build(args):
    import torch

    from .cli import _device
    from .pipeline import BachVidPipeline

    device = _device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.random_weights:
        dtype = dtype or (torch.bfloat16 if device != "cpu" else torch.float32)
        if args.random_weights.startswith("wan"):
            from .backbones.wan import random_wan_pipeline as random_pipeline

            defaults = {"num_inference_steps": 50, "guidance_scale": 5.0}  # WanPipeline's defaults
        else:
            from .backbones.tiny import random_cogvideox_pipeline as random_pipeline

            defaults = {"num_inference_steps": 50, "guidance_scale": 6.0}
        pipe = random_pipeline(args.random_weights, dtype=dtype, device=device, num_layers=args.layers,
                               num_heads=args.heads)
        name = f"{args.random_weights} (random {str(dtype).removeprefix('torch.')} weights"
        name += f", {args.layers} layers" if args.layers else ""
        name += f", {args.heads} heads)" if args.heads else ")"
        return BachVidPipeline(pipe, model_name=name, defaults=defaults)
    return BachVidPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)


def bench_story(shots: int):
    from .io.story import Shot, Story

    actions = ["stands still", "walks to the left", "jumps", "runs to the right", "sits", "walks closer"]
    lines = tuple(Shot("a green meadow", actions[i % len(actions)], line=i + 1) for i in range(shots + 1))
    return Story(name="bench", character="a red robot", identity=lines[0], shots=lines[1:], shared_background=True)


def parse_modes(text: str) -> list[tuple[str, int | None]]:
    """'vanilla,lockstep:3,replay:1' -> [(mode, group or None)]; vanilla always comes first."""
    modes = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        mode, _, group = item.partition(":")
        if mode not in MODES or (group and (not group.isdigit() or int(group) < 1)):
            raise ValueError(f"--modes takes {', '.join(MODES)}, each optionally :N (shots per batch); got {item!r}")
        modes.append((mode, int(group) if group else None))
    if not modes:
        raise ValueError("--modes is empty")
    if ("vanilla", None) not in modes:
        modes.insert(0, ("vanilla", None))
    return modes


def run_bench(args) -> int:
    try:
        modes = parse_modes(args.modes)
        for text in args.set:
            parse_knob(text)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.shots < 1:
        print("error: --shots must be >= 1", file=sys.stderr)
        return 2
    import torch

    pipe = _build(args)
    device = pipe.pipe._execution_device
    explicit = {k: getattr(args, k) for k in ("seed", "num_inference_steps", "num_frames", "height", "width",
                                              "guidance_scale")}
    story = bench_story(args.shots)
    settings = pipe.default_settings().for_story(story, **explicit)
    config = pipe.default_config(**dict(parse_knob(text) for text in args.set))
    maker_schedule = _schedule(pipe, settings, config)
    output_type = "np" if args.decode else "latent"
    print(f"model: {pipe.model_name}; device: {_device_name(device)}; {settings.num_frames} frames "
          f"{settings.height}x{settings.width}, {settings.num_inference_steps} steps, guidance {settings.guidance_scale}; "
          f"identity + {args.shots} shots; {'with' if args.decode else 'without'} VAE decoding", flush=True)

    _warm_up(pipe, story, settings, config)
    rows = {}
    for mode, mode_group in modes:
        name = mode if mode_group is None else f"{mode}:{mode_group}"
        run_config = config.replace(enabled=False) if mode == "vanilla" else config
        try:
            group = mode_group or args.group or (pipe.default_group(settings, args.shots, mode)
                                                 if mode != "vanilla" else 1)
            identity_mode = "cache" if mode == "vanilla" else mode
            if mode == "cache":
                pipe.check_cache_fits(settings, run_config)
        except MemoryError as error:
            rows[name] = {"refused": str(error)}
            print(f"{name}: refused ({error})", flush=True)
            continue
        _free(device)
        profiling = args.profile and (mode, mode_group) == modes[-1]
        experts = getattr(pipe.backbone, "experts", [pipe.pipe.transformer])
        with torch.inference_mode(), PeakMemory(device) as memory, ForwardClock(experts, device) as clock, \
                _profiler(args.profile if profiling else None, device):
            start = time.perf_counter()
            results = list(pipe.generate(story, settings, run_config, identity_mode=identity_mode, group=group,
                                         progress=False, output_type=output_type))
            seconds = time.perf_counter() - start
        peak = max(memory.peak, clock.overall)  # the clock resets CUDA's counter at every forward
        separate = getattr(pipe.backbone, "separate_cfg_forwards", False) and settings.guidance_scale > 1.0
        records, step_peaks = clock.steps(2 if separate else 1)
        labels = forward_labels(mode, settings.num_inference_steps, maker_schedule.prerun_steps,
                                maker_schedule.inject, args.shots, group, _read_steps(maker_schedule),
                                _stride(pipe, story, settings, run_config))
        if len(labels) != len(records):
            raise RuntimeError(f"{mode}: expected {len(labels)} forwards, timed {len(records)}")
        row = {"seconds": seconds, "seconds_per_video": seconds / len(results), "peak_bytes": peak,
               "group": group, "forwards": len(labels),
               "identity_bytes": results[0].stats.get("identity_bytes", 0),
               "per_step": _per_label(labels, [s for _, s in records], step_peaks)}
        if args.extrapolate:
            target = _schedule(pipe, settings.__class__(**{**asdict(settings), "num_inference_steps": args.extrapolate}),
                               config)
            target_settings = settings.__class__(**{**asdict(settings), "num_inference_steps": args.extrapolate})
            target_labels = forward_labels(mode, args.extrapolate, target.prerun_steps, target.inject, args.shots,
                                           group, _read_steps(target), _stride(pipe, story, target_settings, run_config))
            row["extrapolated_seconds"] = extrapolated_seconds(labels, [s for _, s in records], target_labels)
            if args.coarse and mode != "vanilla":
                coarse = run_config.replace(prerun_stride=args.coarse)
                stride = _stride(pipe, story, target_settings, coarse)
                coarse_labels = forward_labels(mode, args.extrapolate, target.prerun_steps, target.inject, args.shots,
                                               group, _read_steps(target), stride)
                row["coarse_stride"] = stride
                row["extrapolated_seconds_coarse"] = extrapolated_seconds(labels, [s for _, s in records],
                                                                          coarse_labels)
        rows[name] = row
        print(f"{name}: {seconds:.1f} s, peak {peak / 2**30:.2f} GiB", flush=True)
        del results

    report = {"model": pipe.model_name, "device": _device_name(device), "platform": platform.platform(),
              "settings": asdict(settings), "shots": args.shots, "decode": args.decode,
              "extrapolate": args.extrapolate, "modes": rows}
    _ratios(report)
    print(format_table(report))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=2)
    return 0


@contextmanager
def _profiler(path: str | None, device):
    """torch.profiler around a block, its op table (top 40) written to `path`; nothing if None."""
    if path is None:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        yield
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with open(path, "w") as f:
        f.write(prof.key_averages().table(sort_by=key, row_limit=40) + "\n")


def _warm_up(pipe, story, settings, config) -> None:
    """One short lockstep story first, so no timed mode pays for kernel selection and allocator growth."""
    import torch

    short = settings.__class__(**{**asdict(settings), "num_inference_steps": 2})
    with torch.inference_mode():
        for _ in pipe.generate(story, short, config, identity_mode="lockstep", group=1, shots=[0],
                               progress=False, output_type="latent"):
            pass


def _schedule(pipe, settings, config):
    from .method.plan import PlanMaker

    return PlanMaker(config, pipe.layers(config), settings.num_inference_steps,
                     pipe.backbone.joint_text_length).schedule


def _stride(pipe, story, settings, config) -> int:
    from .modes import StoryRun

    return StoryRun(pipe, story, settings, config, progress=False).prerun_stride() if config.enabled else 1


def _read_steps(schedule) -> frozenset[int]:
    return frozenset({schedule.mask_step, schedule.match_step})


def _per_label(labels, seconds, peaks=()) -> dict:
    """Per phase: forwards, mean seconds and (on a GPU) the largest peak inside one of its forwards,
    which tells where a mode's peak memory comes from."""
    by_label, peak = defaultdict(list), defaultdict(int)
    for label, s in zip(labels, seconds):
        by_label[label].append(s)
    for label, p in zip(labels, peaks):
        peak[label] = max(peak[label], p)
    return {label: {"count": len(v), "mean_seconds": sum(v) / len(v), "peak_bytes": peak[label]}
            for label, v in by_label.items()}


def _free(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def _ratios(report: dict) -> None:
    base = report["modes"].get("vanilla")
    for row in report["modes"].values():
        if "seconds" not in row:
            continue
        row["time_ratio"] = row["seconds"] / base["seconds"]
        row["memory_ratio"] = row["peak_bytes"] / base["peak_bytes"]
        if "extrapolated_seconds" in row:
            row["extrapolated_time_ratio"] = row["extrapolated_seconds"] / base["extrapolated_seconds"]
        if "extrapolated_seconds_coarse" in row:
            row["extrapolated_time_ratio_coarse"] = row["extrapolated_seconds_coarse"] / base["extrapolated_seconds"]


def format_table(report: dict) -> str:
    extra = report.get("extrapolate")
    head = ["mode", "group", "s/video", "x vanilla", "peak GiB", "x vanilla", "identity MB"]
    coarse = [row.get("coarse_stride") for row in report["modes"].values() if row.get("coarse_stride")]
    if extra:
        head.append(f"x vanilla @{extra} steps")
        if coarse:
            head.append(f"same, pre-run stride {coarse[0]}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode, row in report["modes"].items():
        if "refused" in row:
            lines.append(f"| {mode} | refused: {row['refused'].split(';')[0]} |")
            continue
        cells = [mode, str(row["group"]), f"{row['seconds_per_video']:.2f}", f"{row['time_ratio']:.3f}",
                 f"{row['peak_bytes'] / 2**30:.2f}", f"{row['memory_ratio']:.3f}", f"{row['identity_bytes'] / 1e6:.1f}"]
        if extra:
            cells.append(f"{row['extrapolated_time_ratio']:.3f}")
            if coarse:
                cells.append(f"{row.get('extrapolated_time_ratio_coarse', 1.0):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bachvid bench")
    sub = parser.add_subparsers()
    add_bench(sub)
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
