"""Hostile inputs for every reader (inspect, decode, render, play, plot, sonify): random bytes,
truncated and bit-flipped real scores, MIDI that is not a score, huge meta events, absurd tempos,
counts and header values. Each ends in success on a still-valid file or in a one-line error and
a non-zero exit; never a traceback, a hang or unbounded memory. Plus norm values at the edges.

Bounded in CI; GRADMIDI_FUZZ_EXAMPLES (or the full harness, reliability/run.py) runs more.
"""

from __future__ import annotations

import json
import math
import random
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradmidi.cli import cli
from gradmidi.clock import Clock
from gradmidi.errors import GradmidiError
from gradmidi.mapping import Mapping, norms_to_pitches
from gradmidi.pipeline import ScoreBuilder
from gradmidi.score import ScoreHeader, StepRecord
from gradmidi.smf import HEADER_TAG, encode_smf, json_meta, parse_json_meta, read_smf
from gradmidi.voices import plan_voices
from reliabilitykit import FULL, child_env, fuzz_examples, record
from scorekit import make_score

EXAMPLES = fuzz_examples()
READERS = ("inspect", "decode", "plot", "render", "play")
CASE_SECONDS = 30.0  # the longest any reader may take on one hostile file (a hang otherwise)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _args(reader: str, path: Path, out: Path) -> list[str]:
    return {
        "inspect": ["inspect", str(path)],
        "decode": ["decode", str(path), "-o", str(out / "norms.csv")],
        "plot": ["plot", str(path), "-o", str(out / "plot.png"), "--max-points", "100"],
        "render": ["render", str(path), "-o", str(out / "audio.wav"), "--jobs", "1", "-q"],
        # Reading comes before the port opens, so a bad file is refused first; a good one then
        # fails on the port (no such port): both are one-line errors.
        "play": ["play", str(path), "--port", "gradmidi-no-such-port", "--api", "UNIX_JACK", "-q"],
    }[reader]


def check_reader(reader: str, path: Path, out: Path) -> str:
    """Runs a reader in process; returns 'ok' or 'error', failing on anything else."""
    started = time.monotonic()
    result = CliRunner().invoke(cli, _args(reader, path, out))
    took = time.monotonic() - started
    assert took < CASE_SECONDS, f"{reader} took {took:.1f} s"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        head = path.read_bytes()[:64]
        raise AssertionError(f"{reader} raised {result.exception!r} on {head!r}") from result.exception
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        return "ok"
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return "error"


@pytest.fixture(scope="module")
def real_score(tmp_path_factory) -> bytes:
    """A real score with notes, a NaN event, a silent voice step and an adaptive range change."""
    folder = tmp_path_factory.mktemp("real")

    def norms(step):
        values = [10.0 ** (-3 + step / 10), np.nan if step == 7 else 0.5, 1.0]
        return np.array(values), np.array([True, True, step % 3 > 0])

    make_score(folder / "real.mid", [("fc1", "Linear"), ("fc2", "Linear"), ("conv", "Conv2d")], norms, 24)
    return (folder / "real.mid").read_bytes()


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path


def _run_all(blob: bytes, out: Path, readers=READERS) -> dict[str, str]:
    path = out / "case.mid"
    path.write_bytes(blob)
    return {reader: check_reader(reader, path, out) for reader in readers}


# -------------------------------------------------------------------- property-based
@FUZZ
@given(blob=st.binary(max_size=400))
def test_random_bytes(blob, out):
    outcome = _run_all(blob, out, ("inspect", "decode"))
    assert outcome["inspect"] == outcome["decode"] == "error"  # no gradmidi header can be in random bytes


@FUZZ
@given(data=st.data())
def test_truncated_and_bit_flipped_scores(real_score, data, out):
    blob = bytearray(real_score[: data.draw(st.integers(0, len(real_score)), label="length")])
    for _ in range(data.draw(st.integers(0, 6), label="flips")):
        if blob:
            at = data.draw(st.integers(0, len(blob) - 1))
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
    _run_all(bytes(blob), out, ("inspect", "decode", "play"))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
HEADER_FIELDS = [("title",), ("voices",), ("voices", 0), ("voices", 0, "channel"), ("voices", 0, "program"),
                 ("voices", 0, "index"), ("voices", 0, "layers"), ("mapping",), ("mapping", "scale"),
                 ("mapping", "key"), ("mapping", "low_note"), ("mapping", "norm_range"), ("mapping", "velocity"),
                 ("mapping", "adaptive"), ("mapping", "adaptive_quantiles"), ("clock",), ("clock", "bpm"),
                 ("clock", "every"), ("clock", "slot_beats"), ("clock", "ticks_per_beat"), ("clock", "gate"),
                 ("info",), ("info", "first_step"), ("drums",), ("drums", "nan"), ("epoch_downbeat",)]


def _with_header(real_score: bytes, change) -> bytes:
    _, division, tracks = read_smf(real_score)
    for i, (tick, event) in enumerate(tracks[0]):
        parsed = parse_json_meta(event[3:] if event[2] < 0x80 else event[4:]) if event[:2] == b"\xff\x7f" else None
        if parsed and parsed[0] == HEADER_TAG:
            header = parsed[1]
            change(header)
            tracks[0][i] = (tick, json_meta(HEADER_TAG, header))
            return encode_smf(tracks, division)
    raise AssertionError("no header in the real score")


@FUZZ
@given(where=st.sampled_from(HEADER_FIELDS), value=JSON_VALUES)
def test_hostile_header_values(real_score, where, value, out):
    def change(header):
        target = header
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = value

    _run_all(_with_header(real_score, change), out, ("inspect", "decode", "play"))


@pytest.mark.parametrize("where", [("clock", "bpm"), ("clock", "every"), ("clock", "gate"), ("mapping", "velocity")])
def test_a_header_number_too_big_for_a_float_is_a_one_line_error(real_score, where, out):
    """JSON holds integers of any size; a check that calls float() on 10**400 overflowed (found by mypy)."""
    def change(header):
        header[where[0]][where[1]] = 10**400

    outcome = _run_all(_with_header(real_score, change), out, ("inspect", "decode", "play"))
    assert set(outcome.values()) == {"error"}


# -------------------------------------------------------------------- the corpus
def _smf(tracks: list[bytes], division: int = 480, ntracks: int | None = None, header_len: int = 6) -> bytes:
    head = b"MThd" + struct.pack(">I", header_len) + struct.pack(">HHH", 1, len(tracks) if ntracks is None else ntracks,
                                                               division)
    return head + b"".join(b"MTrk" + struct.pack(">I", len(t)) + t for t in tracks)


def _score_events(real_score: bytes, extra: list[tuple[int, bytes]], track: int = 1) -> bytes:
    """The real score with ``extra`` events put into a track before its End of Track."""
    _, division, tracks = read_smf(real_score)
    body = [e for e in tracks[track] if e[1][:2] != b"\xff\x2f"] + extra
    tracks[track] = sorted(body, key=lambda e: e[0])
    return encode_smf(tracks, division)


def corpus(real_score: bytes, size: int) -> dict[str, bytes]:
    rng = random.Random(9)
    cases = {
        "empty file": b"",
        "a MIDI header alone": _smf([]),
        "valid MIDI, not a gradmidi score": _smf([b"\x00\x90\x40\x40\x83\x60\x80\x40\x00\x00\xff\x2f\x00"]),
        "a huge meta event (length 2^28)": _smf([b"\x00\xff\x01\x81\x80\x80\x80\x00" + b"x" * 16]),
        "a huge sysex (length 2^28)": _smf([b"\x00\xf0\x81\x80\x80\x80\x00" + b"x" * 16]),
        "an endless variable-length number": _smf([b"\x00\xff\x01" + b"\xff" * 64]),
        "65535 tracks claimed": _smf([b"\x00\xff\x2f\x00"], ntracks=65535),
        "a track claiming 4 GB": b"MThd" + struct.pack(">IHHH", 6, 1, 1, 480) + b"MTrk\xff\xff\xff\xff\x00",
        "header length 2^32-1": b"MThd\xff\xff\xff\xff" + real_score[8:],
        "zero ticks per beat": real_score[:12] + b"\x00\x00" + real_score[14:],
        "one tick per beat (480x longer)": real_score[:12] + b"\x00\x01" + real_score[14:],
        "SMPTE division": real_score[:12] + b"\xe7\x28" + real_score[14:],
        "a tempo of 1 us per beat": _score_events(real_score, [(0, b"\xff\x51\x03\x00\x00\x01")], track=0),
        "a tempo of 16.7 s per beat": _score_events(real_score, [(0, b"\xff\x51\x03\xff\xff\xff")], track=0),
        "a note 10^12 ticks late (years)": _score_events(real_score, [(10**12, b"\x90\x40\x40")]),
        "a note 2^27 ticks late (days)": _score_events(real_score, [(2**27, b"\x90\x40\x40"),
                                                                    (2**27 + 1, b"\x80\x40\x00")]),
        "a data byte without status": _smf([b"\x00\x40\x40"]),
        "a header of 8 MB": _with_header(real_score, lambda h: h["info"].__setitem__("x", "a" * (8 << 20))),
        "a header that is a list": _with_header(real_score, lambda h: (h.clear(), h.__setitem__("voices", [[1]]))),
        "every=2^31, first step 2^53": _with_header(real_score, lambda h: (h["clock"].__setitem__("every", 2**31),
                                                                         h["info"].__setitem__("first_step", 2**53))),
        "a damaged range change": _score_events(real_score, [(0, json_meta(b"gradmidi-range", {"slot": "x"}))], 0),
        "an absurd range change": _score_events(real_score, [(0, json_meta(b"gradmidi-range",
                                                                           {"slot": 0, "log_range": [1e308, -1]}))], 0),
    }
    for i in range(size):
        n = rng.randrange(len(real_score))
        cases[f"truncated at {n}"] = real_score[:n]
        blob = bytearray(real_score)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        cases[f"bit flips #{i}"] = bytes(blob)
        cases[f"random bytes #{i}"] = b"MThd" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
    return cases


def test_fuzz_corpus_through_every_reader(real_score, tmp_path):
    cases = corpus(real_score, max(1, EXAMPLES // 10))
    outcomes: dict[str, int] = {}
    for name, blob in cases.items():
        # The CPU-heavy readers (plot, render) on the named hostile cases and a sample of the rest.
        heavy = not name.split(" #")[0].startswith(("random", "truncated", "bit")) or name.endswith("#0")
        readers = READERS if heavy else ("inspect", "decode", "play")
        for reader, outcome in _run_all(blob, tmp_path, readers).items():
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("error", 0) > 0
    record("hostile score files (corpus: 22 named cases, truncations, bit flips, random bytes)", len(cases),
           "one-line error or success through inspect, decode, play, plus plot and render on the named cases; "
           "no traceback, no hang", reader_runs=sum(outcomes.values()), errors=outcomes.get("error", 0),
           successes=outcomes.get("ok", 0))


def test_hostile_files_stay_bounded_in_a_real_process(real_score, tmp_path):
    """As a user runs it: real subprocesses, under a 2 GiB address-space limit and a timeout."""
    cases = corpus(real_score, 0)
    names = ["a note 10^12 ticks late (years)", "a header of 8 MB"] + (
        ["a huge meta event (length 2^28)", "one tick per beat (480x longer)", "65535 tracks claimed"] if FULL else [])
    limit = 2 << 30
    for name in names:
        path = tmp_path / "case.mid"
        path.write_bytes(cases[name])
        for reader in ("inspect", "render"):
            code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
                    "sys.argv = ['gradmidi'] + sys.argv[1:]; from gradmidi.cli import main; main()")
            result = subprocess.run([sys.executable, "-c", code, *_args(reader, path, tmp_path)], capture_output=True,
                                    text=True, timeout=120, stdin=subprocess.DEVNULL, env=child_env())
            assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, (name, result.stderr)
            if result.returncode:
                assert result.returncode == 1 and result.stderr.count("\n") == 1, (name, reader, result.stderr)
    record("hostile score files in real processes (2 GiB address-space limit)", len(names) * 2,
           "one-line error or success, within the memory limit")


# -------------------------------------------------------------------- logs for sonify
LOG_TEXT = st.lists(st.one_of(
    st.text(alphabet="0123456789,.-einfaNTxy \t\"", max_size=30),
    st.builds(lambda s, n, v: f"{s},{n},{v}", st.sampled_from(["0", "1", "-5", "1e30", "inf", "nan", "2.5", "x"]),
              st.sampled_from(["a", "b", "", "é"]),
              st.sampled_from(["1.0", "nan", "-inf", "0", "-3", "1e308", "5e-324"])),
), max_size=12)


@FUZZ
@given(lines=LOG_TEXT, header=st.sampled_from(["step,name,value", "step,tag,norm", "a,b,c", ""]),
       kind=st.sampled_from([".csv", ".jsonl"]))
def test_sonify_of_hostile_logs(lines, header, kind, out):
    log = out / f"log{kind}"
    if kind == ".csv":
        log.write_text("\n".join([header, *lines]) + "\n")
    else:
        log.write_text("\n".join(json.dumps(dict(zip(["step", "name", "value"], line.split(",")))) if i % 2 else line
                                 for i, line in enumerate(lines)) + "\n")
    result = CliRunner().invoke(cli, ["sonify", str(log), "-o", str(out / "log.mid")])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"sonify raised {result.exception!r}") from result.exception
    if result.exit_code == 0:
        for reader in ("inspect", "decode"):  # what sonify wrote reads back
            assert check_reader(reader, out / "log.mid", out) == "ok"
    else:
        lines_out = result.output.strip().splitlines()
        assert len(lines_out) == 1 and lines_out[0].startswith("Error: "), result.output


def test_sonify_of_a_damaged_tensorboard_file(tmp_path):
    folder = tmp_path / "tb"
    folder.mkdir()
    (folder / "events.out.tfevents.1.host").write_bytes(bytes(random.Random(1).getrandbits(8) for _ in range(500)))
    result = CliRunner().invoke(cli, ["sonify", str(folder), "-o", str(tmp_path / "x.mid")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1


# -------------------------------------------------------------------- norm values
EDGE_NORMS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 5e-324, 2.2e-308, 1e-300, 1e308, 1e-4, 1.0, 1e2, 1e5]


def test_edge_norms_have_a_defined_pitch():
    mapping = Mapping()
    pitches = norms_to_pitches(np.array(EDGE_NORMS), (-4.0, 2.0), mapping)
    silent = [not (math.isfinite(n) and n > 0) for n in EDGE_NORMS]
    # NaN, +-Inf, negative and zero: silence (-1; NaN and Inf sound as drum events instead).
    assert [p == -1 for p in pitches] == silent
    notes = mapping.notes
    # Positive finite norms, subnormals and 1e308 included: a note of the scale, clamped to the register.
    assert all(p in notes for p, s in zip(pitches, silent) if not s)
    assert pitches[EDGE_NORMS.index(5e-324)] == notes[0] and pitches[EDGE_NORMS.index(1e308)] == notes[-1]
    assert pitches[EDGE_NORMS.index(1e-4)] == notes[0] and pitches[EDGE_NORMS.index(1e2)] == notes[-1]


@FUZZ
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True), min_size=3, max_size=3),
       present=st.lists(st.booleans(), min_size=3, max_size=3))
def test_any_float_norms_go_through_the_pipeline(values, present):
    voices, assignment = plan_voices([("a", "Linear"), ("b", "Linear"), ("c", "Linear")])
    builder = ScoreBuilder(ScoreHeader(voices, Mapping(), Clock(), "t"), assignment, aggregate="rms")
    slots = []
    for step in range(3):
        slots += builder.add_step(StepRecord(step, np.array(values), np.array(present)))
    slots += builder.finish()
    assert len(slots) == 3
    for slot in slots:
        for i, (v, p) in enumerate(zip(values, present)):
            heard = p and math.isfinite(v) and v > 0
            assert (slot.pitches[i] >= 0) == heard
        kinds = {e.kind for e in slot.events}
        if slot.index == 0:  # the alarms sound at the first step (then every repeat_every steps)
            assert ("nan" in kinds) == any(p and math.isnan(v) for v, p in zip(values, present))
            assert ("inf" in kinds) == any(p and math.isinf(v) for v, p in zip(values, present))


def test_norm_lists_of_the_wrong_length_are_a_clear_error():
    voices, assignment = plan_voices([("a", "Linear"), ("b", "Linear")])
    builder = ScoreBuilder(ScoreHeader(voices, Mapping(), Clock(), "t"), assignment)
    for norms, present in (([1.0], [True, True]), ([1.0, 2.0, 3.0], [True, True, True]), ([1.0, 2.0], [True])):
        with pytest.raises(GradmidiError, match="give one of each per layer"):
            builder.add_step(StepRecord(0, np.array(norms), np.array(present)))
    assert len(builder.add_step(StepRecord(0, np.array([1.0, 2.0]), np.array([True, True])))) == 1  # and it goes on


def test_property_classes_are_recorded():
    """The rows of the hypothesis properties above (each ran EXAMPLES cases when this runs)."""
    record("hypothesis: random bytes as a score (inspect, decode)", EXAMPLES, "one-line error every time")
    record("hypothesis: a real score truncated anywhere and bit-flipped up to 6 times (inspect, decode, play)",
           EXAMPLES, "one-line error or success, no traceback")
    record(f"hypothesis: any JSON value in any of {len(HEADER_FIELDS)} header fields (inspect, decode, play)", EXAMPLES,
           "one-line error (a damaged header, and why), or success")
    record("hypothesis: hostile CSV and JSONL logs for gradmidi sonify, plus a damaged TensorBoard file", EXAMPLES + 1,
           "one-line error, or a score that reads back (inspect, decode)")
    record("norm values: NaN, +-Inf, negative, zero, subnormal, 1e308, any float (hypothesis)", EXAMPLES,
           "NaN/Inf: silent note + drum event; <= 0: silent; subnormal/1e308: the register's edge; "
           "wrong lengths: one-line error")


def test_a_log_row_with_a_quoted_line_break_is_still_a_one_line_error(tmp_path):
    """Found by the fuzzing: the row quoted in the message held the line break."""
    log = tmp_path / "log.csv"
    log.write_text('step,name,value\n"\n0",a,x\n')
    result = CliRunner().invoke(cli, ["sonify", str(log), "-o", str(tmp_path / "x.mid")])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.endswith("not a step, name, value row: \\n0,a,x\n")
