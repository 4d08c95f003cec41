"""Injected attention takes PyTorch's memory-efficient SDPA path: no query x key matrix.

Measured in a fresh process (peak resident memory is per process). At 12,000 tokens x 2 heads a
query x key matrix in float32 is 1.15 GB; the 3-D call that injected attention used to make
(math kernel) builds it, the 4-D calls do not."""

import subprocess
import sys

SCRIPT = r"""
import resource, sys, torch, torch.nn.functional as F
from bachvid.method.attention import KeyGroup, injected_attention
torch.manual_seed(0)
n, h, d = 12000, 2, 64
q, k, v = (torch.randn(1, h, n, d) for _ in range(3))
group = KeyGroup(torch.arange(0, n, 2), torch.randn(h, 6000, d), torch.randn(h, 6000, d))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "injected":
    injected_attention(q, k, v, [[group]])
elif sys.argv[1] == "biased":  # a logit bias on the injected keys: a broadcast mask, still fused
    injected_attention(q, k, v, [[KeyGroup(group.queries, group.keys, group.values, 1.5)]])
else:  # what a 3-D call does: the math kernel over all keys
    F.scaled_dot_product_attention(q[0], torch.cat([k[0], group.keys], 1), torch.cat([v[0], group.values], 1))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def growth(which: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, which], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_injected_attention_never_builds_the_query_key_matrix():
    matrix = 12000 * 18000 * 2 * 4  # queries x (own + extra keys) x heads x float32
    math_kernel = growth("3d")
    injected = growth("injected")
    assert math_kernel > 0.8 * matrix  # the check can fail: the 3-D call does build it
    assert injected < 0.1 * matrix, injected
    assert growth("biased") < 0.1 * matrix
