"""gradmidi with PyTorch Lightning: an MLP on scikit-learn's bundled digits.

    python examples/lightning_digits.py [--out digits.mid] [--epochs 3] [--logs runs]

The callback writes the score; the module also logs Lightning's grad_norm to TensorBoard, so
the finished run can be replayed too: gradmidi sonify runs/lightning_logs -o replay.mid
"""

import argparse

import lightning.pytorch as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import grad_norm
from sklearn.datasets import load_digits

from gradmidi.integrations.lightning import SonifyCallback

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="digits.mid")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--logs", default="runs")
args = parser.parse_args()


class Digits(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(128), nn.Linear(128, 10))

    def training_step(self, batch, index):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer):
        self.log_dict(grad_norm(self, norm_type=2))  # for `gradmidi sonify` after the run

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
data = torch.utils.data.TensorDataset(x, torch.tensor(digits.target))
torch.manual_seed(0)
trainer = L.Trainer(
    max_epochs=args.epochs, accelerator="cpu", accumulate_grad_batches=2, gradient_clip_val=1.0,
    default_root_dir=args.logs, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
    enable_checkpointing=False, callbacks=[SonifyCallback(args.out, scale="major_pentatonic", key="D")],
)
trainer.fit(Digits(), torch.utils.data.DataLoader(data, batch_size=32, shuffle=True))
print(f"{trainer.global_step} optimizer steps sounded into {args.out}")
