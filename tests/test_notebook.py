"""Scores in notebooks, executed by a real Jupyter kernel (nbclient + ipykernel): what the cells
display is read back from the executed notebook, as Jupyter would show it."""

from __future__ import annotations

import base64
import io
import re

import matplotlib.image
import nbformat
import numpy as np
import pytest
import soundfile
import torch
import torch.nn as nn
from nbclient import NotebookClient

import gradmidi
from gradmidi.notebook import MAX_AUDIO_SECONDS
from gradmidi.render import fluidsynth_available
from scorekit import make_score

needs_fluidsynth = pytest.mark.skipif(fluidsynth_available() is not None, reason="needs libfluidsynth")


def trained_score(path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    with gradmidi.Sonifier(model, path) as son:
        for step in range(48):
            model.zero_grad()
            loss = model(torch.randn(4, 8)).pow(2).mean()
            if step == 20:
                loss = loss * float("nan")
            loss.backward()
            son.step(loss=loss)


def run_notebook(tmp_path, *cells: str) -> list[list[dict]]:
    """Executes the cells in a fresh kernel; returns each cell's outputs."""
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells])
    NotebookClient(book, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return [cell["outputs"] for cell in book.cells]


def html_of(outputs: list[dict]) -> str:
    shown = [o["data"]["text/html"] for o in outputs if o["output_type"] in ("display_data", "execute_result")
             and "text/html" in o.get("data", {})]
    assert len(shown) == 1, outputs
    return shown[0]


def text_of(outputs: list[dict]) -> str:
    return "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")


def embedded(page: str, kind: str) -> bytes:
    found = re.findall(rf'src="data:{kind};base64,([A-Za-z0-9+/=]+)"', page)
    assert len(found) == 1, f"{len(found)} {kind} in {page[:300]}"
    return base64.b64decode(found[0])


@needs_fluidsynth
def test_a_notebook_shows_a_scores_plot_and_a_playable_audio_and_keeps_the_matplotlib_backend(tmp_path):
    trained_score(tmp_path / "run.mid")
    outputs = run_notebook(
        tmp_path,
        "import matplotlib, matplotlib.pyplot as plt\nbefore = matplotlib.get_backend()\nfigures = plt.get_fignums()",
        "import gradmidi\nscore = gradmidi.read_score('run.mid')\nscore",  # the score object's _repr_html_
        "gradmidi.show('run.mid')",
        "print(matplotlib.get_backend() == before, plt.get_fignums() == figures, repr(before))",
    )
    assert not [o for cell in outputs for o in cell if o["output_type"] == "error"], outputs
    score = gradmidi.read_score(tmp_path / "run.mid")
    seconds = score.summary()["seconds"]
    for page in (html_of(outputs[1]), html_of(outputs[2])):
        assert "run.mid" in page and "nan 1" in page
        image = matplotlib.image.imread(io.BytesIO(embedded(page, "image/png")), format="png")
        assert image.shape[0] > 300 and image.shape[1] > 600 and image[..., :3].std() > 0.05  # a drawn plot
        assert "<audio controls" in page
        audio, rate = soundfile.read(io.BytesIO(embedded(page, "audio/ogg")))
        assert seconds <= len(audio) / rate <= seconds + 3  # the whole run, and the synth's tail
        assert np.sqrt(np.mean(audio ** 2)) > 0.01  # it sounds
    same, no_new_figures, backend = text_of(outputs[3]).split(maxsplit=2)
    assert same == "True" and no_new_figures == "True", backend


def test_a_long_run_is_shown_with_its_plot_and_a_summary_that_says_so(tmp_path):
    slots = int(MAX_AUDIO_SECONDS / gradmidi.Clock().slot_seconds) * 3
    make_score(tmp_path / "long.mid", [("fc1", "Linear"), ("fc2", "Linear")],
               lambda step: (np.array([1e-2, 1e-1]) * (1 + step % 7), np.array([True, True])), slots)
    outputs = run_notebook(tmp_path, "import gradmidi\ngradmidi.show('long.mid')")
    page = html_of(outputs[0])
    embedded(page, "image/png")
    audio, rate = soundfile.read(io.BytesIO(embedded(page, "audio/ogg")))
    assert MAX_AUDIO_SECONDS - 1 <= len(audio) / rate <= MAX_AUDIO_SECONDS + 0.01  # a summary of the time allowed
    assert re.search(r"The audio is a 2:00 summary of 6:00 .*every event is heard", page)
    assert "gradmidi.render(&#x27;long.mid&#x27;, &#x27;run.ogg&#x27;) renders it whole" in page


def test_showing_a_missing_score_is_a_one_line_error(tmp_path):
    with pytest.raises(gradmidi.GradmidiError, match="no such file|does not exist|not found"):
        gradmidi.show(tmp_path / "missing.mid")
