"""`bachvid plan`: what a story will cost in each identity mode, from a model config alone.

Pure argparse here; the estimator (`bachvid.budget`, no torch) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

DTYPES = ("bfloat16", "float16", "float32")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_plan(sub) -> None:
    p = sub.add_parser(
        "plan", help="estimate memory and time of a story per identity mode (no weights needed)",
        description="Estimate weights, activations, identity memory, extra attention and time relative to "
                    "plain generation for an identity video and its shots, from a transformer config only. "
                    "Frames, size, steps and guidance default to the model's (its bachvid.json, else its config).")
    p.add_argument("--model-config", default="cogvideox-5b", metavar="NAME|PATH",
                   help="bundled: cogvideox-5b, cogvideox-2b, wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.2-t2v-a14b, "
                        "wan2.2-ti2v-5b; or a transformer config.json, or a model folder (default: cogvideox-5b)")
    p.add_argument("--frames", type=_positive)
    p.add_argument("--height", type=_positive)
    p.add_argument("--width", type=_positive)
    p.add_argument("--steps", type=_positive, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=float,
                   help="guidance scale; > 1 doubles the rows (CFG) (default: the pipeline's, 6 CogVideoX, 5 Wan)")
    p.add_argument("--shots", type=_positive, default=3, help="shots after the identity video (default 3)")
    p.add_argument("--group", type=_positive, help="shots denoised in one batch (default: all)")
    p.add_argument("--mode", choices=("all", "cache", "lockstep", "replay"), default="all")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(run=run)


def run(args) -> int:
    from . import budget
    from .cli import EXIT_USAGE

    try:
        source = budget.load_model(args.model_config)
        model, defaults = source.transformer, source.defaults

        def pick(flag, key, fallback):
            return flag if flag is not None else defaults.get(key, fallback)

        work = budget.Workload(
            frames=int(pick(args.frames, "num_frames", model.sample_frames)),
            height=int(pick(args.height, "height", model.sample_height * model.spatial_compression)),
            width=int(pick(args.width, "width", model.sample_width * model.spatial_compression)),
            steps=int(pick(args.steps, "num_inference_steps", 50)),
            guidance=float(pick(args.guidance, "guidance_scale", model.default_guidance)),
            dtype_bytes=budget.DTYPE_BYTES[args.dtype], shots=args.shots, group=args.group)
        result = budget.estimate(model, work, source.bachvid_config(), name=source.name)
    except budget.BudgetError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    modes = budget.MODES if args.mode == "all" else (args.mode,)
    if args.json:
        data = result.to_dict()
        data["modes"] = {m: data["modes"][m] for m in modes}
        data["dtype"] = args.dtype
        print(json.dumps(data, indent=2))
    else:
        print(render(result, modes, args.dtype))
    return 0


def size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _layers(layers: tuple[int, ...]) -> str:
    return f"{layers[0]}-{layers[-1]}" if list(layers) == list(range(layers[0], layers[-1] + 1)) else \
        ",".join(map(str, layers))


def render(b, modes, dtype: str) -> str:
    """The budget as a table a person reads."""
    w, s, t = b.workload, b.schedule, b.tokens
    fv = 100 * b.vital_fraction
    grid = " x ".join(map(str, t.grid))
    if t.joint:
        rows = f"{w.branches} rows per video"
        tokens = f"{t.text} text + {t.video:,} video ({grid}) = {t.total:,}"
    else:  # Wan: CFG as separate forwards; text in cross-attention only
        rows = f"{w.branches} forward{'s' if w.branches > 1 else ''} per step"
        tokens = f"{t.video:,} video ({grid}) in self-attention; {t.text} text in cross-attention"
    lines = [
        f"bachvid plan: {b.model}, {w.frames} frames {w.height}x{w.width}, {w.steps} steps, guidance {w.guidance:g} "
        f"({rows}), {dtype}",
        f"  parameters   {_count(b.parameters)} ({b.parameters:,})"
        + (f": {b.experts} experts of {_count(b.parameters // b.experts)}, one runs per step" if b.experts > 1 else ""),
        f"  tokens       {tokens}",
        f"  schedule     vital layers {_layers(s.vital)} ({len(s.vital)}, {fv:.1f}% of a forward); inject steps "
        f"{s.inject.start}-{s.inject.stop - 1}; pre-run {s.prerun_steps} steps; mask/match at step "
        f"{s.mask_step}/{s.match_step}; merge on {len(s.merge_steps)} steps",
        f"  story        identity + {w.shots} shots, {w.group_size} per batch ({w.groups} group"
        f"{'s' if w.groups > 1 else ''}); foreground {w.foreground:.0%}, background in both {w.background_both:.0%}",
        "",
        f"  weights                {size(b.weight_bytes)}",
        f"  activations            {size(b.activation_bytes)} per forward of one video (largest call)",
        f"  attention pairs        pre-run x{b.prerun_pairs_ratio:.2f}, shots x{b.run_pairs_ratio:.2f} plain, "
        f"in vital layers",
        f"  step cost              pre-run x{b.prerun_step_ratio:.3f}, injected x{b.injected_step_ratio:.3f} a "
        f"plain step; point matching {b.matching_forwards:.2f} forward per shot",
        "",
        f"  {'mode':<9} {'identity kept':>14} {'step peak':>11} {'match peak':>11} {'peak':>11} "
        f"{'forwards':>9} {'time':>7}",
    ]
    for cost in [b.vanilla, *(b.modes[name] for name in modes)]:
        match = size(cost.matching_peak_bytes) if cost.matching_peak_bytes else "-"
        lines.append(f"  {cost.mode:<9} {size(cost.identity_bytes):>14} {size(cost.step_peak_bytes):>11} "
                     f"{match:>11} {size(cost.peak_bytes):>11} {cost.forwards:>9.1f} {cost.time_ratio:>6.3f}x")
    lines += ["",
              "  peak = weights + identity kept + the larger of a step's activations and point matching's working",
              "  set; text encoder and VAE not included. time = forwards of the whole story / vanilla's."]
    return "\n".join(lines)
