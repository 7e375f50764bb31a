"""Remote listening over real loopback sockets: the training run serves (this process), listeners run
as their own processes (``gradmidi listen`` and a raw protocol client); attackers are raw sockets."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import gradmidi
from gradmidi.sinks.serve import ServeSink
from gradmidi.wire import MAX_SERVER_FRAME, PROTOCOL, FrameDecoder, encode
from jackkit import JACK_RACE, free_port, wait_for

CLIENT = textwrap.dedent(
    """
    import json, socket, sys
    from gradmidi.wire import MAX_SERVER_FRAME, PROTOCOL, FrameDecoder, encode
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60)
    sock.sendall(encode({"type": "hello", "protocol": PROTOCOL, "token": None}))
    decoder = FrameDecoder(MAX_SERVER_FRAME)
    while True:
        data = sock.recv(65536)
        if not data:
            break
        for message in decoder.feed(data):
            print(json.dumps(message), flush=True)
    """
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def train(son, model, steps: int, pause: float = 0.0, nan_at: int | None = None) -> list[float]:
    """Trains ``steps`` steps; returns how long each ``son.step`` call took."""
    times = []
    for _ in range(steps):
        model.zero_grad()
        loss = model(torch.randn(4, 8)).pow(2).mean()
        if nan_at is not None and son.steps == nan_at:
            loss = loss * float("nan")  # every gradient NaN: crash cymbal, loss clap, markers
        loss.backward()
        t0 = time.perf_counter()
        son.step(loss=loss)
        times.append(time.perf_counter() - t0)
        if pause:
            time.sleep(pause)
    return times


def listen(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradmidi", "listen", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, **kwargs)


def run_listen(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradmidi", "listen", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, env=env)


def raw_client(port: int, hello: dict | None = None, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window stays small
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    if hello is not None:
        sock.sendall(encode(hello))
    return sock


def read_until_closed(sock: socket.socket, seconds: float = 30) -> list[dict]:
    decoder, messages = FrameDecoder(MAX_SERVER_FRAME), []
    deadline = time.monotonic() + seconds  # the server's pings would keep an open stream alive forever
    while data := sock.recv(65536):
        messages += decoder.feed(data)
        assert time.monotonic() < deadline, f"still open after {seconds} s: {messages[:3]}"

    sock.close()
    return messages


def hello(token=None) -> dict:
    return {"type": "hello", "protocol": PROTOCOL, "token": token}


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        proc.kill()


def test_a_listener_hears_every_slot_event_and_marker_in_order_and_saves_the_same_score(tmp_path):
    model = tiny_model()
    son = gradmidi.Sonifier(model, tmp_path / "server.mid", serve="127.0.0.1:0")
    port = son.server.port
    raw = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, stdin=subprocess.DEVNULL)
    heard = listen(f"127.0.0.1:{port}", "--save", str(tmp_path / "heard.mid"))
    wait_for(lambda: son.server.joined == 2, 30, "both listeners")
    with son:
        train(son, model, 30, nan_at=12)
        son.epoch()
        son.marker("lr decay")
        train(son, model, 30)
    out, err = finish(heard)
    assert heard.returncode == 0, err
    assert "the run ended" in err and "saved" in err
    raw_out, raw_err = finish(raw)
    messages = [json.loads(line) for line in raw_out.splitlines()]
    # Complete and in order: the welcome, one frame per slot with consecutive indices, then the end.
    assert messages[0]["type"] == "welcome" and messages[-1]["type"] == "end", raw_err
    slots = [m for m in messages if m["type"] == "slot"]
    assert [s["index"] for s in slots] == list(range(son.slots)) and son.slots == 60
    assert [s["first_step"] for s in slots] == list(range(60))
    events = [(e["step"], e["kind"]) for s in slots for e in s["events"]]
    assert events == [(e.step, e.kind) for e in son.events] and ("nan" in {k for _, k in events})
    assert [m for s in slots for m in s["markers"]] == ["epoch 1", "lr decay"]
    assert all(s["norms"][0] == "NaN" for s in slots if s["index"] == 12)  # strict JSON for non-finite norms
    # The listener's --save file is a normal gradmidi score, the same as the server's own.
    ours, theirs = gradmidi.read_score(tmp_path / "server.mid"), gradmidi.read_score(tmp_path / "heard.mid")
    assert theirs.decode() == ours.decode() and len(ours.decode()) == 2 * 59
    assert theirs.drums == ours.drums and theirs.markers == ours.markers
    assert theirs.header.voices == ours.header.voices


def test_a_late_joiner_gets_the_voice_table_then_the_live_events_and_decodes_the_same_norms(tmp_path):
    model = tiny_model()
    # The adaptive range moves at step 10, before anyone listens: the late joiner must still decode right.
    son = gradmidi.Sonifier(model, tmp_path / "server.mid", serve="127.0.0.1:0", adaptive=True,
                            adaptive_warmup=10, adaptive_every=10_000, programs={"0": "Violin"})
    port = son.server.port
    train(son, model, 30)
    wait_for(lambda: son.slots == 30, 10, "the first 30 slots")
    late = raw_client(port, hello())
    heard = listen(f"127.0.0.1:{port}", "--save", str(tmp_path / "late.mid"))
    wait_for(lambda: son.server.joined == 2, 30, "the late joiners")
    with son:
        train(son, model, 20)
    messages = read_until_closed(late)
    welcome = messages[0]
    assert welcome["type"] == "welcome"
    table = welcome["header"]["voices"]
    assert [(v["name"], v["channel"], v["program"]) for v in table] == \
        [(v.name, v.channel, v.program) for v in son.voices] and table[0]["program"] == 40  # Violin
    assert [m["index"] for m in messages[1:-1]] == list(range(30, 50)) and messages[-1]["type"] == "end"
    default = [math.log10(x) for x in son.header.mapping.norm_range]
    assert messages[1]["log_range"] != default  # each slot carries the range in force, moved before it joined
    _, err = finish(heard)
    assert heard.returncode == 0, err
    ours, theirs = gradmidi.read_score(tmp_path / "server.mid"), gradmidi.read_score(tmp_path / "late.mid")
    assert theirs.header.voices == ours.header.voices
    assert theirs.decode() == [row for row in ours.decode() if row[0] >= 30]
    assert len(theirs.decode()) == 2 * 20


def test_binding_beyond_loopback_needs_the_flag_and_then_a_token(tmp_path):
    model = tiny_model()
    with pytest.raises(gradmidi.GradmidiError, match="serve_public=True"):
        gradmidi.Sonifier(model, None, serve="0.0.0.0:0")
    with pytest.warns(UserWarning, match="listeners need --token") as caught:
        son = gradmidi.Sonifier(model, tmp_path / "server.mid", serve="0.0.0.0:0", serve_public=True)
    token = son.server.token
    assert token in str(caught[0].message) and len(token) >= 24
    port = son.server.port
    # Without the token, or with a wrong one, nothing but the refusal is sent, then the server hangs up.
    assert read_until_closed(raw_client(port, hello())) == [{"type": "refused", "reason": "a token is required"}]
    assert read_until_closed(raw_client(port, hello(token[:-1] + "x"))) == [{"type": "refused", "reason": "bad token"}]
    bad = run_listen(f"127.0.0.1:{port}", "--save", str(tmp_path / "bad.mid"), "--token", "guess")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == f"Error: 127.0.0.1:{port} refused this listener: bad token"
    assert not (tmp_path / "bad.mid").exists()
    good = listen(f"127.0.0.1:{port}", "--save", str(tmp_path / "good.mid"),
                  env=os.environ | {"GRADMIDI_TOKEN": token})
    wait_for(lambda: son.server.joined == 1, 30, "the listener with the token")
    with son:
        train(son, model, 10)
    _, err = finish(good)
    assert good.returncode == 0, err
    assert son.server.refused == 3
    assert gradmidi.read_score(tmp_path / "good.mid").decode() == gradmidi.read_score(tmp_path / "server.mid").decode()


def test_garbage_and_oversized_frames_are_refused_and_the_server_keeps_serving(tmp_path, caplog):
    model = tiny_model()
    son = gradmidi.Sonifier(model, tmp_path / "server.mid", serve="127.0.0.1:0")
    port = son.server.port
    heard = listen(f"127.0.0.1:{port}", "--save", str(tmp_path / "heard.mid"))
    wait_for(lambda: son.server.joined == 1, 30, "the listener")
    train(son, model, 10)
    attacks = {
        "huge length": (1 << 31).to_bytes(4, "big"),
        "just over the limit": (4097).to_bytes(4, "big") + b"{" * 100,
        "not json": (5).to_bytes(4, "big") + b"\xff\xfe{[}",
        "not an object": encode([1, 2, 3]),  # type: ignore[arg-type]
        "no type": encode({"hello": 1}),
        "wrong first message": encode({"type": "slot", "index": 0}),
        "old protocol": encode({"type": "hello", "protocol": 0}),
    }
    answers = {}
    for name, payload in attacks.items():
        sock = raw_client(port)
        sock.sendall(payload)
        answers[name] = read_until_closed(sock)
    for name, answer in answers.items():
        assert len(answer) == 1 and answer[0]["type"] == "refused", name
    assert "limit is 4096" in answers["huge length"][0]["reason"]
    # 'GET ' is a browser (the live page, tests/test_page.py); one naming a host that is not loopback
    # (DNS rebinding) gets an HTTP refusal and nothing of the run.
    with raw_client(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 403") and b"Host" in answer and b"welcome" not in answer
    assert son.server.refused == len(attacks) + 1 and son.server.failed is None
    # A connection that goes away mid-frame, and random bytes, harm nothing either.
    half = raw_client(port)
    half.sendall((100).to_bytes(4, "big") + b"{")
    half.close()
    rng = np.random.default_rng(0)
    for _ in range(20):
        with raw_client(port) as s:
            s.sendall(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    train(son, model, 10)
    fresh = raw_client(port, hello())  # the server still welcomes new listeners
    wait_for(lambda: son.server.joined == 2, 30, "the new listener")  # welcomed before the slots it must get
    with son:
        train(son, model, 10)
        assert son.server in son.sinks  # the fan-out never dropped the network sink
    messages = read_until_closed(fresh)
    assert messages[0]["type"] == "welcome" and messages[-1]["type"] == "end" and len(messages) >= 3
    _, err = finish(heard)
    assert heard.returncode == 0, err
    assert son.dropped == 0 and son.server.dropped_listeners == 0
    assert gradmidi.read_score(tmp_path / "heard.mid").decode() == gradmidi.read_score(tmp_path / "server.mid").decode()
    assert sum("refused listener" in r.getMessage() for r in caplog.records) >= len(attacks)


def test_a_listener_that_stops_reading_is_dropped_and_does_not_slow_training(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="gradmidi.serve")
    model = tiny_model()
    server = ServeSink("127.0.0.1:0", buffer_bytes=16 << 10, send_buffer=16 << 10)
    son = gradmidi.Sonifier(model, tmp_path / "server.mid", serve=server)
    heard = listen(f"127.0.0.1:{server.port}", "--save", str(tmp_path / "heard.mid"))
    wait_for(lambda: server.joined == 1, 30, "the listener")
    t0 = time.perf_counter()
    alone = train(son, model, 600)
    alone_wall = time.perf_counter() - t0
    stalled = raw_client(server.port, hello(), rcvbuf=4096)  # says hello, then never reads
    wait_for(lambda: server.joined == 2, 10, "the stalled listener")
    t0 = time.perf_counter()
    beside = train(son, model, 600)
    beside_wall = time.perf_counter() - t0
    with son:
        wait_for(lambda: server.dropped_listeners == 1, 20, "the stalled listener to be dropped")
    stalled.close()
    _, err = finish(heard)
    assert heard.returncode == 0, err
    drops = [r for r in caplog.records if "fell more than" in r.getMessage()]
    assert len(drops) == 1  # dropped and logged once
    assert son.dropped == 0  # gradmidi never fell behind training
    # The reading listener got every step while the stalled one was held and dropped.
    assert len(gradmidi.read_score(tmp_path / "heard.mid").decode()) == 2 * 1200
    # Measured: the training loop with a stalled listener beside the healthy one against without
    # it, same process, same run. Generous bounds: a shared CI machine is noisy.
    print(f"600 steps: {alone_wall:.3f} s alone, {beside_wall:.3f} s with a stalled listener; "
          f"step() median {np.median(alone) * 1e6:.0f} vs {np.median(beside) * 1e6:.0f} us")
    assert beside_wall < 2 * alone_wall + 0.5
    assert np.median(beside) < 2 * np.median(alone) + 0.001


class Proxy:
    """A TCP relay the test can cut: a dropped link between a listener and the server."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                down.close()
                continue
            self.pairs.append((down, up))
            self.connections += 1
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        for down, up in self.pairs:
            for s in (down, up):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self.pairs = []

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_a_dropped_stream_is_reconnected_and_ctrl_c_leaves_complete_files(tmp_path):
    model = tiny_model()
    son = gradmidi.Sonifier(model, tmp_path / "first.mid", serve="127.0.0.1:0")
    proxy = Proxy(son.server.port)
    heard = listen(f"127.0.0.1:{proxy.port}", "--save", str(tmp_path / "run.mid"))
    try:
        wait_for(lambda: son.server.joined == 1, 30, "the listener")
        train(son, model, 20)
        time.sleep(1.0)  # the listener takes them in
        proxy.cut()  # the link drops; training goes on unheard
        train(son, model, 10)
        wait_for(lambda: son.server.joined == 2 and son.server.listeners == 1, 30, "the reconnection")
        train(son, model, 20)  # the same run, heard again
        time.sleep(1.0)
        proxy.cut()
        son.close()  # the run ends while the listener is away; a new run starts on another port
        second = gradmidi.Sonifier(model, tmp_path / "second.mid", serve="127.0.0.1:0")
        proxy.upstream = second.server.port
        wait_for(lambda: second.server.joined == 1, 30, "the reconnection to the new run")
        train(second, model, 15)
        time.sleep(1.0)
        heard.send_signal(signal.SIGINT)  # Ctrl-C: silence, files complete
        _, err = finish(heard)
        second.close()
    finally:
        proxy.close()
        heard.kill()
    assert heard.returncode == 0, err
    assert "stream dropped" in err and "reconnecting in" in err and "the same run goes on" in err
    assert "stopped" in err and "Traceback" not in err
    first_rows = gradmidi.read_score(tmp_path / "first.mid").decode()
    heard_rows = gradmidi.read_score(tmp_path / "run.mid").decode()
    steps = {step for step, _, _ in heard_rows}
    assert set(range(20)) <= steps and set(range(30, 50)) <= steps  # before the first cut, after reconnecting
    assert set(heard_rows) <= set(first_rows)  # whatever was heard decodes as the server wrote it
    assert gradmidi.read_score(tmp_path / "run-2.mid").decode() == gradmidi.read_score(tmp_path / "second.mid").decode()


def test_a_listener_started_10_s_before_the_run_waits_for_it_and_saves_the_whole_run(tmp_path):
    port = free_port()
    said = tmp_path / "stderr.txt"
    with open(said, "w") as stderr:
        heard = subprocess.Popen([sys.executable, "-m", "gradmidi", "listen", f"127.0.0.1:{port}", "--save",
                                  str(tmp_path / "heard.mid")], stdout=subprocess.DEVNULL, stderr=stderr,
                                 stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "waiting for a run" in said.read_text(), 30, "the listener to start waiting")
        time.sleep(10)  # the training script imports torch, loads its data ...
        assert heard.poll() is None, said.read_text()
        model = tiny_model()
        son = gradmidi.Sonifier(model, tmp_path / "server.mid", serve=f"127.0.0.1:{port}")
        wait_for(lambda: son.server.joined == 1, 10, "the waiting listener to join")
        with son:
            train(son, model, 40, nan_at=12)
            son.marker("lr decay")
        heard.wait(30)
    finally:
        heard.kill()
    err = said.read_text()
    assert heard.returncode == 0, err
    assert f"waiting for a run at 127.0.0.1:{port} (until Ctrl-C)" in err and "the run ended" in err
    ours, theirs = gradmidi.read_score(tmp_path / "server.mid"), gradmidi.read_score(tmp_path / "heard.mid")
    assert theirs.decode() == ours.decode() and len(ours.decode()) == 2 * 39  # every step but the NaN one
    assert theirs.drums == ours.drums and theirs.markers == ours.markers and ours.markers


def test_follow_saves_each_run_of_a_sweep_to_its_own_file_through_an_ssh_style_forward(tmp_path):
    upstream = free_port()
    forward = Proxy(upstream)  # like ssh -L: accepts, and hangs up at once while nothing serves behind it
    heard = listen(f"127.0.0.1:{forward.port}", "--save", str(tmp_path / "sweep.mid"), "--follow", "--timeout", "5")
    try:
        time.sleep(2)  # the listener meets the forward's hang-ups and goes on waiting
        assert heard.poll() is None
        for n, steps in ((1, 25), (2, 35)):
            model = tiny_model()
            son = gradmidi.Sonifier(model, tmp_path / f"run{n}.mid", serve=f"127.0.0.1:{upstream}")
            wait_for(lambda: son.server.joined == 1, 30, f"the listener to join run {n}")
            with son:
                train(son, model, steps)
            time.sleep(1)  # between two runs of the sweep
        _, err = finish(heard, 30)
    finally:
        forward.close()
        heard.kill()
    assert heard.returncode == 0, err
    assert "no new run within 5 s" in err and "Traceback" not in err
    # Each file is complete when its run ends, before the next run is heard.
    assert err.index(f"saved {tmp_path / 'sweep.mid'}") < err.index("waiting for the next run") < \
        err.rindex("listening to")
    for n, saved in ((1, "sweep.mid"), (2, "sweep-2.mid")):
        ours, theirs = gradmidi.read_score(tmp_path / f"run{n}.mid"), gradmidi.read_score(tmp_path / saved)
        assert theirs.decode() == ours.decode() and len(ours.decode()) == 2 * (25 if n == 1 else 35)
    assert not (tmp_path / "sweep-3.mid").exists()


@pytest.mark.parametrize("args, words", [
    (["nohost", "--save", "x.mid"], "expected HOST:PORT"),
    (["127.0.0.1:99999", "--save", "x.mid"], "expected HOST:PORT"),
    (["127.0.0.1:http", "--save", "x.mid"], "expected HOST:PORT"),
    (["127.0.0.1:{free}", "--save", "x.mid", "--timeout", "0"],
     "nothing is serving on 127.0.0.1:{free} (connection refused)"),
    (["127.0.0.1:{free}", "--save", "x.mid", "--timeout", "1"], "within 1 s (connection refused)"),
    (["127.0.0.1:{free}", "--save", "x.mid", "--timeout", "-1"], "Invalid value for '--timeout'"),
    (["127.0.0.1:{free}"], "nothing to do"),
    (["127.0.0.1:{free}", "--port", "a", "--synth"], "choose one of"),
    (["no-such-host.invalid:7400", "--save", "x.mid"], "cannot resolve"),
])
def test_bad_listen_arguments_are_one_line_errors(args, words, tmp_path):
    free = free_port()
    result = run_listen(*[a.replace("{free}", str(free)) for a in args])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and words.replace("{free}", str(free)) in lines[-1]


def test_a_server_that_is_not_gradmidi_is_a_one_line_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def greet() -> None:
            conn, _ = server.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")  # 'SSH-' read as a 1.4 GB frame: refused unread
            time.sleep(2)
            conn.close()

        threading.Thread(target=greet, daemon=True).start()
        result = run_listen(f"127.0.0.1:{port}", "--save", str(tmp_path / "x.mid"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not a gradmidi server" in result.stderr and "limit is" in result.stderr


def test_bad_serve_options_are_one_line_errors():
    model = tiny_model()
    with pytest.raises(gradmidi.GradmidiError, match="expected HOST:PORT"):
        gradmidi.Sonifier(model, None, serve="7400")
    with pytest.raises(gradmidi.GradmidiError, match="serve= takes"):
        gradmidi.Sonifier(model, None, serve=("127.0.0.1", 7400))
    with pytest.raises(gradmidi.GradmidiError, match="need serve="):
        gradmidi.Sonifier(model, None, serve_public=True)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(gradmidi.GradmidiError, match=f"cannot serve on 127.0.0.1:{port}: Address already in use"):
            gradmidi.Sonifier(model, None, serve=f"127.0.0.1:{port}")


@JACK_RACE
def test_the_listener_plays_through_the_live_scheduler_to_a_jack_port(tmp_path):
    from jackkit import JackServer, MidiRecorder

    jack = JackServer()
    try:
        recorder = MidiRecorder()
        model = tiny_model()
        son = gradmidi.Sonifier(model, tmp_path / "server.mid", serve="127.0.0.1:0")
        heard = listen(f"127.0.0.1:{son.server.port}", "--port", recorder.name, "--api", "UNIX_JACK",
                       env=os.environ | {"JACK_DEFAULT_SERVER": jack.name})
        wait_for(lambda: son.server.joined == 1, 30, "the listener")
        with son:
            train(son, model, 16, pause=0.15)  # slower than the 0.125 s slots: each step plays as it comes
        _, err = finish(heard)
        recorder.close()
    finally:
        jack.stop()
    assert heard.returncode == 0, err
    messages = [m for _, m in recorder.messages]
    ons = [m for m in messages if m[0] & 0xF0 == 0x90 and m[2] and m[0] & 0x0F != 9]  # drums (events) aside
    assert len(ons) == 32 and {m[0] & 0x0F for m in ons} == {0, 1}
    score = gradmidi.read_score(tmp_path / "server.mid")
    notes = score.notes
    assert sum(1 for m in messages if m[0] == 0x99 and m[2]) == len(score.drums)  # every event's drum hit
    played = {c: [m[1] for m in ons if m[0] & 0x0F == c] for c in (0, 1)}
    written = {c: [pitch for _, pitch, _ in notes[c]] for c in (0, 1)}
    assert played == written, f"played {played}, written {written}"  # the notes the run wrote
    sounding = set()
    for m in messages:
        if m[0] & 0xF0 == 0x90 and m[2]:
            sounding.add((m[0] & 0x0F, m[1]))
        elif m[0] & 0xF0 in (0x80, 0x90):
            sounding.discard((m[0] & 0x0F, m[1]))
    assert not sounding and bytes([0xB0, 123, 0]) in messages[-6:]  # silenced at the end
