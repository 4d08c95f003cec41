"""Paired bootstrap confidence intervals: the evidence standard of every toy comparison.

Two conditions measured on the same stories (or prompts) differ by a paired difference; its mean and
a percentile interval from resampling the stories with replacement say whether a gain is real. One
implementation serves the results table, the diagnosis runs and the quality comparisons.
"""

from __future__ import annotations

import numpy as np


def paired_bootstrap(values, baseline, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict | None:
    """Mean of the paired differences values - baseline and its bootstrap percentile CI (pairs
    resampled with replacement, a fixed RNG). Pairs with a missing side are left out; None if
    none is left."""
    a, b = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    if not len(d):
        return None
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "n": int(len(d)),
            "significant": bool(low > 0 or high < 0)}


def paired_bootstrap_by_key(values: dict, baseline: dict, resamples: int = 2000, seed: int = 0,
                            level: float = 0.95) -> dict | None:
    """`paired_bootstrap` over the keys (stories, combinations) both dicts have; None under two."""
    common = sorted(set(values) & set(baseline))
    if len(common) < 2:
        return None
    return paired_bootstrap([values[k] for k in common], [baseline[k] for k in common], resamples, seed, level)
