"""`bachvid bench-attention`: the injected attention alone, against the plain attention it extends.

One shot's attention call at a real size (CogVideoX-5B: 226 text + 17,550 video tokens, 48 heads
of 64, a CFG pair of rows) with a foreground share `f`: background queries also see the identity's
background keys, foreground queries its matched foreground keys, as in the real run. Prints the
seconds of plain SDPA, of each exact injected method, their ratios to plain, and the ratio the
extra query-key pairs alone would cost, which is the floor any exact method pays.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def shot_call(tokens: int, text: int, heads: int, dim: int, foreground: float, rows: int, device, dtype, seed=0):
    """(query, key, value, groups) of one shot's injected attention call, random but real-sized."""
    import torch

    from .method.attention import KeyGroup

    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(rows, heads, tokens, dim, generator=g).to(device, dtype) for _ in range(3))
    video = tokens - text
    n_fg = int(round(foreground * video))
    fg = torch.arange(text, text + n_fg, device=device)
    bg = torch.arange(text + n_fg, tokens, device=device)
    groups = []
    extra = {name: [torch.randn(heads, m, dim, generator=g).to(device, dtype) for _ in range(2)]
             for name, m in (("bg", video - n_fg), ("fg", n_fg))}
    for _ in range(rows):
        groups.append([KeyGroup(bg, *extra["bg"]), KeyGroup(fg, *extra["fg"])])
    return q, k, v, groups


def pair_ratio(tokens: int, text: int, foreground: float) -> float:
    video = tokens - text
    n_fg = round(foreground * video)
    return (tokens * tokens + n_fg * n_fg + (video - n_fg) ** 2) / (tokens * tokens)


def _time(fn, device, repeat: int) -> float:
    import torch

    fn()  # warm-up
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def run(args) -> int:
    import torch
    import torch.nn.functional as F

    from .method.attention import injected_attention

    if not 0 < args.foreground < 1 or args.tokens <= args.text:
        print("error: --foreground must lie in (0, 1) and --tokens exceed --text", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    q, k, v, groups = shot_call(args.tokens, args.text, args.heads, args.dim, args.foreground, args.rows, device, dtype)
    report = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "tokens": args.tokens, "heads": args.heads, "dim": args.dim, "rows": args.rows,
              "foreground": args.foreground, "dtype": str(dtype).removeprefix("torch."),
              "pair_ratio": pair_ratio(args.tokens, args.text, args.foreground), "seconds": {}}
    with torch.inference_mode():
        report["seconds"]["plain"] = _time(lambda: F.scaled_dot_product_attention(q, k, v), device, args.repeat)
        merged = injected_attention(q, k, v, groups, method="merge")
        partitioned = injected_attention(q, k, v, groups, method="partition")
        report["max_difference"] = float((merged.float() - partitioned.float()).abs().max())
        for method in ("merge", "partition"):
            report["seconds"][method] = _time(lambda: injected_attention(q, k, v, groups, method=method), device,
                                              args.repeat)
    plain = report["seconds"]["plain"]
    report["ratios"] = {name: s / plain for name, s in report["seconds"].items()}
    print(f"{report['device']}: {args.tokens} tokens ({args.text} text), {args.heads} heads x {args.dim}, "
          f"{args.rows} rows, foreground {args.foreground:.0%}, {report['dtype']}")
    print(f"{'attention':<12}{'ms':>10}{'x plain':>10}")
    for name, s in report["seconds"].items():
        print(f"{name:<12}{s * 1e3:>10.2f}{report['ratios'][name]:>10.3f}")
    print(f"{'pairs alone':<12}{'':>10}{report['pair_ratio']:>10.3f}")
    print(f"merge vs partition: max difference {report['max_difference']:.2e}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def add_bench_attention(sub) -> None:
    p = sub.add_parser("bench-attention", help="time the injected attention alone against plain attention")
    p.add_argument("--tokens", type=int, default=17_776, help="text + video tokens (CogVideoX-5B at 49x480x720)")
    p.add_argument("--text", type=int, default=226)
    p.add_argument("--heads", type=int, default=48)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rows", type=int, default=2, help="batch rows (2: one shot's CFG pair)")
    p.add_argument("--foreground", type=float, default=0.3, help="share of video tokens in the character")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(run=run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bachvid")
    sub = parser.add_subparsers()
    add_bench_attention(sub)
    args = parser.parse_args(["bench-attention", *(argv if argv is not None else sys.argv[1:])])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
