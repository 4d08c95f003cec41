"""What the commands print on stderr: diffusers' and transformers' loading bars only on a terminal."""

from __future__ import annotations

import sys


def quiet_loading_bars_off_terminal(stream=None) -> bool:
    """diffusers' and transformers' loading bars nest, and nested tqdm bars move the cursor up
    (ESC [A): fine on a terminal, junk in a CI log or a `2> file`. Off a terminal they are turned
    off (our own bars, one per line, stay). Every command that loads a model calls this first.
    Returns whether they were turned off."""
    stream = sys.stderr if stream is None else stream
    if hasattr(stream, "isatty") and stream.isatty():
        return False
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    return True
