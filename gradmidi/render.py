"""Scores to audio, in process, through libfluidsynth.

Events are fed to a FluidSynth synth between blocks of ``fluid_synth_write_float`` written
straight into one numpy buffer (no audio driver, no copies). Scores are split into channel
groups rendered on parallel threads (each its own synth; FluidSynth runs with the interpreter
lock released) and summed: the synth and its reverb and
chorus are linear, so the mix equals the single render up to float rounding (checked by the
tests). The result is loudness-normalised to ``LOUDNESS_TARGET`` LUFS (ITU-R BS.1770-4,
as pyloudnorm measures it) with the sample peak kept at or below ``PEAK_CEILING`` dBFS, so renders of
different runs can be compared by ear, then written atomically (WAV, FLAC or OGG).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np

from .errors import GradmidiError
from .fonts import font_info, resolve_soundfont

LOUDNESS_TARGET = -16.0  # LUFS integrated: a common target for streamed audio
PEAK_CEILING = -1.0  # dBFS
TAIL_SECONDS = 2.0  # the longest release/reverb we wait for after the last note
PARALLEL_MIN_SECONDS = 10.0  # below this, loading the font again costs more than the second thread saves
MAX_RENDER_BYTES = 4 << 30  # all render buffers together: about 3.4 hours at 44.1 kHz
WRITE_FRAMES = 1 << 16  # frames handed to libsndfile at a time
FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
INSTALL_HINT = (
    "FluidSynth is not installed: Debian/Ubuntu: sudo apt-get install libfluidsynth3 (or fluidsynth); "
    "Fedora: sudo dnf install fluidsynth-libs; Arch: sudo pacman -S fluidsynth; macOS: brew install fluid-synth"
)


def load_fluidsynth() -> ModuleType:
    """pyfluidsynth, with libfluidsynth behind it; a GradmidiError naming what to install otherwise."""
    try:
        # pyfluidsynth prints its library search to stdout when $CI is set: keep stdout ours.
        with contextlib.redirect_stdout(io.StringIO()):
            import fluidsynth
    except ImportError:
        raise GradmidiError(INSTALL_HINT) from None
    except OSError as exc:
        raise GradmidiError(f"{INSTALL_HINT} ({exc})") from None
    if not hasattr(fluidsynth, "Synth"):  # PyPI's unrelated 'fluidsynth' package shadows the module
        raise GradmidiError("the 'fluidsynth' module found is not pyfluidsynth: pip uninstall fluidsynth; "
                            "pip install pyfluidsynth")
    write = fluidsynth._fl.fluid_synth_write_float
    write.restype = ctypes.c_int
    write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                      ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    return fluidsynth


@dataclass(frozen=True)
class Timeline:
    """A parsed score: its tracks, its length, and the notes per channel (for splitting)."""

    tracks: list[list[tuple[int, bytes]]]
    ticks_per_beat: int
    seconds: float  # the score's length (its End of Track)
    notes: dict[int, int]  # channel -> note-ons
    path: Path | None = None  # the file itself, when the timeline is the whole score
    changes: tuple[str, ...] = ()  # what an editor changed in a gradmidi score, or why it reads as plain MIDI

    def channels(self) -> list[int]:
        return sorted(self.notes)

    def uses_chorus(self) -> bool:
        return any(e[0] & 0xF0 == 0xB0 and e[1] == 93 and e[2] > 0 for track in self.tracks for _, e in track)

    def only(self, channels: set[int]) -> Timeline:
        """The same score with only these channels' messages (meta events, such as tempo, kept)."""
        tracks = [[(t, e) for t, e in track if e[0] >= 0xF0 or (e[0] & 0x0F) in channels] for track in self.tracks]
        notes = {ch: n for ch, n in self.notes.items() if ch in channels}
        return Timeline(tracks, self.ticks_per_beat, self.seconds, notes)


def read_timeline(path: str | os.PathLike) -> Timeline:
    """Parses any MIDI file for rendering or playing (a gradmidi score, edited or not, or plain MIDI);
    one-line errors for what cannot be read."""
    from .scorefile import load_tracks, score_from_tracks
    from .smf import tempo_map, ticks_to_seconds

    tracks, division = load_tracks(path)
    changes = tuple(score_from_tracks(path, tracks, division).changes)  # a damaged gradmidi header is refused
    notes: dict[int, int] = {}
    for track in tracks:
        for _, e in track:
            if e[0] & 0xF0 == 0x90 and e[2] > 0:
                notes[e[0] & 0x0F] = notes.get(e[0] & 0x0F, 0) + 1
    if not notes:
        raise GradmidiError(f"{path}: the score holds no notes to render (an empty run?)")
    end = max(tick for track in tracks for tick, _ in track[-1:])
    seconds = float(ticks_to_seconds([end], tempo_map(tracks), division)[0])
    return Timeline(tracks, division, seconds, notes, Path(path), changes)


def render_timeline(
    timeline: Timeline, soundfont: Path, rate: int = 44100, tail: float = TAIL_SECONDS,
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Float32 stereo frames, at FluidSynth's own level (synth.gain 0.2, reverb on).

    FluidSynth's own MIDI player feeds the events, timed by the synth's sample clock (as in
    ``fluidsynth -F``), so no Python runs per event; the audio is written straight into one
    numpy buffer with ``fluid_synth_write_float``.
    """
    from .smf import encode_smf

    fluidsynth = load_fluidsynth()
    # The chorus unit costs ~10 % of a render; when nothing can reach it (no CC 93 in the
    # score, no chorus send in the font) it only processes silence, so it is switched off.
    chorus = timeline.uses_chorus() or font_info(soundfont).chorus
    synth = fluidsynth.Synth(gain=0.2, samplerate=rate, channels=16, **{
        "synth.chorus.active": int(chorus), "player.timing-source": "sample", "synth.lock-memory": 0,
    })
    player = None
    with tempfile.TemporaryDirectory(prefix="gradmidi-render-") as folder:
        try:
            # update_midi_preset=1: every channel gets its preset, channel 10 the drum kit (bank 128)
            if synth.sfload(str(soundfont), 1) < 0:  # pyfluidsynth reports a failed load only this way
                raise GradmidiError(f"{soundfont}: FluidSynth could not load this SoundFont")
            midi = timeline.path
            if midi is None:
                midi = Path(folder) / "part.mid"
                midi.write_bytes(encode_smf(timeline.tracks, timeline.ticks_per_beat))
            player = fluidsynth.new_fluid_player(synth.synth)
            if fluidsynth.fluid_player_add(player, str(midi).encode()) != 0:
                raise GradmidiError(f"{midi}: FluidSynth could not read this MIDI file")
            fluidsynth.fluid_player_play(player)
            total = int(math.ceil((timeline.seconds + tail) * rate))
            out = np.zeros((total, 2), dtype=np.float32)
            base, write, handle = out.ctypes.data, fluidsynth._fl.fluid_synth_write_float, synth.synth
            done = 0
            while done < total:
                n = min(total - done, 1 << 15)
                write(handle, n, base, 2 * done, 2, base, 2 * done + 1, 2)
                done += n
                if progress:
                    progress(done / rate)
            return out
        finally:
            if player is not None:
                fluidsynth.fluid_player_stop(player)
                fluidsynth.delete_fluid_player(player)
            synth.delete()


def channel_groups(timeline: Timeline, jobs: int) -> list[set[int]]:
    """Channels split into ``jobs`` groups of about equal note counts (greedy, largest first)."""
    groups: list[tuple[int, set[int]]] = [(0, set()) for _ in range(min(jobs, len(timeline.notes)))]
    for ch in sorted(timeline.notes, key=lambda c: -timeline.notes[c]):
        i = min(range(len(groups)), key=lambda g: groups[g][0])
        load, members = groups[i]
        groups[i] = (load + timeline.notes[ch], members | {ch})
    return [members for _, members in groups if members]


def render_parallel(timeline: Timeline, soundfont: Path, rate: int, tail: float, jobs: int,
                    progress: Callable[[float], None] | None = None) -> np.ndarray:
    """The channel groups rendered side by side, one synth per thread, and summed. Threads, not
    processes: pyfluidsynth calls libfluidsynth through ctypes, which lets go of the interpreter
    lock, so the synths run on separate cores with no process start and no copies between them."""
    groups = channel_groups(timeline, jobs)
    done = [0.0] * len(groups)  # seconds rendered by each thread; progress is the slowest's
    reporting = threading.Lock()  # so that progress never goes back

    def render_group(i: int) -> np.ndarray:
        def advanced(seconds: float) -> None:
            with reporting:
                done[i] = seconds
                if progress:
                    progress(min(done))

        return render_timeline(timeline.only(groups[i]), soundfont, rate, tail, advanced)

    with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="gradmidi-render") as pool:
        parts = list(pool.map(render_group, range(len(groups))))
    mix = parts[0]
    for part in parts[1:]:
        mix += part
    return mix


def normalise_loudness(audio: np.ndarray, rate: int, target: float = LOUDNESS_TARGET,
                       ceiling: float = PEAK_CEILING) -> tuple[np.ndarray, float]:
    """Scales to ``target`` LUFS, then down if the peak would pass ``ceiling`` dBFS; returns (audio, LUFS)."""
    from .loudness import integrated_loudness

    loudness = integrated_loudness(audio, rate)
    if not math.isfinite(loudness):
        raise GradmidiError("the render is silent (or under 0.4 s): nothing to normalise")
    gain = 10 ** ((target - loudness) / 20)
    peak = max(float(audio.max()), -float(audio.min())) * gain
    limit = 10 ** (ceiling / 20)
    if peak > limit:
        gain *= limit / peak
    audio *= np.float32(gain)
    return audio, loudness + 20 * math.log10(gain)


@dataclass(frozen=True)
class RenderResult:
    path: Path
    seconds: float
    loudness: float  # LUFS after normalisation
    soundfont: Path
    jobs: int
    changes: tuple[str, ...] = ()  # what an editor changed in the score (see ScoreFile.changes)
    summary: str | None = None  # what the audio summarises, in words, when it is a summary


def render(
    score: str | os.PathLike,
    out: str | os.PathLike,
    soundfont: str | os.PathLike | None = None,
    *,
    rate: int = 44100,
    gain: float = 0.0,
    loudness: float | None = LOUDNESS_TARGET,
    jobs: int | None = None,
    tail: float = TAIL_SECONDS,
    progress: Callable[[float, float], None] | None = None,
    duration: float | None = None,
) -> RenderResult:
    """Renders a score (or any MIDI file) to WAV, FLAC or OGG (by ``out``'s suffix).

    ``loudness``: LUFS target (None keeps FluidSynth's own level); ``gain``: dB added after;
    ``jobs``: synths rendering channel groups side by side (default: every core; 1: one synth);
    ``duration``: seconds of audio at most, tail included: a longer run is summarised (summary.py).
    """
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise GradmidiError(f"{out}: unknown audio format {out.suffix or '(none)'}; use .wav, .flac or .ogg")
    if not 8000 <= rate <= 192000:
        raise GradmidiError(f"sample rate {rate} is out of range 8000-192000")
    if out.resolve() == Path(score).resolve():
        raise GradmidiError(f"{out}: refusing to write audio over the score")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise GradmidiError(f"{folder}: no such folder for the audio file")
    if not os.access(folder, os.W_OK):
        raise GradmidiError(f"{folder}: cannot write here (permission denied)")
    font = resolve_soundfont(soundfont)
    load_fluidsynth()
    from .summary import summarised  # reads the score: only when rendering

    with summarised(score, duration, tail) as (source, summary):
        result = _render(source, out, fmt, font, rate, gain, loudness, jobs, tail, progress)
    return replace(result, summary=summary.describe(tail) if summary else None)


def _render(score: Path, out: Path, fmt: tuple[str, str], font: Path, rate: int, gain: float, loudness: float | None,
            jobs: int | None, tail: float, progress: Callable[[float, float], None] | None) -> RenderResult:
    timeline = read_timeline(score)
    length = timeline.seconds + tail
    need = length * rate * 8  # float32 stereo, held whole
    if need > MAX_RENDER_BYTES:
        limit = MAX_RENDER_BYTES / (rate * 8) / 3600
        raise GradmidiError(f"{score}: the score lasts {timeline.seconds / 3600:.3g} h; a render is held in memory "
                            f"and stops at {limit:.2g} h at {rate} Hz: fit the run into less time "
                            "(duration=, every=, or gradmidi sonify --every)")
    jobs = max(1, jobs if jobs is not None else (os.cpu_count() or 1))
    jobs = max(1, min(jobs, int(MAX_RENDER_BYTES // need) - 1))  # every synth holds a whole-length buffer
    advanced = (lambda seconds: progress(seconds, length)) if progress else None
    if jobs > 1 and length >= PARALLEL_MIN_SECONDS and len(timeline.channels()) > 1:
        audio = render_parallel(timeline, font, rate, tail, jobs, advanced)
    else:
        jobs = 1
        audio = render_timeline(timeline, font, rate, tail, advanced)
    if loudness is not None:
        audio, measured = normalise_loudness(audio, rate, loudness)
    else:
        measured = float("nan")
    if gain:
        audio *= np.float32(10 ** (gain / 20))
    _write_atomic(out, audio, rate, fmt)
    return RenderResult(out, len(audio) / rate, measured + gain if loudness is not None else measured, font, jobs,
                        timeline.changes)


def _write_atomic(out: Path, audio: np.ndarray, rate: int, fmt: tuple[str, str]) -> None:
    import soundfile

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        # mkstemp makes the file 0600; the audio is shared like any file the user writes (0666 less umask).
        os.chmod(tmp, 0o666 & ~_umask())
        np.clip(audio, -1.0, 1.0, out=audio)
        if fmt[1] == "PCM_16":  # convert here: numpy is faster at it than libsndfile
            audio = np.multiply(audio, 32767.0, out=audio).round(out=audio).astype(np.int16)
        with soundfile.SoundFile(tmp, "w", rate, audio.shape[1], fmt[1], format=fmt[0]) as f:
            # In blocks: libsndfile's Vorbis encoder crashes on one long write (two minutes at 22.05 kHz).
            for start in range(0, len(audio), WRITE_FRAMES):
                f.write(audio[start:start + WRITE_FRAMES])
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask: from /proc where there is one (reading it elsewhere means setting it,
    for a moment in which another thread's new file would get the wrong mode)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fluidsynth_available() -> str | None:
    """None when rendering can work here, else why not (one line)."""
    try:
        load_fluidsynth()
    except GradmidiError as exc:
        return str(exc)
    return None
