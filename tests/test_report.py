"""The HTML report, opened in a real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradmidi
from scorekit import make_score

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"]


def run_scores(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)

    def calm(step):
        return 10 ** (-1 + 0.05 * rng.normal(size=2)), np.ones(2, bool)

    def wild(step):
        values = 10 ** (-1 + step * 0.2 + 0.05 * rng.normal(size=2))
        return (values if step < 20 else np.array([np.nan, np.nan])), np.ones(2, bool)

    layers = [("conv", "Conv2d"), ("fc", "Linear")]
    return [make_score(folder / "calm.mid", layers, calm, 48), make_score(folder / "wild.mid", layers, wild, 48)]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (./dev test installs it)")
def test_report_opens_in_chromium_with_every_image_and_audio_loaded(tmp_path):
    from playwright.sync_api import sync_playwright

    scores = run_scores(tmp_path)
    result = subprocess.run([sys.executable, "-m", "gradmidi", "report", *map(str, scores), "-o",
                             str(tmp_path / "report")], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    index = Path(result.stdout.strip())
    assert index == tmp_path / "report" / "index.html"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(index.as_uri())
        page.wait_for_function("[...document.images].every(i => i.complete)", timeout=20_000)
        page.wait_for_function("[...document.querySelectorAll('audio')].every(a => a.readyState >= 1)",
                               timeout=20_000)
        widths = page.evaluate("[...document.images].map(i => i.naturalWidth)")
        durations = page.evaluate("[...document.querySelectorAll('audio')].map(a => a.duration)")
        voice_rows = page.evaluate("[...document.querySelectorAll('table.voices')].map(t => t.rows.length - 1)")
        event_rows = page.evaluate("[...document.querySelectorAll('section.run')].map("
                                   "s => s.querySelectorAll('tr.event').length)")
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert len(widths) == 2 and all(w > 0 for w in widths)
    assert len(durations) == 2 and all(d > 0 for d in durations)
    assert voice_rows == [2, 2]
    expected_events = [len(gradmidi.read_score(s).drums) for s in scores]
    assert event_rows == expected_events and expected_events[0] == 0 and expected_events[1] > 0
    assert all(url.startswith("file://") for url in requests)  # nothing from the network
    assert (ARTIFACTS / "report.png").stat().st_size > 20_000


def test_report_refuses_bad_inputs_before_writing_anything(tmp_path):
    good = run_scores(tmp_path)[0]
    (tmp_path / "notes.txt").write_text("mine")
    result = subprocess.run([sys.executable, "-m", "gradmidi", "report", str(good), str(tmp_path / "notes.txt"), "-o",
                             str(tmp_path / "rep")], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("Error:") and "Traceback" not in result.stderr
    assert not (tmp_path / "rep").exists()
