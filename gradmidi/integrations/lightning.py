"""PyTorch Lightning: ``trainer = L.Trainer(callbacks=[SonifyCallback("run.mid")])``.

The norms are taken in ``on_before_optimizer_step``: after the backward passes of every
accumulated micro-batch, after a mixed-precision scaler has unscaled the gradients, and before
Lightning clips them. So one slot is one optimizer step, and you hear the norms clipping sees.

A fit resumed from a checkpoint (``trainer.fit(ckpt_path=...)``) continues its score: the callback's
own state in the checkpoint holds the score's path and step, and the Sonifier is made in
``on_train_start``, once Lightning has restored ``global_step``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..sonifier import Sonifier
from ._common import require, score_path, sonifier_options
from ._dashboards import dashboard_faults_warn, publish

try:  # the unified package; the standalone pytorch_lightning has the same API
    import lightning.pytorch as L
except ImportError:
    L = require("pytorch_lightning", "lightning")


class SonifyCallback(L.Callback):
    """Sonifies a Lightning run; ``path`` defaults to ``gradmidi.mid`` in the trainer's log folder.

    Every ``Sonifier`` option may be given (``scale=``, ``live="synth"``, ``voices=``...). Only
    global rank zero writes, plays or serves. With several optimizers (manual optimization), each
    optimizer step is a slot of its own in which the layers that optimizer updates sound.

    When fitting ends, the score's audio and plot go to the trainer's TensorBoard and W&B loggers
    (tags ``gradmidi/audio``, ``gradmidi/plot``), unless ``dashboards=False``.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, dashboards: bool = True, **options: Any) -> None:
        super().__init__()
        self.path = path
        self.dashboards = dashboards
        self.options = sonifier_options(options)
        self.sonifier: Sonifier | None = None
        self._loss: torch.Tensor | None = None
        self._restored: dict[str, Any] | None = None  # this callback's state in the checkpoint being resumed
        self._score = ""  # the score's path, once known
        self._marked_epoch = -1  # the last epoch marked in the score

    @property
    def state_key(self) -> str:
        # Two of these callbacks (two scores) keep apart in a checkpoint.
        return self._generate_state_key(path=None if self.path is None else os.fspath(self.path))

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where the score is and how far it goes."""
        if self.sonifier is None:
            return {}
        return {"path": self._score, "step": self.sonifier.steps, "epoch": self._marked_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_fit_start: Lightning restores global_step from a checkpoint after that hook.
        restored, self._restored = self._restored or {}, None
        resuming = bool(restored) or trainer.global_step > 0
        self._score = path = self._path_of(trainer, restored)
        self._marked_epoch = int(restored.get("epoch", -1))
        if trainer.is_global_zero:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Our own step count: one per optimizer step, as Lightning's global_step counts them.
        start = int(restored.get("step", trainer.global_step)) if resuming else None
        # The LightningModule itself, not the strategy's wrapper: layer names without "module.".
        self.sonifier = Sonifier(pl_module, path, title=type(pl_module).__name__, resume=resuming, start_step=start,
                                 **self.options)

    def _path_of(self, trainer: L.Trainer, restored: dict[str, Any]) -> str:
        """The path given; else the score being resumed (a logger's new version folder would
        otherwise start another); else ``gradmidi.mid`` in the log folder."""
        earlier = restored.get("path")
        if self.path is None and earlier and Path(earlier).exists():
            return str(earlier)
        return score_path(self.path, trainer.log_dir or trainer.default_root_dir)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # An epoch resumed from a checkpoint in its middle is marked already.
        if self.sonifier is not None and trainer.current_epoch > self._marked_epoch:
            self._marked_epoch = trainer.current_epoch
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

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before the loggers are finalised (in teardown): the score is complete, the writers still open.
        if self.sonifier is None:
            return
        self.sonifier.close()
        if self.dashboards and self.sonifier.sounding and trainer.is_global_zero:
            with dashboard_faults_warn():
                tensorboard, wandb = _dashboards(trainer)
                publish(self._score, trainer.global_step, tensorboard=tensorboard, wandb=wandb,
                        soundfont=self.options.get("soundfont"))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.sonifier is not None:
            self.sonifier.close()


def _dashboards(trainer: L.Trainer) -> tuple[list[Any], list[Any]]:
    """The trainer's TensorBoard writers and W&B runs."""
    import importlib

    loggers = importlib.import_module(f"{L.__name__}.loggers")  # lightning.pytorch's or pytorch_lightning's
    tensorboard = [lg.experiment for lg in trainer.loggers if isinstance(lg, loggers.TensorBoardLogger)]
    wandb = [lg.experiment for lg in trainer.loggers if isinstance(lg, loggers.WandbLogger)]
    return tensorboard, wandb


def _scaler(trainer: L.Trainer) -> Any:
    """The mixed-precision GradScaler, or None (its type depends on the precision plugin)."""
    return getattr(trainer.precision_plugin, "scaler", None)
