"""General MIDI programs and percussion, layer kinds and channels (event drums: events.py).

Torch-free: layer kinds are recognised from class names so that replayed logs and
live runs share the same table.
"""

from __future__ import annotations

import re

from .errors import GradmidiError

# General MIDI Level 1 program names, 0-based as on the wire.
GM_PROGRAMS: tuple[str, ...] = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone",
    "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ",
    "Reed Organ", "Accordion", "Harmonica", "Tango Accordion",
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar",
    "Distortion Guitar", "Guitar Harmonics",
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2",
    "Choir Aahs", "Voice Oohs", "Synth Voice", "Orchestra Hit",
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet",
    "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2",
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax",
    "Oboe", "English Horn", "Bassoon", "Clarinet",
    "Piccolo", "Flute", "Recorder", "Pan Flute",
    "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)",
    "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)",
    "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)",
    "FX 5 (brightness)", "FX 6 (goblin)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    "Sitar", "Banjo", "Shamisen", "Koto",
    "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock",
    "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet",
    "Telephone Ring", "Helicopter", "Applause", "Gunshot",
)
assert len(GM_PROGRAMS) == 128

# General MIDI percussion on channel 10, keys 27-87 (GM Level 2's range; Level 1 has 35-81).
GM_DRUMS: dict[int, str] = dict(enumerate((
    "High Q", "Slap", "Scratch Push", "Scratch Pull", "Sticks", "Square Click", "Metronome Click",
    "Metronome Bell", "Acoustic Bass Drum", "Bass Drum 1", "Side Stick", "Acoustic Snare", "Hand Clap",
    "Electric Snare", "Low Floor Tom", "Closed Hi-Hat", "High Floor Tom", "Pedal Hi-Hat", "Low Tom",
    "Open Hi-Hat", "Low-Mid Tom", "Hi-Mid Tom", "Crash Cymbal 1", "High Tom", "Ride Cymbal 1",
    "Chinese Cymbal", "Ride Bell", "Tambourine", "Splash Cymbal", "Cowbell", "Crash Cymbal 2", "Vibraslap",
    "Ride Cymbal 2", "Hi Bongo", "Low Bongo", "Mute Hi Conga", "Open Hi Conga", "Low Conga", "High Timbale",
    "Low Timbale", "High Agogo", "Low Agogo", "Cabasa", "Maracas", "Short Whistle", "Long Whistle",
    "Short Guiro", "Long Guiro", "Claves", "Hi Wood Block", "Low Wood Block", "Mute Cuica", "Open Cuica",
    "Mute Triangle", "Open Triangle", "Shaker", "Jingle Bell", "Bell Tree", "Castanets", "Mute Surdo",
    "Open Surdo",
), start=27))
assert len(GM_DRUMS) == 61

# Layer kinds from the class name, first match wins; each kind sounds in a different GM family so
# that the kinds can be told apart by ear (mallets, keys, pads, strings, winds, ...).
LAYER_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("linear", re.compile(r"^Conv1D$")),  # transformers' Conv1D (GPT-2) is a linear map; torch's is Conv1d
    ("attention", re.compile(r"attention|attn|mha|qkv", re.I)),
    ("recurrent", re.compile(r"^(rnn|lstm|gru)(cell)?$|recurrent", re.I)),
    ("convolution", re.compile(r"conv", re.I)),
    ("normalisation", re.compile(r"norm", re.I)),
    ("embedding", re.compile(r"embedding", re.I)),
    ("linear", re.compile(r"linear|dense|experts?$|router", re.I)),  # fused MoE experts and routers are linear
)

# A linear map is an attention projection when its own name says so (GPT-2's c_attn, q_proj, a
# fused qkv) or when it sits inside an attention module (GPT-2's attn.c_proj, BERT's
# attention.output.dense): what it does, which its class cannot say.
ATTENTION_PROJECTION = re.compile(r"^(c_attn|[qkv]_proj|\w*qkv\w*|query_key_value|query|key|value)$", re.I)
ATTENTION_MODULE = re.compile(r"attn|attention", re.I)

# Each kind has a family; successive voices of one kind walk through it, so two
# linear layers are two different keyboards rather than one piano twice.
KIND_PROGRAMS: dict[str, tuple[int, ...]] = {
    "convolution": (12, 11, 13, 9, 8, 10),  # mallets: Marimba, Vibraphone, Xylophone, ...
    "linear": (0, 4, 6, 7, 2, 5),  # keys: Grand Piano, Electric Piano 1, Harpsichord, ...
    "normalisation": (89, 88, 91, 94),  # pads: Warm, New Age, Choir, Halo
    "embedding": (48, 49, 50, 44),  # string ensembles
    "attention": (73, 71, 68, 70),  # woodwinds: Flute, Clarinet, Oboe, Bassoon
    "recurrent": (42, 40, 41, 43),  # bowed solo strings: Cello, Violin, Viola, Contrabass
    "other": (24, 25, 26, 27),  # guitars
}


def kind_program(kind: str, nth: int = 0) -> int:
    """The GM program for the ``nth`` voice (0-based) of a layer kind."""
    family = KIND_PROGRAMS.get(kind, KIND_PROGRAMS["other"])
    return family[nth % len(family)]


DRUM_CHANNEL = 9
MELODIC_CHANNELS: tuple[int, ...] = tuple(c for c in range(16) if c != DRUM_CHANNEL)


def layer_kind(class_name: str, path: str = "") -> str:
    """The sound family of a layer, from its class (``Conv2d`` -> convolution) and, for a linear map,
    from its module path (``h.0.attn.c_attn`` -> attention)."""
    for kind, pattern in LAYER_KINDS:
        if pattern.search(class_name):
            if kind == "linear" and _projects_attention(path):
                return "attention"
            return kind
    return "other"


def _projects_attention(path: str) -> bool:
    parts = [part for part in path.split(".") if part]
    if not parts:
        return False
    return bool(ATTENTION_PROJECTION.match(parts[-1])) or any(ATTENTION_MODULE.search(p) for p in parts[:-1])


def program_number(program: int | str) -> int:
    """A 0-based GM program from a number or a (case-insensitive, unambiguous prefix of a) name."""
    if isinstance(program, bool):
        raise GradmidiError(f"program must be 0-127 or a General MIDI name, not {program!r}")
    if isinstance(program, int):
        if 0 <= program <= 127:
            return program
        raise GradmidiError(f"program {program} is out of range: General MIDI programs are 0-127")
    text = str(program).strip().lower()
    if text.isdigit():
        return program_number(int(text))
    exact = [i for i, name in enumerate(GM_PROGRAMS) if name.lower() == text]
    if exact:
        return exact[0]
    prefixed = [i for i, name in enumerate(GM_PROGRAMS) if name.lower().startswith(text)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        names = ", ".join(GM_PROGRAMS[i] for i in prefixed[:4])
        raise GradmidiError(f"program {program!r} is ambiguous: it could be {names}")
    raise GradmidiError(f"unknown General MIDI program {program!r} (try 'gradmidi programs')")
