"""SoundFonts: which one to use, and which General MIDI fonts this machine has.

Resolution order: the explicit argument, then ``GRADMIDI_SOUNDFONT``, then the font that
ships inside gradmidi (made by ``soundfonts/build.py``, so nothing is ever downloaded).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from .errors import GradmidiError

ENV_VAR = "GRADMIDI_SOUNDFONT"
CHORUS_SEND = 15  # SF2 generator chorusEffectsSend
BUNDLED_NAME = "gradmidi-gm.sf2"

# Where Debian/Ubuntu, Fedora, Arch and Homebrew put SoundFonts, plus per-user folders.
SYSTEM_FOLDERS = (
    "/usr/share/sounds/sf2", "/usr/share/sounds/sf3", "/usr/share/soundfonts", "/usr/share/sf2",
    "/usr/local/share/soundfonts", "/usr/local/share/sounds/sf2", "/opt/homebrew/share/soundfonts",
    "/opt/homebrew/share/fluid-synth", "/usr/local/share/fluid-synth", "~/.local/share/soundfonts",
    "~/.soundfonts", "~/Library/Audio/Sounds/Banks",
)


def bundled_soundfont() -> Path:
    return Path(str(files("gradmidi.soundfonts") / BUNDLED_NAME))


def resolve_soundfont(soundfont: str | os.PathLike | None = None) -> Path:
    """The font to use: argument, then $GRADMIDI_SOUNDFONT, then the bundled font."""
    if soundfont:
        chosen, where = Path(soundfont).expanduser(), "soundfont"
    elif os.environ.get(ENV_VAR):
        chosen, where = Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        chosen, where = bundled_soundfont(), "bundled soundfont"
    if not chosen.is_file():
        raise GradmidiError(f"{chosen}: no such SoundFont file (from {where})")
    return chosen


@dataclass(frozen=True)
class FontInfo:
    path: Path
    name: str
    size: int
    melodic: int  # programs present in bank 0
    drum_kits: int  # presets in bank 128
    chorus: bool = True  # whether any zone or modulator sends to the chorus unit

    @property
    def general_midi(self) -> bool:
        return self.melodic >= 128 and self.drum_kits >= 1


def font_info(path: str | os.PathLike) -> FontInfo:
    """Name and preset coverage, read from the RIFF structure (no synth needed)."""
    path = Path(path)
    name, phdr = path.stem, b""
    sends_chorus = False
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise GradmidiError(f"{path}: not a SoundFont 2 file")
        size_total = path.stat().st_size
        while f.tell() + 12 <= size_total:
            tag, size = f.read(4), struct.unpack("<I", f.read(4))[0]
            end = f.tell() + size + (size % 2)
            if tag == b"LIST" and f.read(4) != b"sdta":  # skip the sample data: it can be 100s of MB
                body = f.read(size - 4)
                inner = 0
                while inner + 8 <= len(body):
                    sub, sub_size = body[inner : inner + 4], struct.unpack("<I", body[inner + 4 : inner + 8])[0]
                    content = body[inner + 8 : inner + 8 + sub_size]
                    if sub == b"INAM":
                        name = content.split(b"\0")[0].decode("latin-1") or name
                    elif sub == b"phdr":
                        phdr = content
                    elif sub in (b"pgen", b"igen"):
                        sends_chorus |= any(
                            oper == CHORUS_SEND and amount > 0 for oper, amount in struct.iter_unpack("<Hh", content)
                        )
                    elif sub in (b"pmod", b"imod"):
                        sends_chorus |= any(rec[1] == CHORUS_SEND for rec in struct.iter_unpack("<HHhHH", content))
                    inner += 8 + sub_size + (sub_size % 2)
            f.seek(end)
    programs, kits = set(), 0
    for i in range(0, max(len(phdr) - 38, 0), 38):  # the last record is the terminal EOP
        program, bank = struct.unpack("<HH", phdr[i + 20 : i + 24])
        if bank == 0:
            programs.add(program)
        elif bank == 128:
            kits += 1
    return FontInfo(path, name, size_total, len(programs), kits, sends_chorus)


def system_fonts(include_all: bool = False) -> list[FontInfo]:
    """SoundFonts installed in the usual folders (General MIDI ones unless ``include_all``)."""
    found: dict[Path, FontInfo] = {}
    for folder in SYSTEM_FOLDERS:
        root = Path(folder).expanduser()
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() not in (".sf2", ".sf3") or not path.is_file():
                continue
            real = path.resolve()
            if real in found:
                continue
            try:
                info = font_info(real)
            except (OSError, GradmidiError, struct.error):
                continue
            if include_all or info.general_midi:
                found[real] = FontInfo(path, info.name, info.size, info.melodic, info.drum_kits, info.chorus)
    return list(found.values())
