"""Hugging Face Transformers: ``Trainer(..., callbacks=[SonifyCallback("run.mid")])``.

The norms are taken in ``on_pre_optimizer_step``, once per optimizer step (after gradient
accumulation). The Trainer clips before that hook: with ``max_grad_norm`` set (it is 1.0 by
default) you hear clipped gradients, whose total norm never exceeds it. To hear the raw
norms, set ``max_grad_norm=0`` and clip in your own way, or accept that the sound shows the
shape of the gradients with explosions flattened. The loss comes from the Trainer's logs:
with ``logging_steps=1`` every step has its loss; otherwise the logged mean is given to the
step at which it is logged.

Under DeepSpeed, Accelerate's backward runs ``engine.step()`` itself, before that hook, and the
ZeRO partitions are gone by then: the norms are taken as the engine's optimizer step starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import GradmidiError
from ..sonifier import CapturedStep, Sonifier
from ..zero import call_before_step, engine_of_module
from ._common import require, score_path, sonifier_options

if TYPE_CHECKING:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
else:  # at run time through require(), which names the extra to install when it is missing
    TrainerCallback = require("transformers", "transformers").TrainerCallback


class SonifyCallback(TrainerCallback):
    """Sonifies a Trainer run; ``path`` defaults to ``gradmidi.mid`` in ``output_dir``.

    Every ``Sonifier`` option may be given. Only the world's process zero writes, plays or serves.
    """

    def __init__(self, path: str | os.PathLike | None = None, **options: Any) -> None:
        self.path = path
        self.options = sonifier_options(options)
        self.sonifier: Sonifier | None = None
        self._held: CapturedStep | None = None
        self._deepspeed = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: torch.nn.Module | None = None, **kwargs: Any) -> None:
        if model is None:  # the Trainer always passes its model; a hand-made call might not
            raise GradmidiError("SonifyCallback.on_train_begin needs the model (model=...)")
        path = score_path(self.path, args.output_dir)
        if state.is_world_process_zero:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = engine_of_module(model)
        self.sonifier = Sonifier(engine or model, path, title=type(model).__name__, **self.options)
        if engine is not None:
            call_before_step(engine.optimizer, self._capture)
            self._deepspeed = True

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if self.sonifier is not None:
            self._release()
            self.sonifier.epoch(f"epoch {round(state.epoch or 0) + 1}")

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        if not self._deepspeed:
            self._capture()

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
        if self.sonifier is not None:
            self._release()
            self.sonifier.close()

    def _capture(self) -> None:
        if self.sonifier is not None:
            self._release()
            self._held = self.sonifier.capture()

    def _release(self, loss: float | None = None) -> None:
        if self._held is not None:
            self._held.sound(loss)
            self._held = None
