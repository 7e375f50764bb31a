"""Finished runs replayed into scores: CSV, JSONL and TensorBoard logs written by SummaryWriter."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import gradmidi
from scorekit import assert_decodes_to

RNG = np.random.default_rng(0)


def sonify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradmidi", "sonify", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_tensorboard_log_from_summarywriter_replays_to_the_logged_norms(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    logged = {}
    writer = SummaryWriter(tmp_path / "tb")
    for step in range(60):
        for layer in ("conv1.weight", "fc1.weight"):
            value = float(10 ** RNG.uniform(-3, 1))
            writer.add_scalar(f"grad_2.0_norm/{layer}", value, step)  # Lightning's grad_norm layout
            logged[(step, f"grad_2.0_norm/{layer}")] = value
        writer.add_scalar("train/loss", 1.0, step)  # not a gradient norm: not a voice by default
    writer.close()
    result = sonify(str(tmp_path / "tb"), "-o", str(tmp_path / "tb.mid"))
    assert result.returncode == 0, result.stderr
    voices = gradmidi.read_score(tmp_path / "tb.mid").header.voices
    assert [v.name for v in voices] == ["grad_2.0_norm/conv1.weight", "grad_2.0_norm/fc1.weight"]
    assert voices[0].kind == "convolution"
    assert_decodes_to(tmp_path / "tb.mid", logged)


def test_hugging_face_layout_and_user_tags(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path / "hf")
    for step in range(0, 100, 10):
        writer.add_scalar("train/grad_norm", 0.5 + step / 100, step)
        writer.add_scalar("train/learning_rate", 1e-3, step)
    writer.close()
    assert sonify(str(tmp_path / "hf"), "-o", str(tmp_path / "hf.mid")).returncode == 0
    assert [v.name for v in gradmidi.read_score(tmp_path / "hf.mid").header.voices] == ["train/grad_norm"]
    result = sonify(str(tmp_path / "hf"), "-o", str(tmp_path / "lr.mid"), "--tags", "train/learning_*")
    assert result.returncode == 0, result.stderr
    assert [v.name for v in gradmidi.read_score(tmp_path / "lr.mid").header.voices] == ["train/learning_rate"]
    assert "missing step(s)" in sonify(str(tmp_path / "hf"), "-o", str(tmp_path / "x.mid")).stderr


def test_csv_and_jsonl_with_unsorted_duplicated_and_nan_steps(tmp_path):
    rows = [(3, "a", 0.2), (0, "a", 0.1), (1, "a", 0.3), (1, "a", 0.4), (2, "a", float("nan")), (0, "b", 2.0)]
    (tmp_path / "log.csv").write_text("step,name,value\n" + "".join(f"{s},{n},{v}\n" for s, n, v in rows))
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s, "name": n, "value": v}) + "\n"
                                                for s, n, v in rows))
    expected = {(3, "a"): 0.2, (0, "a"): 0.1, (1, "a"): 0.4, (2, "a"): float("nan"), (0, "b"): 2.0}
    for source in ("log.csv", "log.jsonl"):
        result = sonify(str(tmp_path / source), "-o", str(tmp_path / f"{source}.mid"))
        assert result.returncode == 0, result.stderr
        for said in ("out of order", "1 duplicated step", "1 NaN/Inf value"):
            assert said in result.stderr
        assert_decodes_to(tmp_path / f"{source}.mid", expected)
        assert ("nan" in gradmidi.read_score(tmp_path / f"{source}.mid").summary()["first_event_step"])


@pytest.mark.parametrize("make, words", [
    (lambda d: d.mkdir(), "no TensorBoard event files"),
    (lambda d: (d.mkdir(), (d / "events.out.tfevents.1.host").write_bytes(b"\x00garbage" * 40)), "no readable scalar"),
    (lambda d: d.with_suffix(".csv").write_text("step,value\n1,2\n"), "no name/tag/voice/layer column"),
])
def test_bad_logs_are_one_line_errors(tmp_path, make, words):
    target = tmp_path / "logs"
    make(target)
    source = target if target.exists() else target.with_suffix(".csv")
    result = sonify(str(source), "-o", str(tmp_path / "out.mid"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error:") and words in result.stderr, result.stderr
    assert not (tmp_path / "out.mid").exists()
