"""The Transformers Trainer running DeepSpeed ZeRO with gradmidi's SonifyCallback, inside the
ranks tests/dskit.py starts: on rank zero, the norms the callback handed its sink at each
optimizer step and the ``grad_norm`` the Trainer logged for it (DeepSpeed's own global norm).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from gradmidi.integrations.transformers import SonifyCallback
from gradmidi.sinks import Sink

STEPS, MICRO_BATCH, ACCUMULATE = 3, 4, 2


class Recorder(Sink):
    name = "recorder"

    def __init__(self):
        self.norms = []

    def emit(self, slot):
        self.norms.append([float(v) for v in slot.norms])


class LoggedNorms(TrainerCallback):
    def __init__(self):
        self.grad_norms = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "grad_norm" in logs:
            self.grad_norms.append(float(logs["grad_norm"]))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x, labels=None):
        out = self.head(torch.tanh(self.encoder(x)))
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


class Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return STEPS * MICRO_BATCH * ACCUMULATE * 2  # 2 ranks

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(4, generator=g), "labels": torch.randn(2, generator=g)}


def run_trainer(out: Path, stage: int, rank: int) -> dict:
    torch.manual_seed(0)
    recorder, logged = Recorder(), LoggedNorms()
    ds_config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                 "train_batch_size": "auto", "zero_optimization": {"stage": stage},
                 "zero_allow_untested_optimizer": True}
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=MICRO_BATCH,
                             gradient_accumulation_steps=ACCUMULATE, num_train_epochs=1, deepspeed=ds_config,
                             use_cpu=True, report_to=[], logging_steps=1, save_strategy="no", max_grad_norm=0.0)
    callback = SonifyCallback(out / "trainer.mid", sinks=[recorder])
    trainer = Trainer(model=Tiny(), args=args, train_dataset=Pairs(), callbacks=[callback, logged])
    trainer.train()
    if rank:
        return {"steps": callback.sonifier.steps}
    return {"norms": recorder.norms, "grad_norms": logged.grad_norms, "steps": callback.sonifier.steps,
            "voices": [v.name for v in callback.sonifier.voices]}
