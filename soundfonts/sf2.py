"""A small SoundFont 2.01 writer: samples, instruments (zones of generators), presets.

No maintained Python package writes SF2, so this is the format by hand (struct-based):
RIFF 'sfbk' holding LIST INFO (ifil, isng, INAM, ...), LIST sdta (smpl: 16-bit PCM, 46 zero
samples after each sample) and LIST pdta (phdr, pbag, pmod, pgen, inst, ibag, imod, igen,
shdr; every list closed by a terminal record).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# Generator operators used here (SoundFont 2.01, section 8.1.2).
GEN = {
    "initialFilterFc": 8, "initialFilterQ": 9, "modEnvToFilterFc": 11, "chorusEffectsSend": 15,
    "reverbEffectsSend": 16, "pan": 17, "modLfoToVolume": 13, "freqModLFO": 22, "freqVibLFO": 24, "delayVibLFO": 23,
    "vibLfoToPitch": 6,
    "attackModEnv": 26, "decayModEnv": 28, "sustainModEnv": 29, "releaseModEnv": 30,
    "attackVolEnv": 34, "holdVolEnv": 35, "decayVolEnv": 36, "sustainVolEnv": 37, "releaseVolEnv": 38,
    "keynumToVolEnvDecay": 40, "instrument": 41, "keyRange": 43, "velRange": 44,
    "initialAttenuation": 48, "coarseTune": 51, "fineTune": 52, "sampleID": 53, "sampleModes": 54,
    "scaleTuning": 56, "exclusiveClass": 57, "overridingRootKey": 58,
}
PADDING_ZEROS = 46


def timecents(seconds: float) -> int:
    """SF2 time unit: 1200 * log2(seconds)."""
    return int(round(1200 * np.log2(max(seconds, 0.001))))


@dataclass
class Sample:
    name: str
    data: np.ndarray  # float in [-1, 1]
    rate: int
    root_key: int
    correction_cents: int = 0
    loop: tuple[int, int] | None = None  # (start, end) in samples, end exclusive


@dataclass
class Zone:
    generators: dict[str, int | tuple[int, int]]
    sample: int | None = None  # instrument zones: sample index
    instrument: int | None = None  # preset zones: instrument index


@dataclass
class Instrument:
    name: str
    zones: list[Zone] = field(default_factory=list)


@dataclass
class Preset:
    name: str
    program: int
    bank: int
    zones: list[Zone] = field(default_factory=list)


def _name(text: str) -> bytes:
    return text.encode("ascii", "replace")[:19].ljust(20, b"\0")


def _chunk(tag: bytes, data: bytes) -> bytes:
    pad = b"\0" if len(data) % 2 else b""
    return tag + struct.pack("<I", len(data)) + data + pad


def _list(tag: bytes, chunks: list[bytes]) -> bytes:
    return _chunk(b"LIST", tag + b"".join(chunks))


def _zstr(text: str) -> bytes:
    data = text.encode("ascii", "replace") + b"\0"
    return data + (b"\0" if len(data) % 2 else b"")


def _gens(zone: Zone) -> list[bytes]:
    """Generators in the order the spec requires: keyRange, velRange first; sampleID/instrument last."""
    out = []
    items = dict(zone.generators)
    ranges = [(first, items.pop(first)) for first in ("keyRange", "velRange") if first in items]
    for name, value in ranges + list(items.items()):
        if isinstance(value, tuple):  # a range (only keyRange and velRange are): two bytes, low and high
            lo, hi = value
            out.append(struct.pack("<HBB", GEN[name], lo, hi))
        else:
            out.append(struct.pack("<Hh", GEN[name], int(value)))
    if zone.sample is not None:
        out.append(struct.pack("<HH", GEN["sampleID"], zone.sample))
    if zone.instrument is not None:
        out.append(struct.pack("<HH", GEN["instrument"], zone.instrument))
    return out


def write_sf2(path: str | os.PathLike[str], name: str, samples: list[Sample], instruments: list[Instrument],
              presets: list[Preset], copyright_: str = "", comment: str = "") -> int:
    """Writes the font; returns its size in bytes."""
    # sdta: all samples back to back, each followed by 46 zero samples.
    pcm, headers = [], []
    offset = 0
    for s in samples:
        ints = np.clip(np.round(s.data * 32767), -32768, 32767).astype("<i2")
        start, end = offset, offset + len(ints)
        loop_start, loop_end = (start + s.loop[0], start + s.loop[1]) if s.loop else (start, end - 1)
        headers.append(struct.pack("<20sIIIIIBbHH", _name(s.name), start, end, loop_start, loop_end, s.rate,
                                   s.root_key, s.correction_cents, 0, 1))
        pcm.append(ints.tobytes() + b"\0\0" * PADDING_ZEROS)
        offset = end + PADDING_ZEROS
    headers.append(struct.pack("<20sIIIIIBbHH", _name("EOS"), 0, 0, 0, 0, 0, 0, 0, 0, 0))

    def bags_and_gens(items: Sequence[Instrument | Preset], zones_of: Callable[[Instrument | Preset], list[Zone]]
                      ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        bag: list[bytes] = []
        gen: list[bytes] = []
        mod: list[bytes] = []
        for item in items:
            for zone in zones_of(item):
                bag.append(struct.pack("<HH", len(gen), 0))
                gen.extend(_gens(zone))
        bag.append(struct.pack("<HH", len(gen), 0))
        gen.append(b"\0\0\0\0")
        mod.append(b"\0" * 10)
        return bag, gen, mod

    ibag, igen, imod = bags_and_gens(instruments, lambda i: i.zones)
    inst, bag_index = [], 0
    for instrument in instruments:
        inst.append(struct.pack("<20sH", _name(instrument.name), bag_index))
        bag_index += len(instrument.zones)
    inst.append(struct.pack("<20sH", _name("EOI"), bag_index))

    ordered = sorted(presets, key=lambda p: (p.bank, p.program))
    pbag, pgen, pmod = bags_and_gens(ordered, lambda p: p.zones)
    phdr, bag_index = [], 0
    for preset in ordered:
        phdr.append(struct.pack("<20sHHHIII", _name(preset.name), preset.program, preset.bank, bag_index, 0, 0, 0))
        bag_index += len(preset.zones)
    phdr.append(struct.pack("<20sHHHIII", _name("EOP"), 0, 0, bag_index, 0, 0, 0))

    info = [
        _chunk(b"ifil", struct.pack("<HH", 2, 1)),
        _chunk(b"isng", _zstr("EMU8000")),
        _chunk(b"INAM", _zstr(name)),
        _chunk(b"ISFT", _zstr("gradmidi soundfont builder")),
    ]
    if copyright_:
        info.append(_chunk(b"ICOP", _zstr(copyright_)))
    if comment:
        info.append(_chunk(b"ICMT", _zstr(comment)))
    body = (
        b"sfbk"
        + _list(b"INFO", info)
        + _list(b"sdta", [_chunk(b"smpl", b"".join(pcm))])
        + _list(b"pdta", [
            _chunk(b"phdr", b"".join(phdr)), _chunk(b"pbag", b"".join(pbag)), _chunk(b"pmod", b"".join(pmod)),
            _chunk(b"pgen", b"".join(pgen)), _chunk(b"inst", b"".join(inst)), _chunk(b"ibag", b"".join(ibag)),
            _chunk(b"imod", b"".join(imod)), _chunk(b"igen", b"".join(igen)), _chunk(b"shdr", b"".join(headers)),
        ])
    )
    data = b"RIFF" + struct.pack("<I", len(body)) + body
    with open(path, "wb") as f:
        f.write(data)
    return len(data)
