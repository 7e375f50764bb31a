"""The training-loop API: ``Sonifier(model, "run.mid")`` and ``son.step(loss=loss)``.

The Sonifier knows torch and the training loop, and nothing about MIDI: it finds the layers,
captures their norms (``capture``), and hands each step to the score session (``session``),
which builds the slots and feeds the sinks on its own thread. The training thread only
launches the norm kernels and hands a handle over (never blocking: if gradmidi falls behind
by ``queue_size`` steps, a step is dropped and counted rather than stalling training).

Under torch.distributed only global rank zero sounds: the other ranks open no sink and
start no thread. They do only what correctness needs: nothing per step under DDP (its
gradients are already averaged), their part of the step's one all-reduce under FSDP2, tensor
and pipeline parallelism.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from collections.abc import Mapping as MappingABC
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, lifecycle
from .capture import Layer, NormCapture, PendingNorms, _to_host, model_layers
from .checks import flag, real, whole
from .clock import MAX_BPM, Clock
from .distributed import GradientSyncWatch, layer_class_name, rank_and_world, unwrap
from .errors import GradmidiError
from .events import SpikeSettings
from .mapping import Mapping
from .pipeline import AGGREGATES
from .score import MarkerRecord, ScoreHeader, StepRecord
from .session import ScoreSession
from .sinks.base import Sink
from .sinks.factory import LiveSpec, build_sinks, check_audio, check_user_sinks
from .stages import gather_layers, pipeline_stages
from .voices import LayerRecord, plan_voices
from .wrappers import user_model
from .zero import BoundaryWatch, ZeroCapture, deepspeed_engine


class Sonifier:
    """Listens to a model's gradients: one note per layer (or voice) per step, events as drums.

    Call ``step`` after ``loss.backward()`` (after ``scaler.unscale_`` under mixed precision),
    before gradient clipping and ``optimizer.step()``. Under torch.distributed (make it after
    ``init_process_group``) only global rank 0 sounds unless ``rank_zero_only=False``;
    ``step()`` must still be called on every rank.

    Args:
        model: the ``torch.nn.Module`` being trained; wrappers (DDP, DeepSpeed, FSDP2, torch.compile,
            activation checkpointing, PEFT adapters) are looked past: layers are named as you wrote them.
            Under pipeline parallelism, this rank's ``PipelineStage`` (or a list of its stages).
        path: the .mid file to write while training runs (crash-safe), or None.

        scale, key: the musical scale (``gradmidi.SCALES``) and its key ("A", "F#", "Bb").
        low_note, high_note: the register, MIDI notes 0-127.
        norm_range: the norms at the bottom and top of the register (log-scaled in between).
        velocity: 1-127, or "norm" (louder for higher notes).
        adaptive, adaptive_warmup, adaptive_every, adaptive_quantiles: re-centre the range on
            the run's own norms after a warm-up (each change is recorded in the score).
        mapping: a ready ``gradmidi.Mapping`` instead of the options above.

        bpm: the tempo (unset: 120, the Clock's); a slot (one step, or ``every`` steps) is
            ``slot_beats`` of a beat.
        every: steps per slot, aggregated by ``aggregate``.
        arpeggio: spread a slot's voices across it instead of sounding them together.
        gate: the share of a slot a note sounds.
        duration, total_steps: play the whole run in about ``duration`` seconds (picks the tempo,
            so not with ``bpm``, and ``every`` past the fastest tempo, with a warning).

        voices: group layers into voices (a list of patterns or {voice: patterns}).
        programs: General MIDI program per voice ({voice, layer or pattern: number or name}); an
            exact name beats a pattern.
        max_voices: at most this many voices (1-15); more layers are grouped.
        include_frozen: also voice an adapted model's frozen base. A plain model's frozen layers
            always have voices: they sound from the step they get gradients (gradual unfreezing).
        adapter_factors: hear an adapter's factors (LoRA's A and B, DoRA's magnitude) as voices of
            their own instead of as the module they adapt.

        aggregate: "max" (default), "rms" or "last" (captures only each slot's last step).
        spikes: ``gradmidi.SpikeSettings`` for spike and loss-spike detection.
        epoch_downbeat: a soft drum on each ``epoch()`` marker.
        title: the score's title (default: the model's class name).

        live: play live: a port name (or part of one), "virtual[:NAME]", "synth[:DRIVER]", an open
            mido output port (left open on close: it is yours), a ``Sink``, or a list of them.
        midi_api: the MIDI API for ports (LINUX_ALSA, UNIX_JACK, MACOSX_CORE, WINDOWS_MM).
        live_latency: the most seconds of backlog live output holds; more is merged.
        serve: stream the score to ``gradmidi listen`` on "HOST:PORT" (loopback unless
            ``serve_public=True``; then a token is needed: ``serve_token=``, or one is generated).
        audio: render the .mid to this .wav, .flac or .ogg when the run closes (needs ``path``).
        audio_duration: seconds the audio lasts at most: a longer run is rendered as a summary (its
            slots merged by ``aggregate``, every event and marker kept); None renders it whole.
        soundfont: the SoundFont for ``audio`` and ``live="synth"`` (default: gradmidi's own).
        sinks: your own ``gradmidi.Sink`` objects, which receive every slot.
        flush_interval: seconds between rewrites of the .mid file.

        resume: continue the score already at ``path`` (same voices, mapping and tempo) instead of
            starting a new one: what it holds from ``start_step`` on (steps sounded after the
            checkpoint being resumed, then lost) is dropped, a marker "resumed at step N" is written,
            and the new steps follow. Without ``start_step``, after the score's last step.
        start_step: the step training resumes at (the checkpoint's step); also the first step's
            number in a new score.

        queue_size: steps the hand-over holds before dropping (and counting) steps.
        rank_zero_only: under torch.distributed, only global rank 0 sounds.
    """

    def __init__(
        self,
        model: Any,
        path: str | os.PathLike | None = None,
        *,
        scale: str = Mapping.scale,
        key: str | int = Mapping.key,
        low_note: int = Mapping.low_note,
        high_note: int = Mapping.high_note,
        norm_range: tuple[float, float] = Mapping.norm_range,
        velocity: int | str = Mapping.velocity,
        adaptive: bool = Mapping.adaptive,
        adaptive_warmup: int = Mapping.adaptive_warmup,
        adaptive_every: int = Mapping.adaptive_every,
        adaptive_quantiles: tuple[float, float] = Mapping.adaptive_quantiles,
        mapping: Mapping | None = None,
        bpm: float | None = None,
        slot_beats: float = Clock.slot_beats,
        every: int = Clock.every,
        arpeggio: bool = Clock.arpeggio,
        gate: float = Clock.gate,
        duration: float | None = None,
        total_steps: int | None = None,
        voices: Sequence[str] | MappingABC[str, Any] | None = None,
        programs: MappingABC[str, int | str] | None = None,
        max_voices: int = 15,
        include_frozen: bool = False,
        adapter_factors: bool = False,
        aggregate: str = "max",
        spikes: SpikeSettings | None = None,
        epoch_downbeat: bool = False,
        title: str | None = None,
        live: LiveSpec | Sequence[LiveSpec] | None = None,
        midi_api: str | None = None,
        live_latency: float = 0.5,
        serve: str | Sink | None = None,
        serve_public: bool = False,
        serve_token: str | None = None,
        audio: str | os.PathLike | None = None,
        audio_duration: float | None = None,
        soundfont: str | os.PathLike | None = None,
        sinks: Sequence[Sink] | None = None,
        flush_interval: float = 2.0,
        resume: bool = False,
        start_step: int | None = None,
        queue_size: int = 4096,
        rank_zero_only: bool = True,
    ) -> None:
        _check_options(locals())
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise GradmidiError(f"path must be a .mid file name (a str or os.PathLike) or None, not {path!r}")
        mapping = _mapping_of(mapping, Mapping(
            scale=scale, key=key, low_note=low_note, high_note=high_note, norm_range=norm_range, velocity=velocity,
            adaptive=adaptive, adaptive_warmup=adaptive_warmup, adaptive_every=adaptive_every,
            adaptive_quantiles=adaptive_quantiles))
        clock = _clock_of(bpm, duration, total_steps, slot_beats=slot_beats, every=every, arpeggio=arpeggio, gate=gate)
        user_sinks = check_user_sinks(sinks)

        self.rank, world = rank_and_world()
        # Only rank zero sounds, unless each rank asks to (then give each its own path).
        self.sounding = self.rank == 0 or not rank_zero_only
        self.audio = check_audio(audio, path, soundfont, self.sounding)
        stages = pipeline_stages(model)  # pipeline parallelism: every stage's layers, from every rank
        piped = gather_layers(stages) if stages is not None else None
        engine = deepspeed_engine(model) if piped is None else None  # DeepSpeed: its ZeRO partitions' gradients
        model = unwrap(piped.module if piped is not None else model if engine is None else engine.module)
        self._model = model
        layers, table, assignment = _voice_plan(piped.layers if piped is not None else model_layers(model),
                                                include_frozen, voices=voices, programs=programs,
                                                max_voices=max_voices, factors=adapter_factors)
        model_name = layer_class_name(user_model(model))
        self.header = ScoreHeader(
            voices=table, mapping=mapping, clock=clock, title=title or model_name,
            info={"gradmidi": __version__, "model": model_name, "aggregate": aggregate,
                  "spikes": _strict_json(asdict(spikes or SpikeSettings())),
                  # the exact module paths, for decoding a voice back to parameters
                  "layers": [layer.name for layer in layers], "layer_voices": assignment.tolist(),
                  "first_step": 0},
            epoch_downbeat=epoch_downbeat,
        )
        self.voices = table
        self.layers = layers
        self._capture: NormCapture | ZeroCapture = (
            ZeroCapture(engine.optimizer, layers) if engine is not None
            else NormCapture(layers, piped.holders if piped is not None else None))
        # aggregate="last" sounds a slot's last step only, so the others need not be captured at all.
        self._sample_every = clock.every if aggregate == "last" else 1
        # Distributed: skip steps whose gradients were not synchronised (gradient accumulation). A pipeline
        # schedule syncs its stages' gradients by the end of its step() itself; DeepSpeed says its boundaries.
        self._sync_watch: GradientSyncWatch | BoundaryWatch | None = (
            BoundaryWatch(engine) if engine is not None
            else GradientSyncWatch(model) if world > 1 and piped is None else None)
        self._rebind_params = isinstance(self._sync_watch, GradientSyncWatch)
        self.unsynced_steps = 0
        self._steps = 0
        self._epochs = 0
        self._closed = False
        self._warned_closed = False
        self._heard_any = False  # the first step sounded has been looked at (for a missing backward)
        self.server: Sink | None = None
        self._session: ScoreSession | None = None
        keep = None
        if start_step is not None:
            self._steps = self.header.info["first_step"] = start_step
        if resume and path is not None and Path(path).exists():
            keep = self._resume(Path(path), start_step)
        if not self.sounding:
            self._in_flight: deque[PendingNorms] = deque()  # this rank's unfinished all-reduces (FSDP2)
            return
        built = build_sinks(path=path, live=live, serve=serve, serve_public=serve_public, serve_token=serve_token,
                            audio=self.audio, audio_duration=audio_duration, soundfont=soundfont, midi_api=midi_api,
                            live_latency=live_latency, flush_interval=flush_interval, keep=keep, sinks=user_sinks)
        self.server = built.server
        self._session = ScoreSession(self.header, built.sinks, assignment=assignment, aggregate=aggregate,
                                     spikes=spikes, threaded=True, queue_size=queue_size)
        lifecycle.watch(self)
        if keep is not None:
            self.marker(f"resumed at step {self._steps}")

    def _resume(self, path: Path, start_step: int | None) -> tuple[list[list[tuple[int, bytes]]], int]:
        """Takes the earlier score at ``path`` as this run's beginning: checks it is the same music,
        sets the step to go on from; returns its tracks and the tick the new steps start at."""
        from .scorefile import load_tracks, read_score

        earlier = read_score(path)
        if not earlier.decodable:
            raise GradmidiError(f"resume=True: {path} is not a gradmidi score to continue")
        header = self.header
        for what, ours, theirs in (("voices", header.voices, earlier.header.voices),
                                   ("mapping", header.mapping, earlier.header.mapping),
                                   ("clock", header.clock, earlier.header.clock)):
            if ours != theirs:
                raise GradmidiError(f"resume=True: {path} has other {what} than this run "
                                    f"({_difference(ours, theirs)}); give the same options, or another path")
        first = int(earlier.header.info.get("first_step", 0))
        step = earlier.summary()["steps"] + first if start_step is None else start_step
        if step < first:
            raise GradmidiError(f"start_step={step} is before {path}'s first step ({first})")
        clock = header.clock
        slot = clock.slot_of(step - first)
        header.info.update(first_step=first, resumed={"step": step, "log_range": list(earlier.log_range_at(
            max(slot - 1, 0)))})
        self._steps = step  # the slot it falls in starts anew (the file keeps the slots before it)
        return load_tracks(path)[0], clock.tick_of(slot)

    # -- training thread ------------------------------------------------------------
    def step(self, loss=None, scaler=None, optimizer=None) -> None:
        """Sounds this step's gradients. Never blocks and never raises on NaN/Inf.

        ``loss``: the step's loss (a tensor stays on its device: no sync). ``scaler``: the
        GradScaler, so its skipped steps are heard as such. ``optimizer``: with several
        optimizers (a GAN), the one about to step: only the layers it updates sound in this
        slot, and each optimizer step is a slot of its own.
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
            if not self._warned_closed:
                self._warned_closed = True
                warnings.warn("gradmidi: step() after close(): the score is finished, so this step and any later "
                              "are not sounded; make a new Sonifier for more", UserWarning, stacklevel=3)
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
            if self._capture.reduces:  # this rank's part of the step's one all-reduce (with its loss: pipelines)
                self._keep_in_flight(self._capture.launch(loss if self._capture.spread else None, only))
            self._steps += 1
            return None
        scaling = bool(scaler is not None and scaler.is_enabled()) or self._capture.skips_nonfinite
        pending = self._capture.launch(loss, only)
        step = self._steps
        self._steps += 1
        return CapturedStep(self, step, pending, scaling)

    def epoch(self, label: str | None = None) -> None:
        """Marks an epoch boundary before the next step ("epoch 1", "epoch 2", ... by default)."""
        if self._closed or self._session is None:
            return
        self._epochs += 1
        self._session.submit(MarkerRecord(self._steps, label or f"epoch {self._epochs}"))

    def show(self, *, url: str | None = None, height: int = 620) -> None:
        """In a notebook, embeds the run's live page (plays and draws it in the cell); needs ``serve=``."""
        from .notebook import show_live

        show_live(self.server, url=url, height=height)

    def marker(self, text: str) -> None:
        """A free text marker (for example 'lr warm-up done') before the next step."""
        if not self._closed and self._session is not None:
            self._session.submit(MarkerRecord(self._steps, str(text)))

    def _rebind_if_rewrapped(self) -> None:
        """fully_shard replaces a module's parameters: if the model was sharded after the
        Sonifier was made, read the new (sharded) parameters of the same layers."""
        fresh = {layer.name: layer for layer in model_layers(self._model)}
        rebound = [replace(layer, params=fresh[layer.name].params) if layer.name in fresh else layer
                   for layer in self.layers]
        if [list(map(id, layer.params)) for layer in rebound] != [list(map(id, layer.params)) for layer in self.layers]:
            self.layers = rebound
            self._capture = NormCapture(rebound)

    def _keep_in_flight(self, pending: PendingNorms) -> None:
        """Non-sounding ranks never read their all-reduce; they only see that it completes."""
        self._in_flight.append(pending)
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft()
        if len(self._in_flight) > 64:  # something is stuck: do not grow without bound
            self._in_flight.popleft().wait()

    # -- what has been heard ----------------------------------------------------------
    @property
    def steps(self) -> int:
        """Steps seen so far (sounded or not)."""
        return self._steps

    @property
    def slots(self) -> int:
        return self._session.slots if self._session is not None else 0

    @property
    def dropped(self) -> int:
        """Steps lost because gradmidi fell ``queue_size`` steps behind training."""
        return self._session.dropped if self._session is not None else 0

    @property
    def events(self) -> deque:
        """The most recent events (up to 10,000)."""
        return self._session.events if self._session is not None else deque()

    @property
    def event_counts(self):
        """Events by kind, over the whole run."""
        return self._session.event_counts if self._session is not None else {}

    @property
    def sinks(self) -> list[Sink]:
        """Where the score goes (empty on ranks that do not sound)."""
        return self._session.sinks if self._session is not None else []

    # -- closing --------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def interrupt(self) -> None:
        """Marks the run interrupted: the score gets an 'interrupted' marker and live output stops
        at once when it closes. SIGTERM calls this, and a close during or after Ctrl-C's KeyboardInterrupt; it
        only sets a flag."""
        if self._session is not None:
            self._session.interrupt()

    def close(self) -> None:
        """Finishes the score: every note closed, every sink flushed (and audio rendered). Safe to call twice."""
        if self._closed:
            return
        if lifecycle.interrupted_by_ctrl_c():
            self.interrupt()
        self._closed = True
        if self._sync_watch is not None:
            self._sync_watch.close()
        if self._session is None:
            while self._in_flight:
                self._in_flight.popleft().wait()
            self._capture.release()
            return
        self._session.close()
        self._capture.release()
        if self._session.notes == 0 and self._session.sinks:
            warnings.warn(f"gradmidi: the score holds no notes ({self._steps} steps sounded): call son.step() after "
                          "loss.backward() in each training step (and before optimizer.zero_grad())", UserWarning,
                          stacklevel=2)
        lifecycle.forget(self)
        lifecycle.exit_if_pending()

    def __enter__(self) -> Sonifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = ", ".join(sink.name for sink in self.sinks) or ("no sink" if self.sounding else "nothing (not rank 0)")
        state = "closed" if self._closed else f"step {self._steps}"
        voices = f"{len(self.voices)} voice{'s' if len(self.voices) != 1 else ''}"
        return f"<Sonifier {self.header.title!r}: {voices}, {self.header.clock.bpm:g} bpm, {state}, to {where}>"


class CapturedStep:
    """One step's norms on their way to the host; ``sound`` hands it to the score."""

    __slots__ = ("_son", "step", "_pending", "_scaling", "_sounded", "_factor")

    def __init__(self, son: Sonifier, step: int, pending: PendingNorms, scaling: bool) -> None:
        self._son, self.step, self._pending, self._scaling = son, step, pending, scaling
        self._sounded = False
        self._factor: tuple[np.ndarray, torch.Event | None] | None = None

    def unscale(self, factor: torch.Tensor | float) -> None:
        """Says every gradient had been multiplied by ``factor`` when this step was captured (as
        clipping does, by min(1, max_norm / total)): the step sounds the norms from before.
        A tensor stays on its device: it is read on the worker thread."""
        if isinstance(factor, torch.Tensor):
            self._factor = _to_host(factor.detach().reshape(1).to(torch.float64))
        else:
            self._factor = np.array([float(factor)]), None

    def sound(self, loss: float | None = None) -> None:
        """Queues the step, with a host ``loss`` if one is given (and none was at capture)."""
        session = self._son._session
        if self._sounded or self._son._closed or session is None:
            return
        self._sounded = True
        if loss is not None:
            self._pending.set_loss(loss)
        session.submit(self)

    def record(self) -> StepRecord:
        """The step's host values (waits for the copies: the session's worker thread calls this)."""
        return self._record(*self._pending.result())

    @staticmethod
    def records(steps: Sequence[CapturedStep]) -> list[StepRecord]:
        """``record`` of a batch of steps, their host values read together (see ``PendingNorms.results``)."""
        results = PendingNorms.results([s._pending for s in steps])
        return [step._record(*values) for step, values in zip(steps, results, strict=True)]

    def _record(self, norms: np.ndarray, present: np.ndarray, loss: float | None) -> StepRecord:
        if self._factor is not None:
            factor, ready = self._factor
            if ready is not None:
                ready.synchronize()
            with np.errstate(divide="ignore", invalid="ignore"):  # a zero factor (an Inf total) leaves NaN
                norms = norms / float(factor[0])
        if not self._son._heard_any:  # the first step: a call before backward() would leave the score silent
            self._son._heard_any = True
            if not present.any():
                warnings.warn(f"gradmidi: no layer had a gradient at step {self.step}, so it is silent: call "
                              "son.step() after loss.backward() (and before optimizer.zero_grad())", UserWarning,
                              stacklevel=1)
        skipped = self._scaling and not bool(np.all(np.isfinite(norms[present])))
        return StepRecord(self.step, norms, present, loss, skipped)


def _difference(ours: Any, theirs: Any) -> str:
    """The first field two records differ in, said as 'name: this run's, the score's'."""
    if isinstance(ours, tuple):
        if len(ours) != len(theirs):
            return f"{len(ours)} against {len(theirs)}"
        return next(_difference(a, b) for a, b in zip(ours, theirs, strict=True) if a != b)
    for name in getattr(ours, "__dataclass_fields__", {}):
        if getattr(ours, name) != getattr(theirs, name):
            return f"{name}: {getattr(ours, name)!r} here, {getattr(theirs, name)!r} in the score"
    return "they differ"


def _mapping_of(mapping: Mapping | None, given: Mapping) -> Mapping:
    """``mapping=``, or the one the mapping options make; not both."""
    if mapping is not None and given != Mapping():
        raise GradmidiError("give either mapping= or mapping options, not both")
    return mapping or given


def _clock_of(bpm: float | None, duration: float | None, total_steps: int | None, *, every: int,
              **options: Any) -> Clock:
    """The tempo given, or the one that fits ``total_steps`` into ``duration`` seconds (then ``every``
    may have to rise: said in a warning)."""
    if duration is None:
        if total_steps is not None:
            raise GradmidiError("total_steps= is only used with duration= (to fit the run into that time)")
        return Clock(bpm=Clock.bpm if bpm is None else bpm, every=every, **options)
    if not total_steps:
        raise GradmidiError("duration= needs total_steps= (how many steps the run will take)")
    if bpm is not None:
        raise GradmidiError(f"bpm={bpm!r} and duration={duration!r} both set the tempo: give one of them")
    clock = Clock.for_duration(duration, total_steps, every=every, **options)
    if every != 1 and clock.every != every:
        warnings.warn(f"gradmidi: every={every} raised to {clock.every} to fit total_steps={total_steps} "
                      f"into duration={duration:g} s (at most {MAX_BPM:g} bpm)", UserWarning, stacklevel=3)
    return clock


def _voice_plan(everything: list[Layer], include_frozen: bool,
                **planning: Any) -> tuple[list[Layer], tuple, np.ndarray]:
    """(the layers captured, the voice table, each captured layer's voice) of every layer of the model."""
    if not include_frozen and everything and not any(layer.trainable for layer in everything):
        raise GradmidiError("every parameter of the model is frozen (requires_grad=False): nothing will have a "
                            "gradient to hear; pass include_frozen=True to sound frozen layers anyway")
    sounds = _sounding(everything, include_frozen)
    table, assignment = plan_voices(
        [LayerRecord(layer.shown, layer.class_name, sounded, layer.factor)
         for layer, sounded in zip(everything, sounds, strict=True)], **planning)
    layers = [layer for layer, sounded in zip(everything, sounds, strict=True) if sounded]
    return layers, table, assignment[sounds]


def _sounding(layers: list[Layer], include_frozen: bool) -> list[bool]:
    """Which layers are captured and voiced. Every layer of a plain model, frozen ones too: a layer
    frozen now may be unfrozen later (gradual unfreezing), and it sounds from the step it gets a
    gradient (until then it has none, so it is silent). An adapted model's frozen base is never
    trained: it shapes the voices, silently, unless ``include_frozen``."""
    adapted = any(layer.adapter for layer in layers)
    return [include_frozen or layer.trainable or not adapted for layer in layers]


def _strict_json(values: dict) -> dict:
    """math.inf (a switched-off spike rule) as "inf": headers travel as strict JSON."""
    return {k: v if not isinstance(v, float) or math.isfinite(v) else str(v) for k, v in values.items()}


def _param_ids(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _check_options(given: dict) -> None:
    """The Sonifier's own options (mapping and clock options check themselves)."""
    real("flush_interval", given["flush_interval"], 0, math.inf, low_open=True)
    whole("queue_size", given["queue_size"], 1, 1 << 24)
    real("live_latency", given["live_latency"], 0, 60, low_open=True)
    for name in ("epoch_downbeat", "include_frozen", "adapter_factors", "rank_zero_only", "serve_public"):
        flag(name, given[name])
    flag("resume", given["resume"])
    if given["audio_duration"] is not None:
        real("audio_duration", given["audio_duration"], 3, math.inf)  # the render's 2 s tail, and some music
    if given["start_step"] is not None:
        whole("start_step", given["start_step"], 0, 2**53)
    if given["aggregate"] not in AGGREGATES:
        raise GradmidiError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {given['aggregate']!r}")
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
