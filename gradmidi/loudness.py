"""Integrated loudness (ITU-R BS.1770-4), vectorised and light on memory and start-up.

The K-weighting is two biquads (a high shelf and the RLB high-pass) with pyloudnorm's RBJ
coefficients, so both measure the same. Gating needs only each 100 ms step's K-weighted
energy, and by Parseval that is the step's spectrum weighted by the filters' gain squared: one
real FFT per step, in numpy alone (importing scipy.signal for a time-domain filter costs most of
a second, more than rendering a minute of audio). The filters' memory across a step's edges is
left out; on music and test signals the integrated loudness moves by about 1e-4 LU against the
exact filter (the tests hold it within 0.01 of pyloudnorm).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK_STEPS = 4  # a 400 ms gating block is 4 steps of 100 ms (75 % overlap)
STEP_SECONDS = 0.1
ABSOLUTE_GATE = -70.0
RELATIVE_GATE = -10.0
STEPS_AT_ONCE = 150  # 15 s of steps transformed at a time: memory stays bounded, chunks share the cores


def k_weighting(rate: int) -> np.ndarray:
    """The BS.1770 pre-filter (high shelf, +4 dB from 1.5 kHz) and RLB high-pass (38 Hz) as
    second-order sections [b0, b1, b2, 1, a1, a2] (RBJ's cookbook, as pyloudnorm designs them)."""
    sections = []
    for gain, q, corner, shelf in ((4.0, 1 / math.sqrt(2), 1500.0, True), (0.0, 0.5, 38.0, False)):
        a = 10 ** (gain / 40)
        w0 = 2 * math.pi * corner / rate
        alpha, cos = math.sin(w0) / (2 * q), math.cos(w0)
        if shelf:
            root = 2 * math.sqrt(a) * alpha
            b = [a * ((a + 1) + (a - 1) * cos + root), -2 * a * ((a - 1) + (a + 1) * cos),
                 a * ((a + 1) + (a - 1) * cos - root)]
            den = [(a + 1) - (a - 1) * cos + root, 2 * ((a - 1) - (a + 1) * cos), (a + 1) - (a - 1) * cos - root]
        else:
            b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
            den = [1 + alpha, -2 * cos, 1 - alpha]
        sections.append(np.array(b + den) / den[0])
    return np.array(sections)


def step_energies(data: np.ndarray, rate: int, step: int) -> np.ndarray:
    """Each whole step's K-weighted energy, channels summed: ``data`` is (n, channels) float32."""
    steps = len(data) // step
    z = np.exp(-2j * np.pi * np.fft.rfftfreq(step))  # z^-1 on the FFT's frequencies
    response = np.ones(len(z), dtype=np.complex128)
    for b0, b1, b2, a0, a1, a2 in k_weighting(rate):
        response *= (b0 + b1 * z + b2 * z * z) / (a0 + a1 * z + a2 * z * z)
    gain = np.square(np.abs(response))
    gain[1:len(gain) - (step % 2 == 0)] *= 2  # a real FFT's bins but DC (and Nyquist) stand for two
    gain = (gain / step).astype(np.float32)
    channels = np.ascontiguousarray(data[: steps * step].T).reshape(data.shape[1], steps, step)
    out = np.empty(steps, dtype=np.float64)

    def weigh(first: int) -> None:
        spectrum = np.fft.rfft(channels[:, first:first + STEPS_AT_ONCE], axis=2)
        power = np.square(spectrum.real) + np.square(spectrum.imag)
        out[first:first + STEPS_AT_ONCE] = (power @ gain).sum(axis=0)

    # numpy's FFT lets go of the interpreter lock: the chunks go to every core
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(weigh, range(0, steps, STEPS_AT_ONCE)))
    return out


def integrated_loudness(audio: np.ndarray, rate: int) -> float:
    """LUFS of mono (n,) or multichannel (n, channels) audio; -inf when silent or too short."""
    data = np.asarray(audio, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    step = int(round(STEP_SECONDS * rate))
    steps = len(data) // step
    if steps < BLOCK_STEPS:
        return float("-inf")
    per_step = step_energies(data, rate, step)  # L and R weigh 1.0
    window = np.convolve(per_step, np.ones(BLOCK_STEPS), mode="valid")  # 400 ms blocks, 100 ms apart
    energy = window / (BLOCK_STEPS * step)
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(energy)
    kept = energy[loudness >= ABSOLUTE_GATE]
    if not kept.size:
        return float("-inf")
    relative = -0.691 + 10 * np.log10(kept.mean()) + RELATIVE_GATE
    kept = kept[-0.691 + 10 * np.log10(kept) >= relative]
    return float(-0.691 + 10 * np.log10(kept.mean()))
