"""The method code (identity -> mask -> match -> inject, with its plan, controller and config) imports
no model library and no backbone: backbone specifics live in bachvid.backbones, models come from
diffusers only through the pipeline. Checked in a fresh interpreter, so nothing imported by
other tests can hide a dependency."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import bachvid.method

# Every module of the method package, found on disk: a new module is checked without a test edit.
METHOD = tuple(f"method.{m.name}" for m in pkgutil.iter_modules([str(Path(bachvid.method.__file__).parent)]))
FORBIDDEN = ("diffusers", "transformers", "bachvid.backbones", "bachvid.pipeline", "bachvid.modes", "bachvid.toy")


def imported_after(*modules: str) -> set[str]:
    code = "import sys\n" + "".join(f"import bachvid.{m}\n" for m in modules) + "print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_method_modules_import_no_model_and_no_backbone():
    loaded = imported_after(*METHOD)
    assert len(METHOD) >= 8 and {f"bachvid.{m}" for m in METHOD} <= loaded
    bad = sorted(name for name in loaded for f in FORBIDDEN if name == f or name.startswith(f + "."))
    assert not bad, f"the method modules import {bad}"


def test_the_check_sees_a_module_that_does_import_a_model():
    """Negative control: the pipeline module does pull in diffusers, and the check catches it."""
    assert "diffusers" in imported_after("pipeline")
