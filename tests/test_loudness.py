"""BS.1770 loudness without scipy's import cost: the same K-weighting and the same figures as pyloudnorm."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyloudnorm
import pytest

from gradmidi.loudness import integrated_loudness, k_weighting


@pytest.mark.parametrize("rate", [22050, 44100, 48000, 96000])
def test_the_k_weighting_is_pyloudnorms(rate):
    theirs = np.array([np.concatenate([f.b, f.a]) for f in pyloudnorm.Meter(rate)._filters.values()])
    np.testing.assert_allclose(k_weighting(rate), theirs, rtol=1e-12, atol=1e-15)


def _music(seconds: float, rate: int) -> np.ndarray:
    """Tones and noise whose level changes, so gating matters: stereo, float32."""
    rng = np.random.default_rng(5)
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.where((t % 7) < 5, 1.0, 0.02)
    left = envelope * (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.normal(size=t.size))
    right = envelope * (0.2 * np.sin(2 * np.pi * 3300 * t) + 0.02 * rng.normal(size=t.size))
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.5, 12.0, 70.0])
def test_both_filters_measure_what_pyloudnorm_measures(seconds):
    rate = 44100
    audio = _music(seconds, rate)
    reference = pyloudnorm.Meter(rate).integrated_loudness(audio.astype(np.float64))
    for use_scipy in (False, True):
        ours = integrated_loudness(audio, rate, use_scipy=use_scipy)
        if np.isfinite(reference):
            assert ours == pytest.approx(reference, abs=0.01), use_scipy
        else:
            assert ours == reference  # too short to gate


def test_a_minute_is_measured_without_importing_scipy():
    code = ("import sys, numpy as np; from gradmidi.loudness import integrated_loudness; "
            "x = np.random.default_rng(0).normal(size=(60 * 44100, 2)).astype(np.float32) * 0.1; "
            "print(integrated_loudness(x, 44100)); print('scipy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lufs, imported = done.stdout.split()
    assert -20 < float(lufs) < -10 and imported == "False"
