"""Every example runs as a user would run it, and leaves a score that decodes."""

import subprocess
import sys
from pathlib import Path

import gradmidi

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_plain_loop_example_writes_a_score_with_epoch_markers(tmp_path):
    out = tmp_path / "digits.mid"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "plain_loop.py"), "--out", str(out), "--epochs", "2"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    summary = gradmidi.read_score(out).summary()
    assert summary["steps"] == 2 * 57  # 1,797 digits in batches of 32
    assert [v["name"] for v in summary["voices"]] == ["0", "2", "3"]
    assert [text for _, text in summary["markers"] if text.startswith("epoch")] == ["epoch 1", "epoch 2"]
    assert summary["scale"] == "D major_pentatonic"
