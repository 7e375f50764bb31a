"""The seed experiment, made real: the seed post's CNN in its five settings, one score each.

Data: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, shipped inside
the package, nothing downloaded) resized to 28x28, or MNIST read from a local folder.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import GradmidiError
from .scorefile import read_score
from .sonifier import Sonifier


@dataclass(frozen=True)
class Setting:
    name: str
    label: str
    optimizer: str
    lr: float
    batch: int


SETTINGS: tuple[Setting, ...] = (
    Setting("sgd-lr0.01-bs10", "SGD 0.01 bs10", "sgd", 0.01, 10),
    Setting("sgd-lr0.1-bs10", "SGD 0.1 bs10", "sgd", 0.1, 10),
    Setting("sgd-lr1.0-bs10", "SGD 1.0 bs10", "sgd", 1.0, 10),
    Setting("sgd-lr1.0-bs256", "SGD 1.0 bs256", "sgd", 1.0, 256),
    Setting("adam-lr0.01-bs10", "Adam 0.01 bs10", "adam", 0.01, 10),
)


class SeedCNN(nn.Module):
    """The seed post's network: conv 1->20 5x5, conv 20->50 5x5, fc 800->500, fc 500->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return F.log_softmax(self.fc2(x), dim=1)


def load_digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits, upsampled to 28x28 and standardised like the seed's MNIST."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise GradmidiError("the demo's data needs scikit-learn: pip install 'gradmidi[demo]'") from None
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    return _standardise(images), torch.tensor(digits.target, dtype=torch.long)


def load_mnist(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST training images from torchvision's folder layout (``DIR/MNIST/raw``), .gz or not."""
    root = Path(folder)
    for candidate in (root / "MNIST" / "raw", root / "raw", root):
        images = _find(candidate, "train-images-idx3-ubyte")
        labels = _find(candidate, "train-labels-idx1-ubyte")
        if images and labels:
            x = torch.tensor(_read_idx(images), dtype=torch.float32).unsqueeze(1) / 255.0
            return _standardise(x), torch.tensor(_read_idx(labels), dtype=torch.long)
    raise GradmidiError(f"{folder}: no MNIST files (train-images-idx3-ubyte, train-labels-idx1-ubyte) found")


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        ndim = data[3]
        shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, IndexError, EOFError) as exc:
        raise GradmidiError(f"{path}: not a readable MNIST idx file ({exc})") from None


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std()


@dataclass
class Result:
    setting: Setting
    path: Path
    summary: dict = field(default_factory=dict)
    final_loss: float = math.nan
    audio: Path | None = None

    @property
    def first_divergence(self) -> int | None:
        steps = [self.summary["first_event_step"].get(k) for k in ("nan", "inf")]
        steps = [s for s in steps if s is not None]
        return min(steps) if steps else None


def train_setting(
    setting: Setting,
    data: tuple[torch.Tensor, torch.Tensor],
    out: Path,
    steps: int = 200,
    seed: int = 1,
    on_step: Callable[[], None] | None = None,
    audio: bool = False,
    **sonifier_options: Any,
) -> Result:
    """Trains the seed CNN for ``steps`` steps under one setting, sounding every step."""
    torch.manual_seed(seed)
    images, labels = data
    model = SeedCNN()
    opt: torch.optim.Optimizer
    if setting.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=0.5)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=setting.lr)
    generator = torch.Generator().manual_seed(seed)
    path = out / f"{setting.name}.mid"
    loss = torch.tensor(math.nan)
    wav = path.with_suffix(".wav") if audio else None
    with Sonifier(model, path, title=setting.label, audio=wav, **sonifier_options) as son:
        order = torch.randperm(len(images), generator=generator)
        cursor = 0
        for _ in range(steps):
            if cursor + setting.batch > len(order):
                order, cursor = torch.randperm(len(images), generator=generator), 0
                son.epoch()
            idx = order[cursor : cursor + setting.batch]
            cursor += setting.batch
            opt.zero_grad()
            loss = F.nll_loss(model(images[idx]), labels[idx])
            loss.backward()
            son.step(loss=loss)
            opt.step()
            if on_step:
                on_step()
    return Result(setting, path, read_score(path).summary(), float(loss.detach()),
                  wav if wav is not None and wav.exists() else None)


def pick_settings(names: list[str] | None) -> list[Setting]:
    if not names:
        return list(SETTINGS)
    by_name = {s.name: s for s in SETTINGS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise GradmidiError(f"unknown demo setting {unknown[0]!r}; choose from: {', '.join(by_name)}")
    return [by_name[n] for n in names]
