"""A new user's first hour: each stumble found by trying gradmidi as a newcomer would, pinned.

Real processes, real files, real FluidSynth: every test here failed before its fix.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from scorekit import make_score

import gradmidi

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradmidi", *args], capture_output=True, text=True, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=300, **kwargs)


def train(son: gradmidi.Sonifier, model: nn.Module, steps: int, inputs: int = 6) -> None:
    torch.manual_seed(0)
    for _ in range(steps):
        model.zero_grad()
        loss = model(torch.randn(8, inputs)).pow(2).mean()
        loss.backward()
        son.step(loss=loss)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


@pytest.fixture(scope="module")
def score(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("score") / "run.mid"
    model = small_model()
    with gradmidi.Sonifier(model, path) as son:
        train(son, model, 40)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- bugs -----------------------------------------------------------------------------------------
def test_rendered_audio_is_readable_by_others_as_the_umask_allows(score, tmp_path):
    old = os.umask(0o022)
    try:
        wav = tmp_path / "run.wav"
        gradmidi.render(score, wav)
        model = small_model()
        with gradmidi.Sonifier(model, tmp_path / "son.mid", audio=tmp_path / "son.flac") as son:
            train(son, model, 10)
        from gradmidi.report import build_report

        build_report([score], tmp_path / "report")
    finally:
        os.umask(old)
    assert mode(wav) == 0o644
    assert mode(tmp_path / "son.flac") == 0o644
    assert mode(tmp_path / "report" / "run.ogg") == 0o644
    assert mode(tmp_path / "report" / "run.ogg") == mode(tmp_path / "report" / "index.html")


def test_rendered_audio_follows_a_stricter_umask_too(score, tmp_path):
    old = os.umask(0o027)
    try:
        gradmidi.render(score, tmp_path / "run.ogg")
    finally:
        os.umask(old)
    assert mode(tmp_path / "run.ogg") == 0o640


@pytest.mark.parametrize("command", [["decode", "{score}"], ["programs"], ["inspect", "{score}"]])
def test_a_closed_pipe_ends_the_command_quietly(score, command):
    args = " ".join(a.format(score=score) for a in command)
    line = f"{sys.executable} -m gradmidi {args} | head -3; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=120, executable="/bin/bash")
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr == ""
    assert result.returncode in (0, 141)  # finished before head left, or stopped as SIGPIPE stops a command


def test_plot_score_leaves_the_users_matplotlib_backend_alone(score):
    code = ("import matplotlib; matplotlib.use('svg'); import gradmidi; from gradmidi.plot import plot_score; "
            f"plot_score(gradmidi.read_score({str(score)!r})); print(matplotlib.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"


# -- plots ----------------------------------------------------------------------------------------
def test_plot_of_a_silent_score_counts_its_voices_and_warns_nothing(tmp_path):
    path = make_score(tmp_path / "silent.mid", [("a", "Linear"), ("b", "Linear")],
                      lambda step: (np.zeros(2), np.zeros(2, bool)), 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from gradmidi.plot import plot

        drawn = plot(path, tmp_path / "silent.png")
    assert len(drawn.voice_labels) == 2
    cli = run("plot", str(path), "-o", str(tmp_path / "cli.png"))
    assert cli.returncode == 0, cli.stderr
    assert cli.stderr.strip() == f"{tmp_path / 'cli.png'}: 2 voices, 0 events"


def test_plot_norm_lines_do_not_join_across_a_silent_stretch(tmp_path):
    from gradmidi.plot import plot_score

    path = make_score(tmp_path / "gap.mid", [("a", "Linear")],
                      lambda step: (np.full(1, 0.1), np.full(1, not 10 <= step < 30)), 40)
    line = plot_score(gradmidi.read_score(path)).figure.axes[1].lines[0]
    x = np.asarray(line.get_xdata(), float)
    segments = np.split(x, np.flatnonzero(np.isnan(x)))
    assert [list(s[~np.isnan(s)][[0, -1]]) for s in segments] == [[0, 9], [30, 39]]


def test_plot_gives_two_voices_of_one_kind_clearly_different_colours(tmp_path):
    from matplotlib.colors import rgb_to_hsv, to_rgb

    from gradmidi.plot import plot_score

    path = make_score(tmp_path / "two.mid", [("fc1", "Linear"), ("fc2", "Linear")],
                      lambda step: (np.full(2, 0.1), np.ones(2, bool)), 10)
    roll = plot_score(gradmidi.read_score(path)).figure.axes[0]
    first, second = (rgb_to_hsv(to_rgb(c.get_facecolor()[0]))[0] for c in roll.collections[:2])
    assert min(abs(first - second), 1 - abs(first - second)) > 0.05  # hues apart, not one hue light and dark


# -- silent surprises -----------------------------------------------------------------------------
def test_duration_and_bpm_together_are_refused_naming_both():
    with pytest.raises(gradmidi.GradmidiError, match=r"bpm=90 and duration=5 both set the tempo"):
        gradmidi.Sonifier(small_model(), None, duration=5, total_steps=100, bpm=90)


def test_duration_raising_a_given_every_is_warned_naming_both():
    with pytest.warns(UserWarning, match=r"every=4 raised to 100 to fit total_steps=10000 into duration=5 s"):
        son = gradmidi.Sonifier(small_model(), None, duration=5, total_steps=10000, every=4)
    assert son.header.clock.every == 100
    son.close()


def test_total_steps_without_duration_is_refused():
    with pytest.raises(gradmidi.GradmidiError, match=r"total_steps= is only used with duration="):
        gradmidi.Sonifier(small_model(), None, total_steps=100)


def test_an_exact_voice_name_beats_a_pattern_whatever_the_order():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(6)])
    with gradmidi.Sonifier(model, None, programs={"0": "Violin", "4": 12, "*": "Flute"}) as son:
        programs = {v.name: v.program for v in son.voices}
    violin, flute = gradmidi.instruments.GM_PROGRAMS.index("Violin"), gradmidi.instruments.GM_PROGRAMS.index("Flute")
    assert programs == {"0": violin, "1": flute, "2": flute, "3": flute, "4": 12, "5": flute}


@pytest.mark.parametrize("name", ["son.wav", "son.png", "son.csv"])
def test_a_score_is_not_written_under_a_name_promising_other_content(tmp_path, name):
    with pytest.raises(gradmidi.GradmidiError, match=rf"{name}: a \.\w+ name promises .*: name it \.mid"):
        gradmidi.Sonifier(small_model(), tmp_path / name)
    assert not (tmp_path / name).exists()


def test_sonify_refuses_an_audio_name_for_its_score(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,name,value\n0,fc,0.5\n1,fc,0.6\n")
    result = run("sonify", str(log), "-o", str(tmp_path / "new.wav"))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: -o {tmp_path / 'new.wav'}: a .wav name promises audio, but this is a "
                                     "MIDI score: name it .mid (or render it: gradmidi render)")
    assert not (tmp_path / "new.wav").exists()


def test_decode_refuses_an_image_name_for_its_csv(score, tmp_path):
    result = run("decode", str(score), "-o", str(tmp_path / "dec.png"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: -o {tmp_path / 'dec.png'}: decode writes CSV: name it .csv"
    assert not (tmp_path / "dec.png").exists()


def test_a_model_that_is_not_a_module_gets_one_line_naming_model():
    with pytest.raises(gradmidi.GradmidiError, match=r"^model must be a torch.nn.Module .*, not 'notamodel'$"):
        gradmidi.Sonifier("notamodel", None)


def test_step_after_close_is_warned_once(tmp_path):
    model = small_model()
    son = gradmidi.Sonifier(model, tmp_path / "run.mid")
    train(son, model, 3)
    son.close()
    with pytest.warns(UserWarning, match=r"step\(\) after close\(\)") as caught:
        train(son, model, 3)
    assert len([w for w in caught if "after close" in str(w.message)]) == 1
    assert son.steps == 3


def test_two_sonifiers_on_one_path_are_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "run.mid"
    first = gradmidi.Sonifier(small_model(), path)
    with pytest.raises(gradmidi.GradmidiError, match="already being written by another Sonifier"):
        gradmidi.Sonifier(small_model(), tmp_path / "." / "run.mid")
    first.close()
    gradmidi.Sonifier(small_model(), path).close()


def write_log(path: Path, rows: list[tuple[int, str, float]]) -> Path:
    path.write_text("step,name,value\n" + "".join(f"{s},{n},{v}\n" for s, n, v in rows))
    return path


def test_sonify_takes_a_loss_series_as_the_loss_and_hears_its_jump_as_a_loss_spike(tmp_path):
    rows = [(s, "fc", 0.5) for s in range(60)] + [(s, "train/loss", 2.0 if s != 40 else 50.0) for s in range(60)]
    result = run("sonify", str(write_log(tmp_path / "log.csv", rows)), "-o", str(tmp_path / "run.mid"))
    assert result.returncode == 0, result.stderr
    assert "train/loss is the loss" in result.stderr
    score = gradmidi.read_score(tmp_path / "run.mid")
    assert [v.name for v in score.header.voices] == ["fc"]
    assert [(score.step_of(slot), kind) for slot, kind in score.drums] == [(40, "loss_spike")]


def test_sonify_has_the_mapping_and_clock_options_of_a_live_run(tmp_path):
    rows = [(s, name, 0.01 * (1 + s)) for s in range(200) for name in ("enc.0", "enc.1", "head")]
    log = write_log(tmp_path / "log.csv", rows)
    out = tmp_path / "run.mid"
    result = run("sonify", str(log), "-o", str(out), "--duration", "20", "--norm-range", "1e-3", "10", "--adaptive",
                 "--voices", "enc.*", "--voices", "head", "--programs", "enc.*=Violin,head=12")
    assert result.returncode == 0, result.stderr
    header = gradmidi.read_score(out).header
    assert [(v.name, v.program) for v in header.voices] == [("enc.*", 40), ("head", 12)]
    assert header.mapping.norm_range == (1e-3, 10.0) and header.mapping.adaptive
    assert header.clock.bpm == pytest.approx(60 * 200 * 0.25 / 20)


@pytest.mark.parametrize("args, message", [
    (["--bpm", "90", "--duration", "5"], "Error: --bpm 90 and --duration 5 both set the tempo: give one of them"),
    (["--norm-range", "1", "0.5"], "Error: --norm-range (1.0, 0.5) is invalid: need 0 < low < high < inf"),
    (["--programs", "zz*=Flute"], "Error: --programs pattern 'zz*' matches no voice or layer"),
    (["--programs", "Flute"], "Error: --programs: expected PATTERN=PROGRAM, not 'Flute'"),
])
def test_sonify_option_errors_name_the_flags_typed(tmp_path, args, message):
    log = write_log(tmp_path / "log.csv", [(s, "fc", 0.5) for s in range(10)])
    result = run("sonify", str(log), "-o", str(tmp_path / "run.mid"), *args)
    assert result.returncode == 1
    assert result.stderr.strip() == message
    assert not (tmp_path / "run.mid").exists()


def test_sonify_raising_a_given_every_to_fit_the_duration_says_so(tmp_path):
    log = write_log(tmp_path / "log.csv", [(s, "fc", 0.5) for s in range(10000)])
    result = run("sonify", str(log), "-o", str(tmp_path / "run.mid"), "--duration", "5", "--every", "4")
    assert result.returncode == 0, result.stderr
    assert "note: --every 4 raised to 100 to fit 10000 steps into --duration 5" in result.stderr
    assert gradmidi.read_score(tmp_path / "run.mid").header.clock.every == 100


def test_sonify_of_a_score_says_it_is_a_score_not_a_log(score, tmp_path):
    result = run("sonify", str(score), "-o", str(tmp_path / "out.mid"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {score} is a MIDI score, not a log: sonify reads")


# -- messages and help ----------------------------------------------------------------------------
def test_help_shows_every_command_summary_whole():
    result = run("--help")
    assert result.returncode == 0
    commands = result.stdout.split("Commands:")[1].strip().splitlines()
    assert len(commands) == 12
    assert not [line for line in commands if line.rstrip().endswith("...")]


def test_every_option_of_every_command_has_help():
    from gradmidi.cli import cli

    missing = [f"{name} {'/'.join(p.opts)}" for name, command in cli.commands.items() for p in command.params
               if isinstance(p, __import__("click").Option) and not p.help]
    assert missing == []


def test_live_errors_on_the_command_line_name_its_flags(score):
    result = run("play", str(score), "--synth", "--driver", "nosuch")
    assert result.returncode == 1
    assert "--driver DRIVER" in result.stderr and "live=" not in result.stderr
    ports = run("ports")
    assert "live=" not in ports.stdout + ports.stderr and "api=" not in ports.stdout + ports.stderr


@pytest.mark.parametrize("cut", [15, 20, 300])
def test_a_truncated_score_says_it_is_truncated_or_damaged(score, tmp_path, cut):
    bad = tmp_path / "cut.mid"
    bad.write_bytes(score.read_bytes()[:cut])
    result = run("inspect", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {bad}: not a readable MIDI file (")
    assert "truncated" in result.stderr or "damaged" in result.stderr
    assert "unpack" not in result.stderr and "buffer" not in result.stderr


def test_markers_quote_layer_names_that_read_as_numbers():
    from gradmidi.score import Event

    assert Event(12, "spike", ("0", "2", "4"), 2.923).label() == "spike '0', '2', '4' (2.923) @ step 12"
    assert Event(11, "nan", ("fc1", "features.0")).label() == "nan fc1, features.0 @ step 11"
    assert Event(3, "inf", ("a, b",)).label() == "inf 'a, b' @ step 3"


CTRL_C_TRAINER = """
import sys, time, torch, torch.nn as nn, gradmidi
model = nn.Sequential(nn.Linear(4, 4))
with gradmidi.Sonifier(model, sys.argv[1]) as son:
    while True:
        model.zero_grad(); model(torch.randn(2, 4)).sum().backward(); son.step()
        print("step", flush=True)
        time.sleep(0.1)  # Ctrl-C lands here, in the user's code, nearly always
"""


def test_ctrl_c_traceback_ends_in_the_users_code_and_the_score_is_marked_interrupted(tmp_path):
    import signal

    from reliabilitykit import child_env, default_signals

    script = tmp_path / "train.py"
    script.write_text(CTRL_C_TRAINER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run.mid")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, env=child_env(),
                            preexec_fn=default_signals)
    try:
        for _ in range(5):
            proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    frames = [line for line in err.splitlines() if line.strip().startswith("File ")]
    assert err.rstrip().endswith("KeyboardInterrupt")
    assert frames and "gradmidi" not in frames[-1], err
    assert gradmidi.read_score(tmp_path / "run.mid").markers[-1][1] == "interrupted"


def test_report_shows_epochs_markers_and_range_changes_under_the_files_name(tmp_path):
    import html as html_lib

    from gradmidi.report import build_report

    model = small_model()
    path = tmp_path / "lr-sweep.mid"
    with gradmidi.Sonifier(model, path, adaptive=True, adaptive_warmup=10, adaptive_every=20) as son:
        for _ in range(3):
            train(son, model, 15)
            son.epoch()
        son.marker("lr decay")
    score = gradmidi.read_score(path)
    assert len(score.ranges) > 1  # the adaptive range did change
    page = html_lib.unescape(build_report([path], tmp_path / "report", audio=False).read_text())
    assert "<h2>lr-sweep.mid (Sequential)</h2>" in page
    for text in ("epoch 1", "epoch 2", "epoch 3", "lr decay", "span the register"):
        assert text in page, text


def test_every_sonifier_option_is_in_the_readme():
    import inspect

    readme = (REPO / "README.md").read_text()
    options = list(inspect.signature(gradmidi.Sonifier).parameters)[2:]  # after model, path
    assert [name for name in options if f"`{name}`" not in readme] == []


# -- the next stumbles, found the same way ----------------------------------------------------------
@pytest.mark.parametrize("content", [
    b"\xef\xbb\xbfstep,name,value\n0,fc,0.5\n1,fc,0.6\n",  # a spreadsheet's UTF-8 with a byte-order mark
    b"step;name;value\n0;fc;0.5\n1;fc;0.6\n",  # a spreadsheet's ';'
    b"step\tname\tvalue\n0\tfc\t0.5\n1\tfc\t0.6\n",  # tabs
], ids=["bom", "semicolons", "tabs"])
def test_sonify_reads_csv_as_spreadsheets_save_it(tmp_path, content):
    log = tmp_path / "log.csv"
    log.write_bytes(content)
    result = run("sonify", str(log), "-o", str(tmp_path / "run.mid"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith("run.mid: 2 steps, 1 series from " + str(log))
    assert [v.name for v in gradmidi.read_score(tmp_path / "run.mid").header.voices] == ["fc"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_sonify_of_a_log_that_is_not_utf8_is_one_line(tmp_path, suffix):
    log = tmp_path / f"log{suffix}"
    latin1 = b"step,name,value\n0,f\xe9,0.5\n" if suffix == ".csv" else b'{"step": 0, "name": "f\xe9", "value": 1}\n'
    log.write_bytes(latin1)
    result = run("sonify", str(log), "-o", str(tmp_path / "run.mid"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {log}: not UTF-8 text (byte 0xe9 at offset")
    assert "Traceback" not in result.stderr


def test_sonify_of_a_file_it_cannot_read_names_what_it_reads(tmp_path):
    log = tmp_path / "metrics.json"
    log.write_text('{"step": 0}')
    result = run("sonify", str(log), "-o", str(tmp_path / "run.mid"))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: {log}: sonify reads a TensorBoard log folder or event file "
                                     "(*tfevents*), a .csv or a .jsonl, not a .json file")


def test_an_empty_score_file_says_it_is_empty(tmp_path):
    empty = tmp_path / "run.mid"
    empty.touch()
    result = run("inspect", str(empty))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {empty}: an empty file, not a MIDI file")


def test_a_fully_frozen_model_points_to_include_frozen():
    model = small_model().requires_grad_(False)
    with pytest.raises(gradmidi.GradmidiError, match=r"every parameter of the model is frozen.*include_frozen=True"):
        gradmidi.Sonifier(model, None)


def test_step_before_backward_is_warned_once(tmp_path):
    model = small_model()
    with pytest.warns(UserWarning, match=r"no layer had a gradient at step 0.*after loss.backward\(\)") as caught:
        with gradmidi.Sonifier(model, tmp_path / "run.mid") as son:
            for _ in range(5):
                son.step()
    assert len([w for w in caught if "no layer had a gradient" in str(w.message)]) == 1


def test_a_gradient_on_the_first_step_warns_nothing(tmp_path):
    model = small_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gradmidi.Sonifier(model, tmp_path / "run.mid") as son:
            train(son, model, 3)


@pytest.mark.parametrize("loss, message", [
    (torch.ones(4), r"loss= must be the step's one loss value, not a tensor of shape \(4,\)"),
    ("abc", r"loss= must be a number or a one-element tensor, not 'abc'"),
])
def test_a_loss_that_is_not_one_number_is_refused(tmp_path, loss, message):
    model = small_model()
    with gradmidi.Sonifier(model, tmp_path / "run.mid") as son:
        model(torch.randn(2, 6)).sum().backward()
        with pytest.raises(gradmidi.GradmidiError, match=message):
            son.step(loss=loss)
        son.step(loss=torch.tensor([0.5]))  # one element, any shape: fine
    assert gradmidi.read_score(tmp_path / "run.mid").summary()["steps"] == 1


def test_a_path_that_is_not_a_file_name_is_one_line():
    with pytest.raises(gradmidi.GradmidiError, match=r"^path must be a \.mid file name .* not 5$"):
        gradmidi.Sonifier(small_model(), 5)


def test_layer_names_beyond_latin1_survive_into_the_score_and_its_markers(tmp_path):
    model = nn.ModuleDict({"编码器": nn.Linear(3, 3), "dé coder": nn.Linear(3, 3)})
    path = tmp_path / "run.mid"
    with gradmidi.Sonifier(model, path) as son:
        for step in range(12):
            model.zero_grad()
            scale = 1e4 if step == 10 else 1.0
            (model["编码器"](torch.randn(2, 3)).sum() * scale + model["dé coder"](torch.randn(2, 3)).sum()).backward()
            son.step()
    score = gradmidi.read_score(path)
    assert [v.name for v in score.header.voices] == ["编码器", "dé coder"]
    assert any(text.startswith("spike") for _, text in score.markers)
    result = run("inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert "编码器" in result.stdout


def test_gradmidi_render_stays_the_function_after_its_module_is_imported(score, tmp_path):
    code = (f"import gradmidi, gradmidi.report; r = gradmidi.render({str(score)!r}, {str(tmp_path / 'x.wav')!r}); "
            "print(r.path.name)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "x.wav"
