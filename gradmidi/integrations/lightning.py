"""PyTorch Lightning: ``trainer = L.Trainer(callbacks=[SonifyCallback("run.mid")])``.

The norms are taken in ``on_before_optimizer_step``: after the backward passes of every
accumulated micro-batch, after a mixed-precision scaler has unscaled the gradients, and before
Lightning clips them. So one slot is one optimizer step, and you hear the norms clipping sees.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..sonifier import Sonifier
from ._common import require, score_path, sonifier_options

try:  # the unified package; the standalone pytorch_lightning has the same API
    import lightning.pytorch as L
except ImportError:
    L = require("pytorch_lightning", "lightning")


class SonifyCallback(L.Callback):
    """Sonifies a Lightning run; ``path`` defaults to ``gradmidi.mid`` in the trainer's log folder.

    Every ``Sonifier`` option may be given (``scale=``, ``live="synth"``, ``voices=``...). Only
    global rank zero writes, plays or serves. With several optimizers (manual optimization), each
    optimizer step is a slot of its own in which the layers that optimizer updates sound.
    """

    def __init__(self, path: str | os.PathLike | None = None, **options: Any) -> None:
        super().__init__()
        self.path = path
        self.options = sonifier_options(options)
        self.sonifier: Sonifier | None = None
        self._loss: torch.Tensor | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = score_path(self.path, trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # The LightningModule itself, not the strategy's wrapper: layer names without "module.".
        self.sonifier = Sonifier(pl_module, path, title=type(pl_module).__name__, **self.options)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sonifier is not None:
            self.sonifier.epoch(f"epoch {trainer.current_epoch}")

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # Under accumulation each micro-batch's loss is already divided by their number: the
        # sum is the step's mean loss. Under 16-mixed the loss arrives scaled: undo it on the
        # device (the scale is a tensor; reading it as a number would sync).
        loss = loss.detach()
        scale = getattr(_scaler(trainer), "_scale", None)
        if scale is not None:
            loss = loss / scale.to(loss.dtype)
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.sonifier is None:
            return
        several = len(trainer.optimizers) > 1
        self.sonifier.step(loss=self._loss, scaler=_scaler(trainer), optimizer=optimizer if several else None)
        self._loss = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.sonifier is not None:
            self.sonifier.marker(f"exception: {type(exception).__name__}")
            if isinstance(exception, KeyboardInterrupt):  # Lightning catches Ctrl-C: the run is interrupted
                self.sonifier.interrupt()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.sonifier is not None:
            self.sonifier.close()


def _scaler(trainer: L.Trainer) -> Any:
    """The mixed-precision GradScaler, or None (its type depends on the precision plugin)."""
    return getattr(trainer.precision_plugin, "scaler", None)
