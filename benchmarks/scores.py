"""Synthetic gradmidi scores of any length, for benchmarks (the real pipeline and writer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from scorekit import make_score  # noqa: E402


def synthetic_score(path: Path, steps: int, n_layers: int = 8, seed: int = 0) -> Path:
    """Layers alternate convolution/linear; norms wander in log space with a burst every ~1000 steps."""
    layers = [(f"layer{i}", "Conv2d" if i % 2 else "Linear") for i in range(n_layers)]
    rng = np.random.default_rng(seed)
    base = rng.uniform(-3, 0, n_layers)

    def norms(step):
        burst = 3 if step % 997 == 500 else 0
        return 10 ** (base + 0.1 * rng.normal(size=n_layers) + burst), np.ones(n_layers, bool)

    return make_score(path, layers, norms, steps)
