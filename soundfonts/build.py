"""Builds gradmidi's own General MIDI SoundFont from synthesised waveforms.

    python -m gradmidi.soundfonts.build [-o gradmidi-gm.sf2]

Every one of the 128 GM programs resolves to a timbre: each of the 16 GM families gets its
own synthesis (decaying additive tones, Karplus-Strong plucks, looped band-limited waves,
FM bells, filtered noise), and the 8 programs of a family vary it (brightness, attack,
tremolo, detune). Bank 128 holds a drum kit covering keys 35-81, with the alarms that
gradmidi sounds (crash, china, cowbell, clap, triangle, side stick) made to be told apart.
Deterministic: the same numpy gives the same bytes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np

from .sf2 import Instrument, Preset, Sample, Zone, timecents, write_sf2

MELODIC_RATE = 22050
DRUM_RATE = 32000
ROOTS = (36, 54, 72, 90)  # one sample every 18 semitones: at most 9 semitones of resampling
NYQUIST_MARGIN = 0.42  # keep partials below this fraction of the rate after a 9-semitone shift up
FONT_NAME = "gradmidi GM"
OUT = Path(__file__).resolve().parent / "gradmidi-gm.sf2"

GM_FAMILIES = (
    "piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects",
)


def hz(key: float) -> float:
    return 440.0 * 2 ** ((key - 69) / 12)


def _rng(tag: str) -> np.random.Generator:
    return np.random.default_rng(sum(ord(c) * 31**i for i, c in enumerate(tag)) % (2**32))


def _normalise(x: np.ndarray, peak: float = 0.9) -> np.ndarray:
    m = np.max(np.abs(x))
    return x * (peak / m) if m > 0 else x


def _max_partial(root: int, rate: int) -> int:
    return max(1, int(NYQUIST_MARGIN * rate / (hz(root) * 2 ** (9 / 12))))


# ---------------------------------------------------------------- looped, sustained families
def looped_tone(name: str, root: int, harmonics, loop_seconds: float = 0.1, attack_noise: float = 0.0):
    """A strictly periodic wave (so the loop is seamless) with an optional breathy onset."""
    rate = MELODIC_RATE
    f = hz(root)
    periods = max(1, round(loop_seconds * f))
    loop_len = round(periods * rate / f)
    f_exact = periods * rate / loop_len  # loop_len holds exactly `periods` cycles
    correction = int(round(-1200 * np.log2(f_exact / f)))
    lead, tail = 512, 16  # SF2 wants at least 8 valid points on each side of the loop
    t = np.arange(lead + loop_len + tail) / rate
    rng = _rng(name + str(root))
    wave = np.zeros_like(t)
    top = _max_partial(root, rate)
    for n, amp in harmonics:
        if n <= top:
            wave += amp * np.sin(2 * np.pi * n * f_exact * t + rng.uniform(0, 2 * np.pi))
    if attack_noise:
        burst = rng.normal(0, attack_noise, lead) * np.linspace(1, 0, lead) ** 2
        wave[:lead] += burst
    return Sample(f"{name}{root}", _normalise(wave), rate, root, correction, (lead, lead + loop_len))


def saw(n_max=64, tilt=1.0):
    return [(n, 1 / n**tilt) for n in range(1, n_max + 1)]


def odd(n_max=64, tilt=1.0, even=0.0):
    return [(n, (1 if n % 2 else even) / n**tilt) for n in range(1, n_max + 1)]


def vowel(root: int, formants=((730, 1.0, 90), (1090, 0.5, 110), (2440, 0.25, 170))):
    """Harmonics shaped by the formants of an open 'ah' (frequency, gain, bandwidth in Hz)."""
    f = hz(root)
    out = []
    for n in range(1, 64):
        gain = 0.08 + sum(g * np.exp(-0.5 * ((n * f - fc) / bw) ** 2) for fc, g, bw in formants)
        out.append((n, gain / n**0.5))
    return out


# ---------------------------------------------------------------- decaying families
def decaying_tone(name: str, root: int, partials, seconds: float, noise: float = 0.0):
    """Additive partials (ratio, amp, decay seconds), free to be inharmonic: played once, not looped."""
    rate = MELODIC_RATE
    f = hz(root)
    t = np.arange(int(seconds * rate)) / rate
    rng = _rng(name + str(root))
    wave = np.zeros_like(t)
    for ratio, amp, decay in partials:
        if ratio * f * 2 ** (9 / 12) < NYQUIST_MARGIN * rate:
            wave += amp * np.exp(-t / decay) * np.sin(2 * np.pi * ratio * f * t + rng.uniform(0, 2 * np.pi))
    if noise:
        wave += rng.normal(0, noise, len(t)) * np.exp(-t / 0.006)
    fade = min(len(t), 256)
    wave[-fade:] *= np.linspace(1, 0, fade)
    return Sample(f"{name}{root}", _normalise(wave), rate, root)


def plucked(name: str, root: int, seconds: float, brightness: float = 0.5, buzz: float = 0.0):
    """Karplus-Strong string: a noise burst in a delay line with a lowpass loop filter."""
    rate = MELODIC_RATE
    period = rate / hz(root)
    n = int(period)
    frac = period - n  # fractional delay by a first-order allpass keeps the tuning exact
    coef = (1 - frac) / (1 + frac)
    rng = _rng(name + str(root))
    excitation = rng.uniform(-1, 1, n)
    for _ in range(int(3 * (1 - brightness)) + 1):  # darker pluck: smoother excitation
        excitation = 0.5 * (excitation + np.roll(excitation, 1))
    total = int(seconds * rate)
    out = np.zeros(total)
    buf = np.concatenate([excitation, np.zeros(total)])
    ap_x, ap_y = 0.0, 0.0
    damping = 0.996 if root < 60 else 0.993
    for i in range(n, total + n):
        avg = damping * 0.5 * (buf[i - n] + buf[i - n - 1 if i - n - 1 >= 0 else 0])
        y = coef * avg + ap_x - coef * ap_y
        ap_x, ap_y = avg, y
        if buzz and y > buzz:
            y = buzz + 0.3 * (y - buzz)
        buf[i] = y
        out[i - n] = y
    out[-256:] *= np.linspace(1, 0, 256)
    return Sample(f"{name}{root}", _normalise(out), rate, root)


def fm_bell(name: str, root: int, seconds: float, ratio: float = 3.5, index: float = 4.0):
    rate = MELODIC_RATE
    f = hz(root)
    t = np.arange(int(seconds * rate)) / rate
    env = np.exp(-t / (seconds / 4))
    top = NYQUIST_MARGIN * rate / 2 ** (9 / 12)
    index = min(index, max(0.5, (top - f) / (ratio * f)))  # keep the sidebands below Nyquist
    wave = env * np.sin(2 * np.pi * f * t + index * env * np.sin(2 * np.pi * ratio * f * t))
    wave[-256:] *= np.linspace(1, 0, 256)
    return Sample(f"{name}{root}", _normalise(wave), rate, root)


def looped_noise(name: str, root: int, seconds: float, colour: float):
    rate = MELODIC_RATE
    rng = _rng(name + str(root))
    n = int(seconds * rate)
    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum *= 1 / np.maximum(freqs, 20) ** colour  # circular: the loop has no seam
    wave = np.fft.irfft(spectrum, n)
    lead = 256
    wave = np.concatenate([wave[-lead:], wave, wave[:16]])  # circular: valid points on both sides of the loop
    return Sample(f"{name}{root}", _normalise(wave, 0.7), rate, root, 0, (lead, lead + n))


# ---------------------------------------------------------------- the 16 families
def family_samples(family: int) -> tuple[list[Sample], dict]:
    """Samples (one per root) and instrument-level generators for one GM family."""
    name = GM_FAMILIES[family].split()[0][:6]
    make = {
        0: lambda r: decaying_tone(name, r, [
            (n * np.sqrt(1 + 0.0004 * n * n), 1 / n**1.7, 1.6 / (1 + 0.35 * n)) for n in range(1, 24)
        ], 0.7, noise=0.08),  # piano: stretched partials, faster decay up the series, hammer noise
        1: lambda r: decaying_tone(name, r, [(1, 1.0, 0.45), (3.93, 0.35, 0.08), (9.2, 0.12, 0.03)], 0.7,
                                   noise=0.02),  # marimba-like bar modes
        2: lambda r: looped_tone(name, r, [(1, 1), (2, 0.7), (3, 0.45), (4, 0.4), (6, 0.3), (8, 0.25)]),
        3: lambda r: plucked(name, r, 0.7, brightness=0.6),
        4: lambda r: plucked(name, r, 0.7, brightness=0.25),
        5: lambda r: looped_tone(name, r, saw(64, 0.75)),  # bowed: bright, with vibrato (below)
        6: lambda r: looped_tone(name, r, vowel(r)),  # ensembles and choirs: a sung 'ah', darker than strings
        7: lambda r: looped_tone(name, r, saw(64, 0.85)),
        8: lambda r: looped_tone(name, r, odd(64, 1.0, even=0.08), attack_noise=0.05),
        9: lambda r: looped_tone(name, r, [(1, 1.0), (2, 0.22), (3, 0.09), (4, 0.03)], attack_noise=0.25),
        10: lambda r: looped_tone(name, r, odd(64, 0.9, even=0.3)),
        11: lambda r: looped_tone(name, r, odd(32, 2.0), loop_seconds=0.2),
        12: lambda r: fm_bell(name, r, 0.9),
        13: lambda r: plucked(name, r, 0.8, brightness=0.9, buzz=0.35),
        14: lambda r: decaying_tone(name, r, [(1, 1.0, 0.18), (1.5, 0.5, 0.07), (2.76, 0.3, 0.04)], 0.5,
                                    noise=0.3),
        15: lambda r: looped_noise(name, r, 0.4, colour=0.6),
    }[family]
    looped = family in (2, 5, 6, 7, 8, 9, 10, 11, 15)
    envelopes = {
        2: dict(attackVolEnv=0.005, releaseVolEnv=0.08),
        5: dict(attackVolEnv=0.06, releaseVolEnv=0.25, vibLfoToPitch=12, freqVibLFO=-500, delayVibLFO=0.2),
        6: dict(attackVolEnv=0.09, releaseVolEnv=0.4),
        7: dict(attackVolEnv=0.03, releaseVolEnv=0.15),
        8: dict(attackVolEnv=0.02, releaseVolEnv=0.1),
        9: dict(attackVolEnv=0.03, releaseVolEnv=0.12, vibLfoToPitch=8, freqVibLFO=-400, delayVibLFO=0.25),
        10: dict(attackVolEnv=0.005, releaseVolEnv=0.08),
        11: dict(attackVolEnv=0.35, releaseVolEnv=0.9),
        15: dict(attackVolEnv=0.2, releaseVolEnv=0.6),
    }.get(family, dict(attackVolEnv=0.001, releaseVolEnv=0.25 if family != 14 else 0.1))
    gens: dict = {}
    for key, value in envelopes.items():
        if key in ("vibLfoToPitch", "freqVibLFO"):
            gens[key] = value
        else:
            gens[key] = timecents(value)
    gens["sampleModes"] = 1 if looped else 0
    gens["reverbEffectsSend"] = 150
    detune = family in (6, 11)  # ensembles and pads: two detuned layers
    return [make(r) for r in ROOTS], {"gens": gens, "detune": detune}


def program_variation(program: int) -> dict:
    """Preset-level (relative) generators that tell the 8 programs of a family apart."""
    i = program % 8
    gens = {"initialFilterFc": -260 * i} if i else {}
    if program in (11, 12, 13):  # vibraphone, marimba, xylophone: vibraphone gets its motor tremolo
        if program == 11:
            gens.update(modLfoToVolume=60, freqModLFO=-300)
        if program == 13:
            gens["coarseTune"] = 12
    return gens


# ---------------------------------------------------------------- drums
def _shaped_noise(rng: np.random.Generator, n: int, low: float, high: float, rate: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, n)


def drum_samples() -> dict[str, Sample]:
    rate = DRUM_RATE
    rng = _rng("drums")

    def t(seconds):
        return np.arange(int(seconds * rate)) / rate

    def sample(name, wave):
        wave[-64:] *= np.linspace(1, 0, 64)
        return Sample(name, _normalise(wave), rate, 60)

    out = {}
    x = t(0.35)
    sweep = 50 + 100 * np.exp(-x / 0.03)
    out["kick"] = sample("kick", np.exp(-x / 0.12) * np.sin(2 * np.pi * np.cumsum(sweep) / rate))
    x = t(0.25)
    out["snare"] = sample("snare", np.exp(-x / 0.06) * (0.6 * np.sin(2 * np.pi * 185 * x)
                                                        + _shaped_noise(rng, len(x), 1500, 9000, rate) * 3))
    x = t(0.08)
    out["stick"] = sample("stick", np.exp(-x / 0.01) * (np.sin(2 * np.pi * 1700 * x)
                                                        + 0.5 * _shaped_noise(rng, len(x), 2000, 6000, rate) * 4))
    x = t(0.3)
    bursts = sum(np.where(x >= d, np.exp(-(x - d) / (0.008 if d < 0.03 else 0.09)), 0)
                 for d in (0, 0.011, 0.023, 0.034))
    out["clap"] = sample("clap", bursts * _shaped_noise(rng, len(x), 800, 2600, rate))
    x = t(0.06)
    out["hat"] = sample("hat", np.exp(-x / 0.015) * _shaped_noise(rng, len(x), 7000, 14000, rate))
    x = t(0.45)
    out["openhat"] = sample("openhat", np.exp(-x / 0.15) * _shaped_noise(rng, len(x), 6000, 14000, rate))
    x = t(0.4)
    out["tom"] = sample("tom", np.exp(-x / 0.14) * np.sin(2 * np.pi * np.cumsum(120 + 60 * np.exp(-x / 0.05)) / rate))

    def metal(seconds: float, decay: float, partials: Sequence[tuple[float, float]], noise_band: tuple[float, float],
              noise_amp: float, seed: str) -> np.ndarray:
        x = t(seconds)
        r = _rng(seed)
        wave = sum(a * np.sin(2 * np.pi * f * x + r.uniform(0, 6.3)) for f, a in partials)
        wave = wave + noise_amp * _shaped_noise(r, len(x), *noise_band, rate) * 6
        return np.exp(-x / decay) * wave

    crash_partials = [(f, 0.25) for f in _rng("crash").uniform(3000, 11000, 40)]
    out["crash"] = sample("crash", metal(1.1, 0.4, crash_partials, (4000, 15000), 1.0, "crash"))
    # china: trashy and lower, a strong band around 500-900 Hz, quicker decay: not a crash
    china_partials = [(f, 0.5) for f in _rng("china").uniform(420, 1300, 24)]
    out["china"] = sample("china", metal(1.0, 0.25, china_partials, (1500, 6000), 0.8, "china") * (
        1 + 0.6 * np.sin(2 * np.pi * 87 * t(1.0))))
    out["ride"] = sample("ride", metal(0.9, 0.35, [(f, 0.3) for f in (2960, 3430, 5120, 6710)], (5000, 12000),
                                      0.25, "ride"))
    out["bell"] = sample("bell", metal(0.8, 0.3, [(1530, 1.0), (2470, 0.6), (3390, 0.4), (5150, 0.3)], (6000, 9000),
                                      0.05, "bell"))
    out["splash"] = sample("splash", metal(0.6, 0.15, [(f, 0.25) for f in _rng("splash").uniform(5000, 12000, 30)],
                                          (6000, 15000), 1.0, "splash"))
    x = t(0.3)
    cowbell = np.sign(np.sin(2 * np.pi * 540 * x)) + np.sign(np.sin(2 * np.pi * 800 * x))
    spectrum = np.fft.rfft(cowbell)
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    spectrum *= np.exp(-((freqs - 900) / 700) ** 2)  # the classic bandpassed two-square cowbell
    out["cowbell"] = sample("cowbell", np.exp(-x / 0.07) * np.fft.irfft(spectrum, len(x)))
    tri = [(4200, 1.0), (11900, 0.3), (7600, 0.2)]
    out["triangle"] = sample("triangle", metal(1.2, 0.5, tri, (8000, 14000), 0.01, "triangle"))
    out["mutetri"] = sample("mutetri", metal(0.15, 0.04, tri, (8000, 14000), 0.01, "mutetri"))
    x = t(0.25)
    out["shaker"] = sample("shaker", np.exp(-x / 0.05) * _shaped_noise(rng, len(x), 4000, 12000, rate))
    x = t(0.3)
    out["whistle"] = sample("whistle", np.minimum(1, x / 0.02) * np.exp(-x / 0.2) * np.sin(2 * np.pi * 2300 * x))
    return out


# GM drum key -> (sample, semitone shift, exclusive class)
DRUM_MAP = {
    35: ("kick", -2, 0), 36: ("kick", 0, 0), 37: ("stick", 0, 0), 38: ("snare", 0, 0), 39: ("clap", 0, 0),
    40: ("snare", 2, 0), 41: ("tom", -5, 0), 42: ("hat", 0, 1), 43: ("tom", -3, 0), 44: ("hat", -2, 1),
    45: ("tom", 0, 0), 46: ("openhat", 0, 1), 47: ("tom", 2, 0), 48: ("tom", 4, 0), 49: ("crash", 0, 0),
    50: ("tom", 7, 0), 51: ("ride", 0, 0), 52: ("china", 0, 0), 53: ("bell", 0, 0), 54: ("shaker", 5, 0),
    55: ("splash", 0, 0), 56: ("cowbell", 0, 0), 57: ("crash", 2, 0), 58: ("shaker", -7, 0), 59: ("ride", -2, 0),
    60: ("tom", 14, 0), 61: ("tom", 11, 0), 62: ("tom", 9, 0), 63: ("tom", 12, 0), 64: ("tom", 5, 0),
    65: ("tom", 10, 0), 66: ("tom", 6, 0), 67: ("cowbell", 7, 0), 68: ("cowbell", 4, 0), 69: ("shaker", 0, 0),
    70: ("shaker", 3, 0), 71: ("whistle", 0, 2), 72: ("whistle", -5, 2), 73: ("shaker", -3, 0),
    74: ("shaker", -5, 0), 75: ("stick", 5, 0), 76: ("stick", 2, 0), 77: ("stick", -1, 0), 78: ("tom", 16, 0),
    79: ("tom", 12, 0), 80: ("mutetri", 0, 3), 81: ("triangle", 0, 3),
}


# ---------------------------------------------------------------- assembly
def build(path: Path = OUT) -> int:
    from gradmidi.instruments import GM_PROGRAMS

    samples: list[Sample] = []
    instruments: list[Instrument] = []
    for family in range(16):
        family_set, spec = family_samples(family)
        first = len(samples)
        samples += family_set
        zones = []
        bounds = [0] + [(a + b) // 2 + 1 for a, b in pairwise(ROOTS)] + [128]
        layers = [(-7, 0), (7, 1)] if spec["detune"] else [(0, None)]
        for fine, pan_side in layers:
            for i, _ in enumerate(ROOTS):
                gens = {"keyRange": (bounds[i], bounds[i + 1] - 1), **spec["gens"]}
                if fine:
                    gens["fineTune"] = fine
                    gens["pan"] = -150 if pan_side == 0 else 150
                    gens["initialAttenuation"] = 30
                zones.append(Zone(gens, sample=first + i))
        instruments.append(Instrument(GM_FAMILIES[family][:19], zones))

    drums = drum_samples()
    drum_index = {}
    for name, s in drums.items():
        drum_index[name] = len(samples)
        samples.append(s)
    kit_zones = []
    for key, (name, shift, exclusive) in sorted(DRUM_MAP.items()):
        gens = {"keyRange": (key, key), "overridingRootKey": key - shift, "releaseVolEnv": timecents(0.2),
                "reverbEffectsSend": 100}
        if exclusive:
            gens["exclusiveClass"] = exclusive
        kit_zones.append(Zone(gens, sample=drum_index[name]))
    instruments.append(Instrument("Standard Kit", kit_zones))

    presets = [
        Preset(GM_PROGRAMS[p][:19], p, 0, [Zone(program_variation(p), instrument=p // 8)]) for p in range(128)
    ]
    presets.append(Preset("Standard Kit", 0, 128, [Zone({}, instrument=16)]))
    return write_sf2(
        path, FONT_NAME, samples, instruments, presets,
        copyright_="CC0 1.0: made by gradmidi soundfonts/build.py from synthesised waveforms",
        comment="All 128 General MIDI programs (one synthesised timbre per family, varied per program) "
                "and a GM drum kit (keys 35-81) in bank 128.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=OUT)
    args = parser.parse_args()
    size = build(args.out)
    print(f"{args.out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
