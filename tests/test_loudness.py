"""BS.1770 loudness without scipy's import cost: the same K-weighting and the same figures as pyloudnorm."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyloudnorm
import pytest
import soundfile

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


@pytest.mark.parametrize("seconds, rate", [(0.5, 44100), (12.0, 44100), (70.0, 44100), (130.0, 22050)])
def test_the_step_spectra_measure_what_pyloudnorms_filter_measures(seconds, rate):
    audio = _music(seconds, rate)  # 130 s: more steps than are transformed at once
    reference = pyloudnorm.Meter(rate).integrated_loudness(audio.astype(np.float64))
    ours = integrated_loudness(audio, rate)
    if np.isfinite(reference):
        assert ours == pytest.approx(reference, abs=0.01)
    else:
        assert ours == reference  # too short to gate


def test_a_rendered_score_measures_what_pyloudnorm_measures(tmp_path):
    import gradmidi
    from scorekit import make_score

    score = make_score(tmp_path / "run.mid", [("a", "Linear"), ("b", "Conv2d")],
                       lambda step: (np.array([10.0 ** (step % 9 - 4), 1e-2]), np.ones(2, bool)), 200)
    result = gradmidi.render(score, tmp_path / "run.wav", loudness=None)
    audio, rate = soundfile.read(str(result.path), dtype="float32")
    reference = pyloudnorm.Meter(rate).integrated_loudness(audio.astype(np.float64))
    assert integrated_loudness(audio, rate) == pytest.approx(reference, abs=0.01)


def test_a_minute_is_measured_without_importing_scipy():
    code = ("import sys, numpy as np; from gradmidi.loudness import integrated_loudness; "
            "x = np.random.default_rng(0).normal(size=(60 * 44100, 2)).astype(np.float32) * 0.1; "
            "print(integrated_loudness(x, 44100)); print('scipy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lufs, imported = done.stdout.split()
    assert -20 < float(lufs) < -10 and imported == "False"
