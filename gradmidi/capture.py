"""Per-layer gradient norms on the device, handed to the host without a sync.

The only module that knows torch tensors and devices. Per step it runs, for each
(device, dtype) group, one fused ``_foreach_norm``, squares the norms and adds them
into a per-layer vector with ``index_add_`` (the ``clip_grad_norm_`` recipe), then
starts one non-blocking copy of that vector per device. The host reads it later, on
the gradmidi worker thread, once the copy's event has completed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Layer:
    """A module that owns parameters directly; its name is its module path (``features.0``)."""

    name: str
    class_name: str
    params: tuple[torch.nn.Parameter, ...]


def discover_layers(model: torch.nn.Module, include_frozen: bool = False) -> list[Layer]:
    """Layers in model order. A parameter shared by several modules counts at its first owner."""
    seen: set[int] = set()
    layers = []
    for name, module in model.named_modules():
        params = []
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        if params and (include_frozen or any(p.requires_grad for p in params)):
            layers.append(Layer(name, type(module).__name__, tuple(params)))
    return layers


class PendingNorms:
    """Host-side handle to one step's norms; ``result`` waits only on the gradmidi thread."""

    __slots__ = ("_parts", "_present", "_n", "_loss")

    def set_loss(self, loss: float | None) -> None:
        """Gives a loss known only after capture (a Trainer's logs); a device loss given at launch wins."""
        if not isinstance(self._loss, str):
            self._loss = None if loss is None else float(loss)

    def __init__(self, parts, present: np.ndarray, n_layers: int, loss) -> None:
        self._parts = parts  # [(host tensor, event or None, has_loss)]
        self._present = present
        self._n = n_layers
        self._loss = loss  # float, None, or "buffer": the last entry of a part

    def result(self) -> tuple[np.ndarray, np.ndarray, float | None]:
        """(per-layer norms, which layers had a gradient, loss)."""
        squares = np.zeros(self._n, dtype=np.float64)
        loss = self._loss if not isinstance(self._loss, str) else None
        for host, event, has_loss in self._parts:
            if event is not None:
                event.synchronize()
            values = host.numpy().astype(np.float64, copy=False)
            if has_loss:
                loss = float(values[-1])
                values = values[:-1]
            squares += values
        with np.errstate(invalid="ignore"):
            norms = np.sqrt(squares)
        norms[~self._present] = np.nan
        return norms, self._present.copy(), loss


class NormCapture:
    """Computes every layer's L2 gradient norm with a fixed number of fused kernels."""

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self._params = [p for layer in layers for p in layer.params]
        self._owner = np.array([i for i, layer in enumerate(layers) for _ in layer.params], dtype=np.int64)
        self._plans: dict[tuple[int, ...], list] = {}

    def launch(self, loss: torch.Tensor | float | None = None, only: set[int] | None = None) -> PendingNorms:
        """Queue this step's norm kernels and host copies; returns at once.

        ``only``: ids of the parameters to include (one optimizer's), the rest count as absent.
        """
        grads, positions = [], []
        for i, p in enumerate(self._params):
            g = p.grad
            if g is not None and (only is None or id(p) in only):
                grads.append(g)
                positions.append(i)
        key = tuple(positions)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:  # presence patterns churn (e.g. MoE): keep the cache small
                self._plans.clear()
            plan = self._plans[key] = self._plan(grads, positions)
        present = np.zeros(len(self.layers), dtype=bool)
        present[self._owner[positions]] = True

        loss_tensor = loss.detach() if isinstance(loss, torch.Tensor) else None
        host_loss = float(loss) if loss is not None and loss_tensor is None else None
        parts = []
        loss_device = loss_tensor.device if loss_tensor is not None else None
        devices = [d for d, _ in plan]
        if loss_device is not None and loss_device not in devices:
            devices.append(loss_device)
        groups = dict(plan)
        for device in devices:
            has_loss = device == loss_device
            acc_dtype = torch.float32 if device.type == "mps" else torch.float64
            totals = torch.zeros(len(self.layers) + has_loss, dtype=acc_dtype, device=device)
            for dtype_positions, index in groups.get(device, ()):
                tensors = [_dense(grads[j]) for j in dtype_positions]
                norms = torch._foreach_norm(tensors, 2.0, dtype=torch.float32)
                totals.index_add_(0, index, torch.stack(norms).to(acc_dtype).square_())
            if has_loss:
                totals[-1] = loss_tensor.reshape(-1)[0]  # a device write, not a host read
            parts.append((*_to_host(totals), has_loss))
        return PendingNorms(parts, present, len(self.layers), "buffer" if loss_device is not None else host_loss)

    def _plan(self, grads: list[torch.Tensor], positions: list[int]) -> list:
        """Per device: [(indices into grads of one dtype, layer index tensor on the device)]."""
        by_device: dict[torch.device, dict[torch.dtype, list[int]]] = {}
        for j, g in enumerate(grads):
            by_device.setdefault(g.device, {}).setdefault(g.dtype, []).append(j)
        plan = []
        for device, by_dtype in by_device.items():
            entries = []
            for idx in by_dtype.values():
                owners = torch.as_tensor(self._owner[[positions[j] for j in idx]], device=device)
                entries.append((idx, owners))
            plan.append((device, entries))
        return plan


def _dense(g: torch.Tensor) -> torch.Tensor:
    # Sparse gradients (nn.Embedding(sparse=True)) may hold duplicate indices: coalesce first.
    return g.coalesce().values() if g.is_sparse else g


def _to_host(totals: torch.Tensor):
    if totals.device.type == "cpu":
        return totals, None
    host = torch.empty(totals.shape, dtype=totals.dtype, pin_memory=totals.device.type == "cuda")
    host.copy_(totals, non_blocking=True)
    event = torch.Event(device=totals.device)
    event.record()
    return host, event
