"""The run's live page (``serve=`` answering browsers), opened in a real headless Chromium (Debian's
chromium, driven by Playwright) while a real training run serves it from this process."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import mido
import pytest
import torch
import torch.nn as nn
from jackkit import wait_for
from test_report import ARTIFACTS, BROWSER_ARGS, CHROMIUM

import gradmidi

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (./dev test installs it)")

# Without a click an AudioContext stays suspended; a person gets a "click to start sound" button.
AUDIO_ARGS = [*BROWSER_ARGS, "--autoplay-policy=no-user-gesture-required"]
SILENCE = 1e-4  # RMS: -80 dBFS
BPM = 240  # a slot is 1/16 s: the test plays a few seconds of music
SLOT_SECONDS = 60 / BPM / 4


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def train(son, model, steps: int, nan_at: int | None = None) -> None:
    """Steps at the score's own pace, so the page plays them as they come."""
    for _ in range(steps):
        model.zero_grad()
        loss = model(torch.randn(4, 8)).pow(2).mean()
        if son.steps == nan_at:
            loss = loss * float("nan")  # every gradient NaN: a crash cymbal on the drum channel
        loss.backward()
        son.step(loss=loss)
        time.sleep(SLOT_SECONDS)


def midi_notes(path: Path) -> int:
    return sum(m.type == "note_on" and m.velocity > 0 for track in mido.MidiFile(path).tracks for m in track)


def midi_file_notes(path: Path) -> list[tuple[int, int, int, int, int]]:
    """(channel, key, velocity, onset, length) of every note in the file, in ticks, read by mido."""
    notes, sounding = [], {}
    for track in mido.MidiFile(path).tracks:
        tick = 0
        for m in track:
            tick += m.time
            if m.type == "note_on" and m.velocity > 0:
                sounding[(m.channel, m.note)] = (tick, m.velocity)
            elif m.type in ("note_on", "note_off") and (m.channel, m.note) in sounding:
                onset, velocity = sounding.pop((m.channel, m.note))
                notes.append((m.channel, m.note, velocity, onset, tick - onset))
    return sorted(notes)


def page_state(page) -> dict:
    # A function, not an expression string: the page's Content-Security-Policy forbids eval.
    return page.evaluate("() => ({connected: gradmidi.connected, slots: gradmidi.slots, notes: gradmidi.notes, "
                         "voices: gradmidi.voices, level: gradmidi.level})")


class Requests:
    """Every request the browser makes is checked against the run's address; anything else is
    recorded and aborted. Playwright's routing does not see WebSockets, so Chromium's own network
    log (DevTools protocol) is read as well. Neither sees the AudioWorklet's module: the server's
    log shows it was served (and the page's Content-Security-Policy allows no other address)."""

    def __init__(self, context, base: str) -> None:
        self.origin = urlsplit(base).netloc
        self.seen: list[str] = []
        self.outside: list[str] = []
        context.route("**/*", self._route)
        context.on("page", self._watch)

    def _watch(self, page) -> None:
        page.on("websocket", lambda ws: self._check(ws.url))
        devtools = page.context.new_cdp_session(page)
        devtools.on("Network.requestWillBeSent", lambda event: self._check(event["request"]["url"]))
        devtools.send("Network.enable")

    def _route(self, route) -> None:
        url = route.request.url
        if self._check(url):
            route.continue_()
        else:
            route.abort()

    def _check(self, url: str) -> bool:
        self.seen.append(url)
        inside = urlsplit(url).netloc == self.origin
        if not inside:
            self.outside.append(url)
        return inside


def test_the_live_page_plays_a_real_run_with_the_mid_files_notes_and_mutes_to_silence(tmp_path, caplog):
    from playwright.sync_api import sync_playwright

    caplog.set_level(logging.DEBUG, logger="gradmidi.serve")
    model = tiny_model()
    son = gradmidi.Sonifier(model, tmp_path / "run.mid", serve="127.0.0.1:0", bpm=BPM)
    base = f"http://127.0.0.1:{son.server.port}/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=AUDIO_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        requests = Requests(context, base)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(base)
        page.wait_for_function("() => window.gradmidi?.connected", timeout=30_000)
        assert page_state(page)["voices"] == [v.name for v in son.header.voices]
        assert page.locator("#start").is_hidden()  # the context runs: no click needed under this policy

        train(son, model, 24, nan_at=12)
        playing = page_state(page)
        assert playing["slots"] >= 18 and playing["notes"] >= 36
        assert playing["level"] > 100 * SILENCE, playing
        assert page.locator('#events .event[data-kind="nan"].flash, #events .event[data-kind="nan"] b').count()

        for mute in page.locator("#voices input.mute").all():  # every voice, and the drums
            mute.check()
        train(son, model, 40)  # 2.5 s: the reverb's tail of the notes before the mutes dies away
        muted = page_state(page)
        assert muted["level"] < SILENCE, muted
        assert muted["notes"] > playing["notes"]  # still scheduled, only not heard

        page.screenshot(path=str(tmp_path / "live.png"))
        son.close()
        summary = gradmidi.read_score(tmp_path / "run.mid").summary()
        wait_for(lambda: page_state(page)["slots"] == summary["slots"], 10, "every slot on the page")
        final = page_state(page)
        assert final["notes"] == midi_notes(tmp_path / "run.mid")
        assert summary["events"]["nan"] >= 1
        wait_for(lambda: not page_state(page)["connected"], 10, "the page to see the run end")
        assert page.locator("#status").inner_text() == "the run has ended"
        assert errors == []  # now: from here on the page looks for a next run, and a closed port is an error
        browser.close()
    assert requests.outside == [], requests.outside
    paths = {urlsplit(url).path for url in requests.seen}
    assert {"/", "/page.js", "/page.css", "/vendor/spessasynth_lib.js", "/vendor/spessasynth_core.js",
            "/vendor/stb_vorbis.js", "/soundfont.sf2", "/stream"} <= paths, paths
    served = {r.getMessage().rsplit(" ", 1)[1] for r in caplog.records if " got " in r.getMessage()}
    worklet = "/vendor/spessasynth_processor.min.js"
    assert worklet in served and served <= paths | {worklet}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "live-page.png").write_bytes((tmp_path / "live.png").read_bytes())


def test_the_page_reconnects_by_itself_when_the_stream_drops_and_finds_the_next_run_of_a_sweep(tmp_path):
    from playwright.sync_api import sync_playwright

    model = tiny_model()
    with sync_playwright() as pw, gradmidi.Sonifier(model, tmp_path / "run.mid", serve="127.0.0.1:0", bpm=BPM) as son:
        port = son.server.port
        with pw.chromium.launch(executable_path=CHROMIUM, args=AUDIO_ARGS) as browser:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{son.server.port}/")
            page.wait_for_function("() => window.gradmidi?.connected", timeout=30_000)
            train(son, model, 8)
            wait_for(lambda: page_state(page)["slots"] == 8, 10, "the first slots")
            # The link drops (as a dead forward would): the server's end of the page's WebSocket goes.
            web = [lis for lis in list(son.server._listeners.values()) if lis.kind == "ws"]
            assert len(web) == 1
            web[0].sock.shutdown(socket.SHUT_RDWR)
            wait_for(lambda: son.server.joined == 2 and page_state(page)["connected"], 15, "the page to rejoin")
            before = page_state(page)["slots"]
            train(son, model, 8)
            wait_for(lambda: page_state(page)["slots"] == before + 8, 10, "slots after the rejoin")
            son.close()
            wait_for(lambda: not page_state(page)["connected"], 10, "the run's end")

            # The next run of a sweep serves on the same address: the open page joins it by itself.
            wide = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
            with gradmidi.Sonifier(wide, tmp_path / "next.mid", serve=f"127.0.0.1:{port}", bpm=BPM) as following:
                names = [v.name for v in following.header.voices]
                wait_for(lambda: page_state(page)["voices"] == names and page_state(page)["connected"], 15,
                         "the page to join the next run")
                train(following, wide, 4)
                wait_for(lambda: page_state(page)["slots"] == before + 12, 10, "the next run's slots")


def test_beyond_loopback_the_browser_needs_the_token_before_anything_is_sent(tmp_path):
    from playwright.sync_api import sync_playwright

    model = tiny_model()
    token = "page-test-token-42"
    with gradmidi.Sonifier(model, tmp_path / "run.mid", serve="0.0.0.0:0", serve_public=True,
                           serve_token=token, bpm=BPM) as son:
        base = f"http://127.0.0.1:{son.server.port}/"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=AUDIO_ARGS)

            # No token: a form asking for it, nothing of the run; the run's files are refused too.
            stranger = browser.new_context()
            page = stranger.new_page()
            answer = page.goto(base)
            assert answer.status == 401 and page.locator("input#token").count() == 1
            assert page.evaluate("() => typeof window.gradmidi") == "undefined"
            assert son.header.title not in page.content()
            for path in ("soundfont.sf2", "page.js", "stream"):
                assert stranger.request.get(base + path).status == 401, path
            assert son.server.joined == 0

            # A wrong one, in the URL: refused the same way, said on the page.
            answer = page.goto(base + "?token=wrong")
            assert answer.status == 403 and "not this run's" in page.content()
            assert stranger.request.get(base + "soundfont.sf2?token=wrong").status == 403
            assert son.server.joined == 0
            stranger.close()

            # The right one, typed on the page: the page plays, and the token leaves the address bar.
            friend = browser.new_context()
            page = friend.new_page()
            assert page.goto(base).status == 401
            page.fill("input#token", token)
            page.click("button[type=submit]")
            page.wait_for_function("() => window.gradmidi?.connected", timeout=30_000)
            assert "token" not in page.url and son.server.joined == 1
            train(son, model, 6)
            wait_for(lambda: page_state(page)["slots"] == 6, 10, "slots behind the token")
            browser.close()

        # Raw: a WebSocket upgrade without the token gets an HTTP refusal, never a 101 or a welcome.
        with socket.create_connection(("127.0.0.1", son.server.port), timeout=10) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            raw = b"".join(iter(lambda: sock.recv(65536), b""))
        assert raw.startswith(b"HTTP/1.1 401") and b"welcome" not in raw


def test_on_loopback_other_sites_cannot_open_the_stream(tmp_path):
    """No token on loopback, so a page from elsewhere (or a rebinding name) must not reach the run."""
    model = tiny_model()
    with gradmidi.Sonifier(model, tmp_path / "run.mid", serve="127.0.0.1:0") as son:
        port = son.server.port

        def ask(host: str, origin: str | None) -> bytes:
            extra = f"Origin: {origin}\r\n" if origin else ""
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(f"GET /stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             f"{extra}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                             .encode())
                return sock.recv(65536)

        assert ask(f"127.0.0.1:{port}", f"http://127.0.0.1:{port}").startswith(b"HTTP/1.1 101")
        assert ask(f"127.0.0.1:{port}", "https://evil.example").startswith(b"HTTP/1.1 403")
        assert ask(f"evil.example:{port}", f"http://evil.example:{port}").startswith(b"HTTP/1.1 403")
        train(son, model, 2)


def websocket_client(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window stays small
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101") and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer  # RFC 6455's example
    return sock


def masked(payload: bytes) -> bytes:
    """A client's text frame, as RFC 6455 wants it: masked."""
    mask = b"\x01\x02\x03\x04"
    size = bytes([0x80 | len(payload)]) if len(payload) < 126 else b"\xfe" + len(payload).to_bytes(2, "big")
    return bytes([0x81]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


HELLO = masked(json.dumps({"type": "hello", "protocol": 2, "token": None}).encode())


def test_bad_websocket_frames_are_refused_and_the_server_keeps_serving(tmp_path):
    from gradmidi.websocket import CLOSE, TEXT, FrameDecoder

    def answers(sock: socket.socket) -> list[tuple[int, bytes]]:
        data = b"".join(iter(lambda: sock.recv(65536), b""))
        return FrameDecoder(1 << 30, masked=False).feed(data)

    model = tiny_model()
    with gradmidi.Sonifier(model, tmp_path / "run.mid", serve="127.0.0.1:0") as son:
        port = son.server.port
        attacks = {
            "unmasked": b"\x81\x05hello",
            "oversized": bytes([0x81, 0xFF]) + (1 << 40).to_bytes(8, "big") + b"\0" * 4,
            "not json": masked(b"{nope"),
            "wrong first message": masked(b'{"type": "slot"}'),
        }
        for name, attack in attacks.items():
            with websocket_client(port) as sock:
                sock.sendall(attack)
                frames = answers(sock)
            assert frames[0][0] == TEXT and json.loads(frames[0][1])["type"] == "refused", name
            assert frames[-1][0] == CLOSE, name
        assert son.server.refused == len(attacks) and son.server.joined == 0
        with websocket_client(port) as sock:  # a well-formed hello is still welcomed
            sock.sendall(HELLO)
            wait_for(lambda: son.server.joined == 1, 10, "the hello")
            train(son, model, 12, nan_at=5)
            son.close()
            frames = answers(sock)
    messages = [json.loads(body) for opcode, body in frames if opcode == TEXT]
    assert [m["type"] for m in messages] == ["welcome", *["slot"] * 12, "end"]
    assert [v["name"] for v in messages[0]["header"]["voices"]] == [v.name for v in son.header.voices]
    assert messages[0]["instruments"][0] == "Acoustic Grand Piano"  # a Linear's first program
    # The notes each slot carries are the .mid file's notes, drums included, at the same ticks.
    slot_ticks = son.header.clock.slot_ticks
    streamed = sorted((ch, key, vel, m["index"] * slot_ticks + onset, length)
                      for m in messages[1:-1] for ch, key, vel, onset, length in m["notes"])
    assert streamed == midi_file_notes(tmp_path / "run.mid")
    assert any(ch == 9 for ch, *_ in streamed)  # the NaN's crash cymbal


def test_a_browser_that_stops_reading_is_dropped_like_a_slow_listener(tmp_path, caplog):
    from gradmidi.sinks.serve import ServeSink

    model = tiny_model()
    server = ServeSink("127.0.0.1:0", buffer_bytes=16 << 10, send_buffer=16 << 10)
    with gradmidi.Sonifier(model, tmp_path / "run.mid", serve=server) as son, \
            websocket_client(server.port, rcvbuf=4096) as stalled:
        stalled.sendall(HELLO)  # then never reads
        wait_for(lambda: server.joined == 1, 10, "the page's stream")
        for _ in range(600):
            model.zero_grad()
            model(torch.randn(4, 8)).pow(2).mean().backward()
            son.step()
        wait_for(lambda: server.dropped_listeners == 1, 20, "the stalled page to be dropped")
    assert son.dropped == 0 and server.failed is None  # training never waited for it
    assert sum("fell more than" in r.getMessage() for r in caplog.records) == 1


def test_a_person_without_autoplay_gets_a_button_and_sound_after_the_click(tmp_path):
    from playwright.sync_api import sync_playwright

    model = tiny_model()
    with gradmidi.Sonifier(model, tmp_path / "run.mid", serve="127.0.0.1:0", bpm=BPM) as son:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)  # a browser's own policy
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{son.server.port}/")
            page.wait_for_function("() => window.gradmidi?.connected", timeout=30_000)
            assert page.locator("#start").is_visible()
            train(son, model, 8)
            silent = page_state(page)
            assert silent["slots"] == 8 and silent["notes"] == 0  # drawn, not queued up to burst out later
            page.click("#start")
            page.wait_for_selector("#start", state="hidden")
            train(son, model, 16)
            heard = page_state(page)
            assert heard["notes"] >= 16 and heard["level"] > 100 * SILENCE, heard
            browser.close()


def test_son_show_embeds_the_live_page_in_a_real_kernel_and_its_address_serves_it(tmp_path):
    from test_notebook import html_of, run_notebook, text_of

    outputs = run_notebook(
        tmp_path,
        "import gradmidi, torch, urllib.request\nmodel = torch.nn.Linear(4, 2)\n"
        "son = gradmidi.Sonifier(model, 'run.mid', serve='127.0.0.1:0')\nson.show()\n"
        "model(torch.randn(2, 4)).sum().backward()\nson.step()",
        "from gradmidi.notebook import live_url\npage = urllib.request.urlopen(live_url(son.server), timeout=10)\n"
        "print(live_url(son.server), page.status, b'src=\"page.js\"' in page.read())\nson.close()",
        "quiet = gradmidi.Sonifier(model, 'quiet.mid')\ntry:\n    quiet.show()\n"
        "except gradmidi.GradmidiError as e:\n    print('refused:', e)\nquiet.step()\nquiet.close()",
    )
    assert not [o for cell in outputs for o in cell if o["output_type"] == "error"], outputs
    url, status, served = text_of(outputs[1]).split()
    assert status == "200" and served == "True" and url.startswith("http://127.0.0.1:")
    frame = html_of(outputs[0])
    assert "<iframe" in frame and f'src="{url}"' in frame
    assert "refused: son.show() embeds the run's live page" in text_of(outputs[2]) and "serve=" in text_of(outputs[2])


def test_the_pages_files_are_package_data_and_the_vendored_synth_is_pinned():
    from importlib.resources import files

    page = files("gradmidi") / "page"
    readme = (page / "vendor" / "README.md").read_text()
    assert "spessasynth_lib" in readme and "4.3.14" in readme and "Apache-2.0" in readme
    assert "Apache License" in (page / "vendor" / "LICENSE").read_text()
    html = (page / "index.html").read_text()
    imports = json.loads(html.split('<script type="importmap">')[1].split("</script>")[0])["imports"]
    for target in imports.values():  # every bare name the vendored modules import is there
        assert (page / target.removeprefix("./")).is_file(), target
    assert "http" not in html.replace("http-equiv", "")  # nothing absolute: everything from the run
