"""Hugging Face Transformers: ``Trainer(..., callbacks=[SonifyCallback("run.mid")])``.

The norms are taken in ``on_pre_optimizer_step``, once per optimizer step (after gradient
accumulation). The Trainer clips before that hook; with ``max_grad_norm`` set (1.0 by default)
clipping has multiplied every gradient by one factor, min(1, max_norm / (total + 1e-6)), from
the total norm its clipping returns. The callback keeps that total (a tensor left on its device)
and the worker thread divides the factor back out: you hear what the model did, not what
clipping left. The loss comes from the Trainer's logs: with ``logging_steps=1`` every step has
its loss; otherwise the logged mean is given to the step at which it is logged.

Under DeepSpeed, Accelerate's backward runs ``engine.step()`` itself, before that hook, and the
ZeRO partitions are gone by then: the norms are taken as the engine's optimizer step starts
(DeepSpeed clips inside that step, after the norms are taken, so they are the raw ones too).

``trainer.train(resume_from_checkpoint=...)`` continues the score: the Trainer has restored
``state.global_step`` when training begins, and the score goes on from that step.

When training ends, the score's audio and plot go to the Trainer's TensorBoard (the folder its
TensorBoard callback writes) and W&B run (``report_to``), unless ``dashboards=False``.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import GradmidiError
from ..sonifier import CapturedStep, Sonifier
from ..zero import call_before_step, engine_of_module
from ._common import require, score_path, sonifier_options
from ._dashboards import dashboard_faults_warn, publish

if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
else:  # at run time through require(), which names the extra to install when it is missing
    TrainerCallback = require("transformers", "transformers").TrainerCallback


class SonifyCallback(TrainerCallback):
    """Sonifies a Trainer run; ``path`` defaults to ``gradmidi.mid`` in ``output_dir``.

    Every ``Sonifier`` option may be given. Only the world's process zero writes, plays or serves.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, dashboards: bool = True, **options: Any) -> None:
        self.path = path
        self.dashboards = dashboards
        self.options = sonifier_options(options)
        self.sonifier: Sonifier | None = None
        self._held: CapturedStep | None = None
        self._clip_total: torch.Tensor | float | None = None  # this step's total norm before clipping
        self._unwatch: Callable[[], None] | None = None
        self._trainer: Callable[[], Trainer | None] = lambda: None
        self._score = ""
        self._deepspeed = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        if model is None:  # the Trainer always passes its model; a hand-made call might not
            raise GradmidiError("SonifyCallback.on_train_begin needs the model (model=...)")
        self._score = path = score_path(self.path, args.output_dir)
        if state.is_world_process_zero:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A fresh TrainerState starts at step 0; one loaded from a checkpoint is where it stopped.
        resuming = state.global_step > 0
        engine = engine_of_module(model)
        self.sonifier = Sonifier(engine or model, path, title=type(model).__name__, resume=resuming,
                                 start_step=state.global_step if resuming else None, **self.options)
        if engine is not None:
            call_before_step(engine.optimizer, self._capture)
            self._deepspeed = True
        trainer = _running_trainer()
        if trainer is not None:
            self._trainer = weakref.ref(trainer)
        if args.max_grad_norm and args.max_grad_norm > 0 and engine is None:  # DeepSpeed clips after our norms
            self._watch_clipping(trainer)

    def _watch_clipping(self, trainer: Trainer | None) -> None:
        """Keeps the total that the Trainer's clipping returns (its norm before clipping)."""
        clip = getattr(trainer, "_clip_grad_norm", None)
        if trainer is None or clip is None:
            warnings.warn("gradmidi: this Trainer's clipping total cannot be read: with max_grad_norm set, you hear "
                          "the clipped gradients (pass max_grad_norm=0 for the raw ones)", UserWarning, stacklevel=3)
            return

        def clip_and_keep_total(model: torch.nn.Module) -> Any:
            total = clip(model)
            self._clip_total = total
            return total

        trainer._clip_grad_norm = clip_and_keep_total  # type: ignore[method-assign]
        self._unwatch = lambda: vars(trainer).pop("_clip_grad_norm", None)

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if self.sonifier is None:
            return
        self._release()
        done = state.epoch or 0.0
        whole = math.floor(done + 1e-6)
        if done - whole <= 1e-6:  # not an epoch resumed from a checkpoint in its middle: that one is marked
            self.sonifier.epoch(f"epoch {whole + 1}")

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        total, self._clip_total = self._clip_total, None
        if self._deepspeed:
            return  # taken as the engine's optimizer step starts (call_before_step)
        self._capture()
        if self._held is not None and total is not None:
            self._held.unscale(_clip_factor(total, args.max_grad_norm))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        # When the Trainer is about to log, the loss comes in on_log; otherwise it never will.
        if not control.should_log:
            self._release()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        self._release(loss if isinstance(loss, (int, float)) else None)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self.sonifier is not None:
            self._release()
            self.sonifier.close()
            if self.dashboards and self.sonifier.sounding and state.is_world_process_zero:
                with dashboard_faults_warn():
                    self._publish(state.global_step)

    def _publish(self, step: int) -> None:
        """To the folder of the Trainer's TensorBoard callback (its writer is closed by now: a
        writer of our own adds an event file beside its) and to the W&B run its callback made."""
        trainer = self._trainer()
        if trainer is None or self.sonifier is None:
            return
        from transformers.integrations import TensorBoardCallback, WandbCallback

        callbacks = trainer.callback_handler.callbacks
        folders = [cb.logging_dir for cb in callbacks if isinstance(cb, TensorBoardCallback) and cb.logging_dir]
        wandb = sys.modules.get("wandb")
        runs = [wandb.run] if any(isinstance(cb, WandbCallback) for cb in callbacks) and wandb and wandb.run else []
        writers = [_summary_writer(folder) for folder in folders]
        try:
            publish(self._score, step, tensorboard=writers, wandb=runs,
                    soundfont=self.options.get("soundfont"))
        finally:
            for writer in writers:
                writer.close()

    def _capture(self) -> None:
        if self.sonifier is not None:
            self._release()
            self._held = self.sonifier.capture()

    def _release(self, loss: float | None = None) -> None:
        if self._held is not None:
            self._held.sound(loss)
            self._held = None


def _summary_writer(folder: str) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=folder)


def _clip_factor(total: torch.Tensor | float, max_norm: float) -> torch.Tensor | float:
    """What clipping multiplied every gradient by, as torch's clip_grad_norm_ computes it; a
    tensor total gives a tensor on its device (reading it here would wait for the device)."""
    if isinstance(total, torch.Tensor):
        return torch.clamp(max_norm / (total.detach() + 1e-6), max=1.0)
    return min(1.0, max_norm / (float(total) + 1e-6))


def _running_trainer() -> Trainer | None:
    """The Trainer whose training loop is calling this callback. Trainers do not hand themselves
    to callbacks, so it is found on the stack (a few frames up: the loop, then its callback handler)."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(10):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None
