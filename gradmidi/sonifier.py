"""The public entry point: ``Sonifier(model, "run.mid")`` and ``son.step(loss=loss)``.

The training thread only launches the norm kernels and hands a handle to a bounded
queue (never blocking: if gradmidi falls behind by ``queue_size`` steps, a step is
dropped and counted rather than stalling training). A worker thread waits for the host
copies, detects events, maps notes and feeds the sinks; the .mid file is flushed from
there too.

Under torch.distributed only global rank zero sounds: the other ranks open no sink and
start no thread. They do only what correctness needs: nothing per step under DDP (its
gradients are already averaged), their part of the step's one all-reduce under FSDP2.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import signal
import threading
import time
import warnings
import weakref
from collections import Counter, deque
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .capture import Layer, NormCapture, discover_layers
from .checks import flag, real, whole
from .clock import Clock
from .distributed import GradientSyncWatch, layer_class_name, rank_and_world, unwrap
from .errors import GradmidiError
from .events import SpikeSettings
from .mapping import Mapping
from .pipeline import ScoreBuilder
from .score import ScoreHeader
from .sinks.base import Sink, SinkFanout
from .sinks.live import LiveSink
from .sinks.midifile import MidiFileSink
from .voices import plan_voices

_MAPPING_OPTIONS = set(Mapping.__dataclass_fields__) - {"pitch_classes"}
_CLOCK_OPTIONS = {"bpm", "slot_beats", "every", "arpeggio", "gate"}
_LIVE: weakref.WeakSet[Sonifier] = weakref.WeakSet()
BATCH_SECONDS = 0.02


class Sonifier:
    """Listens to a model's gradients; one note per layer (or voice) per step.

    Call ``step`` after ``loss.backward()`` (after ``scaler.unscale_`` under mixed precision),
    before gradient clipping and ``optimizer.step()``. Mapping options (``scale``, ``key``,
    ``low_note``, ``high_note``, ``norm_range``, ``velocity``, ``adaptive``) and clock options
    (``bpm``, ``every``, ``arpeggio``, ``gate``) may be given as keyword arguments.

    Under torch.distributed (make it after ``init_process_group``), only global rank 0 sounds
    unless ``rank_zero_only=False``; ``step()`` must still be called on every rank.

    ``serve="127.0.0.1:7400"`` also streams the score to ``gradmidi listen`` (other addresses need
    ``serve_public=True`` and then a token: ``serve_token=``, or one is generated and warned about).
    """

    def __init__(
        self,
        model,
        path: str | os.PathLike | None = None,
        *,
        mapping: Mapping | None = None,
        voices: list[str] | MappingABC[str, Any] | None = None,
        programs: MappingABC[str, int | str] | None = None,
        max_voices: int = 15,
        aggregate: str = "max",
        duration: float | None = None,
        total_steps: int | None = None,
        spikes: SpikeSettings | None = None,
        epoch_downbeat: bool = False,
        include_frozen: bool = False,
        sinks: list[Sink] | None = None,
        live: str | Sink | list | None = None,
        midi_api: str | None = None,
        live_latency: float = 0.5,
        serve: str | Sink | None = None,
        serve_public: bool = False,
        serve_token: str | None = None,
        audio: str | os.PathLike | None = None,
        soundfont: str | os.PathLike | None = None,
        title: str | None = None,
        flush_interval: float = 2.0,
        queue_size: int = 4096,
        rank_zero_only: bool = True,
        **options: Any,
    ) -> None:
        _check_options(locals())
        unknown = set(options) - _MAPPING_OPTIONS - _CLOCK_OPTIONS
        if unknown:
            raise GradmidiError(f"unknown Sonifier option(s): {', '.join(sorted(unknown))}")
        map_opts = {k: v for k, v in options.items() if k in _MAPPING_OPTIONS}
        if mapping is not None and map_opts:
            raise GradmidiError("give either mapping= or mapping options, not both")
        mapping = mapping or Mapping(**map_opts)
        clock_opts = {k: v for k, v in options.items() if k in _CLOCK_OPTIONS}
        if duration is not None:
            if not total_steps:
                raise GradmidiError("duration= needs total_steps= (how many steps the run will take)")
            clock_opts.pop("bpm", None)
            clock = Clock.for_duration(duration, total_steps, **clock_opts)
        else:
            clock = Clock(**clock_opts)

        self.rank, world = rank_and_world()
        # Only rank zero sounds, unless each rank asks to (then give each its own path).
        self.sounding = self.rank == 0 or not rank_zero_only
        self.audio = self._check_audio(audio, path, soundfont, self.sounding)
        self.soundfont = soundfont
        model = unwrap(model)
        self._model, self._include_frozen = model, include_frozen
        layers = discover_layers(model, include_frozen=include_frozen)
        table, assignment = plan_voices(
            [(layer.name, layer.class_name) for layer in layers],
            voices=voices, programs=programs, max_voices=max_voices,
        )
        self.header = ScoreHeader(
            voices=table, mapping=mapping, clock=clock, title=title or layer_class_name(model),
            info={"gradmidi": __version__, "model": layer_class_name(model), "aggregate": aggregate,
                  "layers": [layer.name for layer in layers], "first_step": 0},
        )
        self.voices = table
        self.layers = layers
        self._capture = NormCapture(layers)
        self._builder = ScoreBuilder(self.header, assignment, aggregate=aggregate, spikes=spikes)
        # aggregate="last" sounds a slot's last step only, so the others need not be captured at all.
        self._sample_every = clock.every if aggregate == "last" else 1
        # Distributed: skip steps whose gradients were not synchronised (gradient accumulation).
        self._sync_watch = GradientSyncWatch(model) if world > 1 else None
        self._rebind_params = world > 1
        self.unsynced_steps = 0
        self._steps = 0
        self._epochs = 0
        self._closed = False
        self.dropped = 0
        self.event_counts: Counter[str] = Counter()
        self.events: deque = deque(maxlen=10_000)  # the most recent events, for summaries
        self.slots = 0
        self.server = None
        if not self.sounding:
            self._in_flight: deque = deque()  # this rank's unfinished all-reduces (FSDP2)
            return
        file_sinks = [MidiFileSink(path, flush_interval, epoch_downbeat)] if path is not None else []
        self.server = _serve_sink(serve, serve_public, serve_token)  # binds: refuses a bad address early
        try:
            live_sinks = _live_sinks(live, midi_api, soundfont, live_latency)  # opens ports: after the checks
        except BaseException:
            if self.server is not None:
                self.server.close()
            raise
        if self.server is not None:
            live_sinks.append(self.server)
        # Live sinks first: a slot reaches the port before the file writer spends time on it.
        all_sinks = live_sinks + file_sinks + list(sinks or [])
        # Live sound (here or a listener's) wants each step at once; a file alone is cheaper in 20 ms batches.
        self._batch_seconds = 0.0 if live_sinks else BATCH_SECONDS
        self._sinks_all = list(all_sinks)
        self._sinks = SinkFanout(all_sinks)
        self._sinks.open(self.header)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._interrupted = False
        self._close_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="gradmidi", daemon=True)
        self._worker.start()
        _install_exit_hooks(self)

    # -- training thread ------------------------------------------------------------
    def step(self, loss=None, scaler=None, optimizer=None) -> None:
        """Sounds this step's gradients. Never blocks and never raises on NaN/Inf.

        ``optimizer``: with several optimizers (a GAN), pass the one about to step: only the
        layers it updates sound in this slot, and each optimizer step is a slot of its own.
        """
        captured = self.capture(scaler, optimizer, loss)
        if captured is not None:
            captured.sound()

    def capture(self, scaler=None, optimizer=None, loss=None) -> CapturedStep | None:
        """Captures this step's norms now, to be sounded by ``.sound(loss)`` once the loss is known.

        For loops that learn the loss only after the optimizer step (a Trainer's logs). Sound
        captured steps in the order they were captured. None once the Sonifier is closed, for
        the steps that ``aggregate="last"`` does not look at, for unsynchronised micro-steps,
        and on the ranks that do not sound (call it on every rank all the same).
        """
        if self._closed:
            return None
        if self._sync_watch is not None:
            if not self._sync_watch.synced():  # a no_sync() micro-step: its gradients are partial
                self.unsynced_steps += 1
                return None
            if self._rebind_params:
                self._rebind_params = False
                self._rebind_if_rewrapped()
        if self._sample_every > 1 and self._steps % self._sample_every != self._sample_every - 1:
            self._steps += 1
            return None
        only = _param_ids(optimizer) if optimizer is not None else None
        if not self.sounding:
            if self._capture.reduces:  # FSDP2: this rank's part of the step's one all-reduce
                self._keep_in_flight(self._capture.launch(None, only))
            self._steps += 1
            return None
        scaling = bool(scaler is not None and scaler.is_enabled())
        pending = self._capture.launch(loss, only)
        step = self._steps
        self._steps += 1
        return CapturedStep(self, step, pending, scaling)

    def _rebind_if_rewrapped(self) -> None:
        """fully_shard replaces a module's parameters: if the model was sharded after the
        Sonifier was made, read the new (sharded) parameters of the same layers."""
        fresh = {layer.name: layer for layer in discover_layers(self._model, include_frozen=self._include_frozen)}
        rebound = [Layer(layer.name, layer.class_name, fresh[layer.name].params) if layer.name in fresh else layer
                   for layer in self.layers]
        if [list(map(id, layer.params)) for layer in rebound] != [list(map(id, layer.params)) for layer in self.layers]:
            self.layers = rebound
            self._capture = NormCapture(rebound)

    def _keep_in_flight(self, pending) -> None:
        """Non-sounding ranks never read their all-reduce; they only see that it completes."""
        self._in_flight.append(pending)
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft()
        if len(self._in_flight) > 64:  # something is stuck: do not grow without bound
            self._in_flight.popleft().wait()

    def epoch(self, label: str | None = None) -> None:
        """Marks an epoch boundary before the next step."""
        if self._closed or not self.sounding:
            return
        self._epochs += 1
        self._put(("marker", self._steps, label or f"epoch {self._epochs}"))

    def marker(self, text: str) -> None:
        """A free text marker (for example 'lr warm-up done') before the next step."""
        if not self._closed and self.sounding:
            self._put(("marker", self._steps, str(text)))

    def _put(self, item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if self.dropped == 0:
                warnings.warn("gradmidi is falling behind training; dropping steps", RuntimeWarning, stacklevel=3)
            self.dropped += 1

    # -- worker thread ----------------------------------------------------------------
    def _work(self) -> None:
        # Without live sinks, work in batches (every BATCH_SECONDS at most) rather than per
        # step: fewer thread switches and less GIL ping-pong with the training thread.
        running = True
        while running:
            try:
                batch = [self._queue.get(timeout=0.25)]
            except queue.Empty:
                self._sinks.tick()
                continue
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if item is None:
                    running = False
                    break
                try:
                    self._handle(item)
                except Exception as exc:  # never let the worker die silently and stall close()
                    warnings.warn(f"gradmidi: dropped a step after an error: {exc}", RuntimeWarning, stacklevel=1)
            self._sinks.tick()
            if running and self._batch_seconds:
                time.sleep(self._batch_seconds)
        for slot in self._builder.finish():
            self._emit(slot)

    def _handle(self, item) -> None:
        if item[0] == "step":
            _, step, pending, scaling = item
            norms, present, loss = pending.result()
            skipped = scaling and not np.all(np.isfinite(norms[present]))
            slots = self._builder.add_step(step, norms, present, loss, skipped)
        else:
            _, step, text = item
            slots = self._builder.add_marker(step, text)
        for slot in slots:
            self._emit(slot)

    def _emit(self, slot) -> None:
        self.events.extend(slot.events)
        self.event_counts.update(e.kind for e in slot.events)
        self.slots += 1
        self._sinks.emit(slot)

    # -- closing --------------------------------------------------------------------
    def close(self) -> None:
        """Finishes the score: every note closed, every sink flushed. Safe to call twice."""
        if self._sync_watch is not None:
            self._sync_watch.close()
        if not self.sounding:
            self._closed = True
            while self._in_flight:
                self._in_flight.popleft().wait()
            self._capture.release()
            return
        with self._close_lock:
            if self._closed:
                return
            if self._interrupted:
                self._put(("marker", self._steps, "interrupted"))
                for sink in self._sinks_all:
                    if isinstance(sink, LiveSink):
                        sink.hush()
            self._closed = True
        self._queue.put(None)
        self._worker.join()
        self._capture.release()
        self._sinks.close()
        _LIVE.discard(self)
        if self.audio is not None:
            self._render_audio()
        if _pending_exit and not _closing and threading.current_thread() is threading.main_thread():
            raise SystemExit(_pending_exit)  # the SIGTERM that came while closing

    @staticmethod
    def _check_audio(audio, path, soundfont, sounding=True):
        """Refuses a bad audio= at once (on every rank alike); a missing FluidSynth only warns:
        the .mid is still written."""
        if audio is None:
            return None
        if path is None:
            raise GradmidiError("audio= renders the .mid file: give a path for it too")
        from .fonts import resolve_soundfont
        from .render import FORMATS, fluidsynth_available

        if Path(audio).suffix.lower() not in FORMATS:
            raise GradmidiError(f"{audio}: unknown audio format; use .wav, .flac or .ogg")
        resolve_soundfont(soundfont)
        if not sounding:
            return None
        problem = fluidsynth_available()
        if problem:
            warnings.warn(f"gradmidi: {audio} will not be rendered: {problem}", RuntimeWarning, stacklevel=3)
            return None
        return Path(audio)

    def _render_audio(self) -> None:
        from .render import render

        path = next(s.path for s in self._sinks_all if isinstance(s, MidiFileSink))
        try:
            render(path, self.audio, self.soundfont)
        except Exception as exc:  # the score is safe on disk; a failed render must not raise in __exit__
            warnings.warn(f"gradmidi: could not render {self.audio}: {exc}", RuntimeWarning, stacklevel=3)

    @property
    def steps(self) -> int:
        return self._steps

    def __enter__(self) -> Sonifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CapturedStep:
    """One step's norms on their way to the host; ``sound`` queues it for the score."""

    __slots__ = ("_son", "_step", "_pending", "_scaling", "_sounded")

    def __init__(self, son: Sonifier, step: int, pending, scaling: bool) -> None:
        self._son, self._step, self._pending, self._scaling = son, step, pending, scaling
        self._sounded = False

    def sound(self, loss: float | None = None) -> None:
        """Queues the step, with a host ``loss`` if one is given (and none was at capture)."""
        if self._sounded or self._son._closed:
            return
        self._sounded = True
        if loss is not None:
            self._pending.set_loss(loss)
        self._son._put(("step", self._step, self._pending, self._scaling))


def _param_ids(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _check_options(given: dict) -> None:
    """The Sonifier's own options (mapping and clock options check themselves)."""
    real("flush_interval", given["flush_interval"], 0, math.inf, low_open=True)
    whole("queue_size", given["queue_size"], 1, 1 << 24)
    real("live_latency", given["live_latency"], 0, 60, low_open=True)
    for name in ("epoch_downbeat", "include_frozen"):
        flag(name, given[name])
    if given["duration"] is not None:
        real("duration", given["duration"], 0, 1e9, low_open=True)
    if given["total_steps"] is not None:
        whole("total_steps", given["total_steps"], 1, 2**53)
    if given["title"] is not None and not isinstance(given["title"], str):
        raise GradmidiError(f"title must be a string, not {given['title']!r}")
    for name, kind, what in (("mapping", Mapping, "a gradmidi.Mapping"), ("spikes", SpikeSettings,
                             "a gradmidi.SpikeSettings")):
        if given[name] is not None and not isinstance(given[name], kind):
            raise GradmidiError(f"{name} must be {what}, not {given[name]!r}")
    sinks = given["sinks"]
    if sinks is not None and (not isinstance(sinks, (list, tuple)) or not all(isinstance(s, Sink) for s in sinks)):
        raise GradmidiError(f"sinks must be a list of gradmidi.Sink, not {sinks!r}")


def _live_sinks(live, api, soundfont, latency) -> list[Sink]:
    """live=: 'synth[:DRIVER]', 'virtual[:NAME]', a port name (or part of one), a Sink, or a list."""
    if live is None:
        return []
    from .outputs import open_output

    specs = live if isinstance(live, (list, tuple)) else [live]
    out = []
    for spec in specs:
        if isinstance(spec, Sink):
            out.append(spec)
        elif isinstance(spec, str) and spec:
            out.append(LiveSink(open_output(spec, api, soundfont), max_latency=latency))
        else:
            raise GradmidiError(f"live= takes a port name, 'virtual[:NAME]', 'synth[:DRIVER]' or a Sink, not {spec!r}")
    return out


def _serve_sink(serve, public: bool, token: str | None) -> Sink | None:
    """serve=: 'HOST:PORT' (loopback unless serve_public=True) or a ready ServeSink."""
    if serve is None:
        if public or token is not None:
            raise GradmidiError("serve_public= and serve_token= need serve='HOST:PORT'")
        return None
    if isinstance(serve, Sink):
        return serve
    if not isinstance(serve, str):
        raise GradmidiError(f"serve= takes 'HOST:PORT' (like '127.0.0.1:7400'), not {serve!r}")
    from .sinks.serve import ServeSink

    return ServeSink(serve, public=public, token=token)


_hooks_installed = False


def _install_exit_hooks(son: Sonifier) -> None:
    """atexit closes every open Sonifier; SIGINT and SIGTERM mark them interrupted, then act as before.

    The handlers do no closing themselves (they may run while the training thread holds the
    queue's lock): SIGINT's KeyboardInterrupt, or SIGTERM's SystemExit (exit status 143, where
    SIGTERM had its default action, which would skip atexit and leave the file up to 2 s old),
    unwinds through ``with`` blocks, and atexit closes whatever is still open. A handler set
    before gradmidi's is called instead; an ignored SIGTERM stays ignored.
    """
    global _hooks_installed
    _LIVE.add(son)
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN or previous is None:  # ignored, or set outside Python: leave it
                continue
            try:
                signal.signal(signum, _on_signal(previous))
            except ValueError:  # not the main interpreter thread after all
                break


def _on_signal(previous):
    def handler(signum, frame):
        for live in list(_LIVE):
            live._interrupted = True
        if callable(previous):
            previous(signum, frame)
        elif signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        elif _closing or any(live._closed for live in list(_LIVE)):
            global _pending_exit  # a close is under way: let it finish, then exit (Sonifier.close)
            _pending_exit = 128 + signum
        else:
            raise SystemExit(128 + signum)

    return handler


_closing = False  # atexit is closing everything
_pending_exit: int | None = None  # a SIGTERM came while a close was under way


def _close_all() -> None:
    global _closing
    _closing = True
    for son in list(_LIVE):
        son.close()
