"""The `bachvid studio` subcommand: its arguments here, gradio imported only when it runs."""

from __future__ import annotations

import sys
import time


def add_studio(sub) -> None:
    p = sub.add_parser("studio", help="a local web studio: write, generate, watch, save and download stories",
                       description="Start a Gradio web studio on this machine. Stories made there are written "
                                   "where `bachvid generate --out OUT/session-ID` writes them (same layout and "
                                   "manifest); saved characters go to the character library. Needs the extra: "
                                   "pip install -e '.[studio]'.")
    from ..cli import _add_model_flags  # the same model flags as generate (cli is loaded: it calls us)

    _add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0: a free one)")
    p.add_argument("--out", default="studio-out", help="where stories go, one folder per browser session "
                                                       "(default: ./studio-out)")
    p.add_argument("--characters", default=None, help="the saved-character library (default: OUT/characters)")
    p.set_defaults(run=run)


def run(args) -> int:
    start = time.perf_counter()
    try:
        from . import app
    except ImportError as error:  # the extra is not installed
        print(f"error: the studio needs gradio ({error}); install it with: pip install -e '.[studio]'",
              file=sys.stderr)
        return 2
    return app.serve(args, started=start)
