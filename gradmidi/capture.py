"""Per-layer gradient norms on the device, handed to the host without a sync.

The only module that knows torch tensors and devices. Per step it runs, for each
(device, dtype) group, one fused ``_foreach_norm``, squares the norms and adds them
into a per-layer vector with ``index_add_`` (the ``clip_grad_norm_`` recipe), then
starts one non-blocking copy of that vector per device. The host reads it later, on
the gradmidi worker thread, once the copy's event has completed.

FSDP2 (``fully_shard``): gradients are DTensors. Each rank squares the norms of its local
shards the same way, then one all-reduce (SUM, ``async_op``) per step, over the sharding
group, adds every layer's squares at once; the worker waits for it. Gradients not sharded
over that group are divided by its size first, so they count once. The sum keeps NaN and Inf.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np
import torch

from .errors import GradmidiError
from .wrappers import module_roles

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup
    from torch.distributed.tensor import DTensor

# One entry of a device's plan: (indices into grads of one dtype and kind, layer index tensor on the device,
# whether they are DTensors, their weights or None, whether any is sparse).
_Entry = tuple[list[int], torch.Tensor, bool, "torch.Tensor | None", bool]
_Plan = list[tuple[torch.device, list[_Entry]]]
# FSDP2: (the sharding group, each parameter's weight, the home device of the local shards)
_Sharding = tuple["ProcessGroup", np.ndarray, torch.device]


class HostCopy(NamedTuple):
    """One device's per-layer squares on their way to the host."""

    values: torch.Tensor  # on the host (pinned), or the device tensor itself when that is the CPU
    ready: torch.Event | None  # read only after this event completes; None: already on the host
    ends_with_loss: bool  # the last entry is the step's loss, written on the device (never read there)


@dataclass(frozen=True)
class Layer:
    """A module that owns parameters directly; its name is its exact module path (``features.0``)."""

    name: str
    class_name: str  # the class it is voiced as (an adapter's: the adapted module's)
    params: tuple[torch.nn.Parameter, ...]
    shown: str = ""  # its path as the user wrote the model: wrapper plumbing removed (wrappers.py)
    factor: str | None = None  # an adapter's part (lora_A, ...); None: the module itself
    adapter: bool = False  # an adapter's weights (PEFT)
    trainable: bool = True  # any of its parameters requires a gradient


def model_layers(model: torch.nn.Module) -> list[Layer]:
    """Every layer in model order, frozen ones too. A parameter shared by several modules counts at
    its first owner."""
    seen: set[int] = set()
    layers = []
    for name, module, role in module_roles(model):
        params = []
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        if params:
            layers.append(Layer(name, role.class_name, tuple(params), role.shown, role.factor, role.adapter,
                                any(p.requires_grad for p in params)))
    return layers


def discover_layers(model: torch.nn.Module, include_frozen: bool = False) -> list[Layer]:
    """The layers that sound, in model order: those that train, or all with ``include_frozen``."""
    return [layer for layer in model_layers(model) if include_frozen or layer.trainable]


def _loss_parts(loss: Any) -> tuple[torch.Tensor | None, float | None]:
    """(device loss, host loss): one number either way (shape and type are host metadata: no sync)."""
    if loss is None:
        return None, None
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise GradmidiError(f"loss= must be the step's one loss value, not a tensor of shape {tuple(loss.shape)} "
                                "(reduce it first, e.g. loss.mean())")
        return loss.detach(), None
    try:
        return None, float(loss)
    except (TypeError, ValueError):
        shown = repr(loss)
        raise GradmidiError(f"loss= must be a number or a one-element tensor, not {shown[:60]}") from None


class PendingNorms:
    """Host-side handle to one step's norms; ``result`` waits only on the gradmidi thread."""

    __slots__ = ("_parts", "_present", "_n", "_loss", "_reduced")

    def set_loss(self, loss: float | None) -> None:
        """Gives a loss known only after capture (a Trainer's logs); a device loss given at launch wins."""
        if not any(part.ends_with_loss for part in self._parts):
            self._loss = None if loss is None else float(loss)

    def __init__(self, parts: list[HostCopy], present: np.ndarray, n_layers: int, loss: float | None,
                 reduced: tuple[torch.Tensor, Any] | None = None) -> None:
        self._parts = parts
        self._present = present
        self._n = n_layers
        self._loss = loss
        self._reduced = reduced  # (per-layer squares, all-reduce work) under FSDP2

    def done(self) -> bool:
        """Whether this step's all-reduce (if any) has completed; never blocks."""
        return self._reduced is None or self._reduced[1].is_completed()

    def wait(self) -> None:
        if self._reduced is not None:
            self._reduced[1].wait()

    def result(self) -> tuple[np.ndarray, np.ndarray, float | None]:
        """(per-layer norms, which layers had a gradient, loss)."""
        squares = np.zeros(self._n, dtype=np.float64)
        loss = self._loss
        if self._reduced is not None:
            totals, work = self._reduced
            work.wait()
            squares += totals.cpu().numpy()
        for part in self._parts:
            if part.ready is not None:
                part.ready.synchronize()
            values = part.values.numpy().astype(np.float64, copy=False)
            if part.ends_with_loss:
                loss = float(values[-1])
                values = values[:-1]
            if len(values):
                squares += values
        with np.errstate(invalid="ignore"):
            norms = np.sqrt(squares)
        norms[~self._present] = np.nan
        return norms, self._present.copy(), loss

    @staticmethod
    def results(pendings: Sequence[PendingNorms]) -> list[tuple[np.ndarray, np.ndarray, float | None]]:
        """``result`` of many steps at once: steps whose squares are one host tensor each (the CPU
        training loop) are read as one matrix, so a batch costs a few array operations, not a few
        per step; any other step is read on its own."""
        simple = [p for p in pendings if p._reduced is None and len(p._parts) == 1 and p._parts[0].ready is None]
        if len(simple) < 2 or len(simple) < len(pendings) or len({p._parts[0].values.shape for p in simple}) > 1:
            return [p.result() for p in pendings]
        with_loss = simple[0]._parts[0].ends_with_loss
        if any(p._parts[0].ends_with_loss != with_loss for p in simple):
            return [p.result() for p in pendings]
        values = torch.stack([p._parts[0].values for p in simple]).numpy().astype(np.float64, copy=False)
        losses: list[float | None] = values[:, -1].tolist() if with_loss else [p._loss for p in simple]
        squares = values[:, :-1] if with_loss else values
        present = np.stack([p._present for p in simple])
        with np.errstate(invalid="ignore"):
            norms = np.where(present, np.sqrt(squares), np.nan)
        return list(zip(norms, present, losses, strict=True))


class NormCapture:
    """Computes every layer's L2 gradient norm with a fixed number of fused kernels."""

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self._params = [p for layer in layers for p in layer.params]
        self._owner = np.array([i for i, layer in enumerate(layers) for _ in layer.params], dtype=np.int64)
        self._plans: dict[tuple[int, ...], _Plan] = {}
        self._all = tuple(range(len(self._params)))
        self._all_present = np.ones(len(layers), dtype=bool)
        self._all_present[np.setdiff1d(np.arange(len(layers)), self._owner)] = False
        self._all_present.flags.writeable = False  # shared by every full step's PendingNorms
        # FSDP2: (the sharding group, each parameter's weight: 1 if sharded over it, else 1/size)
        self._sharding = _sharding(self._params)

    def release(self) -> None:
        """Drops the process group and cached plans: a group still referenced when the interpreter
        shuts down is destroyed too late (gloo then aborts the process at exit)."""
        self._sharding = None
        self._plans.clear()

    @property
    def reduces(self) -> bool:
        """Whether each step runs an all-reduce (sharded parameters): every rank must launch."""
        return self._sharding is not None

    def launch(self, loss: torch.Tensor | float | None = None, only: set[int] | None = None) -> PendingNorms:
        """Queue this step's norm kernels and host copies; returns at once.

        ``only``: ids of the parameters to include (one optimizer's), the rest count as absent.
        """
        loss_tensor, host_loss = _loss_parts(loss)  # a wrong loss is refused before anything is launched
        all_grads = [p.grad for p in self._params]
        positions: Sequence[int]
        if only is None and not any(map(operator.is_, all_grads, repeat(None))):
            grads = cast("list[torch.Tensor]", all_grads)  # just checked: no None among them
            key = positions = self._all  # the usual step: every parameter has a gradient
            present = self._all_present
        else:
            picked = [(i, g) for i, (p, g) in enumerate(zip(self._params, all_grads, strict=True))
                      if g is not None and (only is None or id(p) in only)]
            positions = [i for i, _ in picked]
            grads = [g for _, g in picked]
            key = tuple(positions)
            present = np.zeros(len(self.layers), dtype=bool)
            present[self._owner[positions]] = True
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:  # presence patterns churn (e.g. MoE): keep the cache small
                self._plans.clear()
            plan = self._plans[key] = self._plan(grads, list(positions))

        loss_device = loss_tensor.device if loss_tensor is not None else None
        if self._sharding is not None:
            return self._launch_sharded(self._sharding, plan, grads, present, loss_tensor, host_loss)
        parts: list[HostCopy] = []
        devices = [d for d, _ in plan]
        if loss_device is not None and loss_device not in devices:
            devices.append(loss_device)
        groups = dict(plan)
        for device in devices:
            has_loss = device == loss_device
            totals = self._squares(device, groups.get(device, ()), grads, extra=int(has_loss))
            if has_loss and loss_tensor is not None:  # has_loss: loss_tensor is on this device
                totals[-1] = loss_tensor.reshape(-1)[0]  # a device write, not a host read
            parts.append(HostCopy(*_to_host(totals), has_loss))
        return PendingNorms(parts, present, len(self.layers), host_loss)

    def _launch_sharded(self, sharding: _Sharding, plan: _Plan, grads: list[torch.Tensor], present: np.ndarray,
                        loss_tensor: torch.Tensor | None, host_loss: float | None) -> PendingNorms:
        """Local squares, then one asynchronous all-reduce of every layer's squares together."""
        import torch.distributed as dist

        group, home = sharding[0], sharding[2]
        totals: torch.Tensor | None = None
        for device, entries in plan:
            squares = self._squares(device, entries, grads)
            totals = squares if totals is None else totals + squares.to(totals.device)
        if totals is None:  # no gradient on this rank: still take part in the collective
            totals = torch.zeros(len(self.layers), dtype=_acc_dtype(home), device=home)
        work = dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=group, async_op=True)
        parts: list[HostCopy] = []
        if loss_tensor is not None:
            parts.append(HostCopy(*_to_host(loss_tensor.reshape(-1)[:1].to(torch.float64)), True))
        return PendingNorms(parts, present, len(self.layers), host_loss, reduced=(totals, work))

    def _squares(self, device: torch.device, entries: Sequence[_Entry], grads: list[torch.Tensor],
                 extra: int = 0) -> torch.Tensor:
        """Per-layer sums of squared gradient norms on one device (plus ``extra`` spare slots)."""
        acc_dtype = _acc_dtype(device)
        totals = torch.zeros(len(self.layers) + extra, dtype=acc_dtype, device=device)
        for idx, owners, local, weights, sparse in entries:
            if local:
                shards = cast("list[DTensor]", grads)  # the plan marked these as DTensors
                tensors = [shards[j]._local_tensor for j in idx]
            elif sparse:
                tensors = [_dense(grads[j]) for j in idx]
            else:  # the common case: no per-tensor Python beyond the gather
                tensors = grads if len(idx) == len(grads) else [grads[j] for j in idx]
            norms = torch._foreach_norm(tensors, 2.0, dtype=torch.float32)
            squares = torch.stack(norms).to(acc_dtype).square_()
            if weights is not None:
                squares.mul_(weights)
            totals.index_add_(0, owners, squares)
        return totals

    def _plan(self, grads: list[torch.Tensor], positions: list[int]) -> _Plan:
        """Per device, the entries of ``_squares`` (see ``_Entry``)."""
        by_device: dict[torch.device, dict[tuple[torch.dtype, bool], list[int]]] = {}
        for j, g in enumerate(grads):
            kind = (g.dtype, hasattr(g, "device_mesh"))  # a DTensor: its local shard is read
            by_device.setdefault(g.device, {}).setdefault(kind, []).append(j)
        plan: _Plan = []
        for device, by_kind in by_device.items():
            entries: list[_Entry] = []
            for (_, local), idx in by_kind.items():
                params = [positions[j] for j in idx]
                owners = _on_device(self._owner[params], device)
                weights = None
                if self._sharding is not None and (self._sharding[1][params] != 1.0).any():
                    weights = _on_device(self._sharding[1][params].astype(np.float32 if device.type == "mps"
                                                                          else np.float64), device)
                sparse = any(grads[j].is_sparse for j in idx)
                entries.append((idx, owners, local, weights, sparse))
            plan.append((device, entries))
        return plan


def _sharding(params: list[torch.nn.Parameter]) -> _Sharding | None:
    """(process group, per-parameter weights, home device) when parameters are sharded DTensors.

    The group is the one mesh dimension the parameters are sharded over (HSDP: the shard
    dimension, not the replicate one). A gradient sharded over it counts fully; any other
    (replicated over it, or a plain tensor) is the same on every rank of the group, so each
    rank adds 1/size of its square. None when nothing is sharded: no collective is needed.
    """
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    dtensors = [p for p in params if isinstance(p, DTensor)]
    if not dtensors:
        return None
    mesh = dtensors[0].device_mesh
    dims: set[int] = set()
    for p in dtensors:
        if p.device_mesh != mesh:
            raise GradmidiError("gradmidi needs every sharded parameter on one device mesh; "
                                f"found {mesh} and {p.device_mesh}")
        if any(pl.is_partial() for pl in p.placements):
            raise GradmidiError("a parameter with a Partial placement cannot be sounded: reduce it first")
        dims.update(d for d, pl in enumerate(p.placements) if pl.is_shard())
    if not dims:
        return None
    if len(dims) > 1:
        raise GradmidiError("gradmidi reduces over one sharded mesh dimension (FSDP2 or HSDP); these "
                            f"parameters are sharded over mesh dimensions {sorted(dims)}")
    dim = dims.pop()
    size = mesh.size(dim)
    weights = np.array([1.0 if isinstance(p, DTensor) and p.placements[dim].is_shard() else 1.0 / size
                        for p in params])
    home = dtensors[0].to_local().device
    return mesh.get_group(dim), weights, home


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _on_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without a sync: through pinned memory on CUDA (a plain copy
    from pageable memory would wait for the device)."""
    host = torch.from_numpy(np.ascontiguousarray(values))
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _dense(g: torch.Tensor) -> torch.Tensor:
    # Sparse gradients (nn.Embedding(sparse=True)) may hold duplicate indices: coalesce first.
    return g.coalesce().values() if g.is_sparse else g


def _to_host(totals: torch.Tensor) -> tuple[torch.Tensor, torch.Event | None]:
    if totals.device.type == "cpu":
        return totals, None
    host = torch.empty(totals.shape, dtype=totals.dtype, pin_memory=totals.device.type == "cuda")
    host.copy_(totals, non_blocking=True)
    event = torch.Event(device=totals.device)
    event.record()
    return host, event
