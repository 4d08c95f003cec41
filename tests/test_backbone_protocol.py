"""Every registered backbone implements the whole interface the method and pipeline use."""

import inspect

import pytest

from bachvid.backbones import BACKBONES
from bachvid.backbones.protocol import Backbone

MEMBERS = [name for name in dir(Backbone) if not name.startswith("_")] + list(Backbone.__annotations__)


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda b: b.__name__)
def test_a_registered_backbone_has_every_member_of_the_protocol(backbone):
    missing = [m for m in MEMBERS if not hasattr(backbone, m) and m not in ("pipe",)]
    assert not missing, f"{backbone.__name__} lacks {missing}"
    for name in MEMBERS:  # a method of the protocol takes at least the protocol's parameters
        expected = getattr(Backbone, name, None)
        if inspect.isfunction(expected):
            wanted = set(inspect.signature(expected).parameters)
            assert wanted <= set(inspect.signature(getattr(backbone, name)).parameters), (backbone.__name__, name)


def test_the_protocol_knows_what_the_pipeline_asks_of_a_backbone():
    """Each `backbone.X` the package's method-agnostic code uses is a member of the protocol."""
    import re
    from pathlib import Path

    import bachvid

    root = Path(bachvid.__file__).parent
    used = set()
    for path in root.rglob("*.py"):
        if "backbones" not in path.parts:
            used |= set(re.findall(r"\bbackbone\.([a-z_]+)", path.read_text()))
    assert used and used <= set(MEMBERS), sorted(used - set(MEMBERS))
