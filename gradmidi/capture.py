"""Per-layer gradient norms on the device, handed to the host without a sync.

The only module that knows torch tensors and devices. The usual step (every gradient on
one device, dense, of one dtype, not sharded) is two ops: one fused ``_foreach_norm`` and
one ``stack`` of the per-tensor norms, with the loss as the last entry, then one non-blocking
copy to the host; the host sums the squares per layer. Otherwise it runs, for each (device,
dtype) group, one fused ``_foreach_norm``, squares the norms and adds them into a per-layer
vector with ``index_add_`` (the ``clip_grad_norm_`` recipe), then starts one non-blocking copy
of that vector per device. The host reads either later, on the gradmidi worker thread, once
the copy's event has completed.

Sharded gradients (FSDP2, HSDP, tensor parallelism: DTensors on a mesh of one or more
dimensions). Each rank squares the norms of its local shards the same way, then one all-reduce
(SUM, ``async_op``) per step adds every layer's squares at once, over the mesh dimensions any
parameter is sharded over; the worker waits for it. A local square that several ranks of that
group hold alike (a gradient replicated over a mesh dimension, a plain tensor) is weighted by
1/copies first, so it counts once (TransformerEngine #715's pitfall). Sequence-parallel norm
layers without FSDP have Partial gradients, whose squares do not add: their local values ride
in the same all-reduce and are squared on the host once summed. Under FSDP2 they are already
reduced (FSDP2 redistributes them to Replicate before its reduce-scatter). The sum keeps NaN and Inf.

Pipeline parallelism (``holders``): a rank holds only its stages' layers. The all-reduce then
runs over every rank; each writes its own layers' squares, which layers had a gradient and its
loss, zeros elsewhere, so rank 0 hears every stage.
"""

from __future__ import annotations

import math
import operator
import warnings
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


class _Reduction(NamedTuple):
    """How a step's per-layer values are summed across ranks: one all-reduce (SUM) over ``group``."""

    group: ProcessGroup | None  # None: every rank (the default group)
    dims: frozenset[int]  # the mesh dimensions the sum runs over
    holders: np.ndarray  # per layer: how many ranks of the group hold it
    home: torch.device  # where the summed vector lives
    spread: bool  # pipeline stages: presence and loss travel in the sum too


class _Partials(NamedTuple):
    """Partial gradients (their local values are summed, then squared on the host)."""

    idx: list[int]  # into grads
    weights: torch.Tensor  # per element on the home device: 1/copies
    owners: np.ndarray  # per element: its layer


_EXACT_IN_FLOAT32 = (torch.float32, torch.bfloat16, torch.float16)  # a loss of these rides in the norms' stack


def norm_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """The dtype ``_foreach_norm`` computes in: float32 for 16-bit gradients (their norm could overflow),
    the gradients' own otherwise (float64 stays float64; a complex gradient's norm is real)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else None


class Segments(NamedTuple):
    """Per-tensor norms in layer order: where each present layer's tensors start, and which layer it is."""

    starts: np.ndarray
    layers: np.ndarray
    n_layers: int

    def squares(self, norms: np.ndarray) -> np.ndarray:
        """Per-layer sums of squares (float64) of per-tensor norms, over the last axis; absent layers 0."""
        sums = np.add.reduceat(np.square(norms, dtype=np.float64), self.starts, axis=-1)
        if len(self.layers) == self.n_layers:
            return sums
        out = np.zeros(norms.shape[:-1] + (self.n_layers,))
        out[..., self.layers] = sums
        return out


class _Prepared(NamedTuple):
    """What a presence pattern needs each step, made once (see ``NormCapture._prepare``)."""

    plan: _Plan
    partials: _Partials | None
    present: torch.Tensor | None  # spread: which layers this rank has a gradient for, on the home device
    segments: Segments | None = None  # one device, one plain dtype: per-tensor norms go to the host as they are


class HostCopy(NamedTuple):
    """One device's per-layer squares (or per-tensor norms, see ``segments``) on their way to the host."""

    values: np.ndarray  # a view of the host tensor (pinned), or of the device tensor itself when that is the CPU
    ready: torch.Event | None  # read only after this event completes; None: already on the host
    ends_with_loss: bool  # the last entry is the step's loss, written on the device (never read there)
    segments: Segments | None = None  # set: the values are per-tensor norms, summed per layer on the host


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


class _Summed(NamedTuple):
    """One step's all-reduce: [squares | spread: presence, loss sum, loss count | partial values]."""

    totals: torch.Tensor
    work: Any  # the all-reduce's handle
    spread: bool
    partial_owners: np.ndarray | None  # per partial value: its layer


class PendingNorms:
    """Host-side handle to one step's norms; ``result`` waits only on the gradmidi thread."""

    __slots__ = ("_parts", "_present", "_n", "_loss", "_reduced")

    def set_loss(self, loss: float | None) -> None:
        """Gives a loss known only after capture (a Trainer's logs); a device loss given at launch wins."""
        if not any(part.ends_with_loss for part in self._parts):
            self._loss = None if loss is None else float(loss)

    def __init__(self, parts: list[HostCopy], present: np.ndarray, n_layers: int, loss: float | None,
                 reduced: _Summed | None = None) -> None:
        self._parts = parts
        self._present = present
        self._n = n_layers
        self._loss = loss
        self._reduced = reduced  # the step's all-reduce, when gradients are sharded

    def done(self) -> bool:
        """Whether this step's all-reduce (if any) has completed; never blocks."""
        return self._reduced is None or self._reduced.work.is_completed()

    def wait(self) -> None:
        if self._reduced is not None:
            self._reduced.work.wait()

    def result(self) -> tuple[np.ndarray, np.ndarray, float | None]:
        """(per-layer norms, which layers had a gradient, loss)."""
        n = self._n
        loss, present = self._loss, self._present
        if self._reduced is None and len(self._parts) == 1:  # one device, the usual step: a few array calls
            part = self._parts[0]
            if part.ready is not None:
                part.ready.synchronize()
            values = part.values
            if part.ends_with_loss:
                loss, values = float(values[-1]), values[:-1]
            if part.segments is not None:
                values = part.segments.squares(values)
            if len(values) == n:
                norms = np.sqrt(values, dtype=np.float64)  # sums of squares: never negative, no warning
                norms[~present] = np.nan
                return norms, present.copy(), loss
        squares = np.zeros(n, dtype=np.float64)
        if self._reduced is not None:
            self._reduced.work.wait()
            summed = self._reduced.totals.cpu().numpy().astype(np.float64, copy=False)
            squares += summed[:n]
            rest = summed[n:]
            if self._reduced.spread:
                present = rest[:n] > 0
                if rest[n + 1] > 0:  # the mean of the losses the ranks gave (a pipeline's last stage)
                    loss = float(rest[n] / rest[n + 1])
                rest = rest[n + 2:]
            if self._reduced.partial_owners is not None:
                squares += np.bincount(self._reduced.partial_owners, weights=np.square(rest), minlength=n)
        for part in self._parts:
            if part.ready is not None:
                part.ready.synchronize()
            values = part.values.astype(np.float64, copy=False)
            if part.ends_with_loss:
                loss = float(values[-1])
                values = values[:-1]
            if part.segments is not None:  # per-tensor norms: their layers' squares
                values = part.segments.squares(values)
            if len(values):
                squares += values
        with np.errstate(invalid="ignore"):
            norms = np.sqrt(squares)
        norms[~present] = np.nan
        return norms, present.copy(), loss

    @staticmethod
    def results(pendings: Sequence[PendingNorms]) -> list[tuple[np.ndarray, np.ndarray, float | None]]:
        """``result`` of many steps at once: steps whose squares are one host tensor each (the CPU
        training loop) are read as one matrix, so a batch costs a few array operations, not a few
        per step; any other step is read on its own."""
        simple = [p for p in pendings if p._reduced is None and len(p._parts) == 1 and p._parts[0].ready is None]
        if len(simple) < 2 or len(simple) < len(pendings):
            return [p.result() for p in pendings]
        first = simple[0]._parts[0]
        if any(p._parts[0].ends_with_loss != first.ends_with_loss or p._parts[0].segments is not first.segments
               or p._parts[0].values.shape != first.values.shape for p in simple):
            return [p.result() for p in pendings]  # not one layout throughout
        values = np.stack([p._parts[0].values for p in simple]).astype(np.float64, copy=False)
        losses: list[float | None] = values[:, -1].tolist() if first.ends_with_loss else [p._loss for p in simple]
        squares = values[:, :-1] if first.ends_with_loss else values
        if first.segments is not None:
            squares = first.segments.squares(squares)
        present = np.stack([p._present for p in simple])
        with np.errstate(invalid="ignore"):
            norms = np.where(present, np.sqrt(squares), np.nan)
        return list(zip(norms, present, losses, strict=True))


class NormCapture:
    """Computes every layer's L2 gradient norm with a fixed number of fused kernels.

    ``holders``: under pipeline parallelism, how many ranks hold each layer (by name); the layers
    of other ranks' stages are given without parameters.
    """

    skips_nonfinite = False  # the optimizer skips non-finite steps by itself (DeepSpeed's fp16 ZeRO: zero.py)

    def __init__(self, layers: list[Layer], holders: dict[str, int] | None = None) -> None:
        self.layers = layers
        self._params = [p for layer in layers for p in layer.params]
        self._owner = np.array([i for i, layer in enumerate(layers) for _ in layer.params], dtype=np.int64)
        self._plans: dict[tuple[int, ...], _Prepared] = {}
        self._all = tuple(range(len(self._params)))
        self._all_present = np.ones(len(layers), dtype=bool)
        self._all_present[np.setdiff1d(np.arange(len(layers)), self._owner)] = False
        self._all_present.flags.writeable = False  # shared by every full step's PendingNorms
        self._reduction = _reduction(self._params, len(layers), None if holders is None else
                                     np.array([holders[layer.name] for layer in layers], dtype=np.float64))
        self._warned_partial = False

    def release(self) -> None:
        """Drops the process group and cached plans: a group still referenced when the interpreter
        shuts down is destroyed too late (gloo then aborts the process at exit)."""
        self._reduction = None
        self._plans.clear()

    @property
    def reduces(self) -> bool:
        """Whether each step runs an all-reduce (sharded parameters, pipeline stages): every rank must launch."""
        return self._reduction is not None

    @property
    def spread(self) -> bool:
        """Whether other ranks hold layers of their own (pipeline stages): every rank's loss counts."""
        return self._reduction is not None and self._reduction.spread

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
        prepared = self._plans.get(key)
        if prepared is None:
            if len(self._plans) > 64:  # presence patterns churn (e.g. MoE): keep the cache small
                self._plans.clear()
            prepared = self._plans[key] = self._prepare(grads, list(positions), present)

        loss_device = loss_tensor.device if loss_tensor is not None else None
        if self._reduction is not None:
            return self._launch_reduced(self._reduction, prepared, grads, present, loss_tensor, host_loss)
        if prepared.segments is not None and (loss_tensor is None or (loss_tensor.dtype in _EXACT_IN_FLOAT32
                                                                      and loss_device == prepared.plan[0][0])):
            # The usual step: one fused norm pass and one stack, the loss riding along; the host sums the layers.
            norms = list(torch._foreach_norm(grads, 2.0, dtype=norm_dtype(grads[0].dtype)))
            if loss_tensor is not None:
                loss_value = loss_tensor if loss_tensor.dim() == 0 else loss_tensor.reshape(())
                norms.append(loss_value if loss_value.dtype == torch.float32 else loss_value.float())
            values, ready = _to_host(torch.stack(norms))
            return PendingNorms([HostCopy(values, ready, loss_tensor is not None, prepared.segments)], present,
                                len(self.layers), host_loss)
        plan = prepared.plan
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

    def _launch_reduced(self, reduction: _Reduction, prepared: _Prepared, grads: list[torch.Tensor],
                        present: np.ndarray, loss_tensor: torch.Tensor | None, host_loss: float | None) -> PendingNorms:
        """Local squares (and the rest of the layout, see ``_Summed``), then one asynchronous all-reduce."""
        import torch.distributed as dist

        n, home, partials = len(self.layers), reduction.home, prepared.partials
        size = n + (n + 2 if reduction.spread else 0) + (0 if partials is None else len(partials.owners))
        summed = torch.zeros(size, dtype=_acc_dtype(home), device=home)  # a rank without gradients takes part too
        for device, entries in prepared.plan:
            summed[:n] += self._squares(device, entries, grads).to(home)
        if reduction.spread:  # which layers had a gradient here, then this rank's loss and whether it gave one
            summed[n:2 * n] = cast("torch.Tensor", prepared.present)
            given = loss_tensor.reshape(-1)[0] if loss_tensor is not None else host_loss
            if given is not None:
                summed[2 * n], summed[2 * n + 1] = given, 1.0  # device writes, not host reads
        if partials is not None:
            shards = cast("list[DTensor]", grads)
            values = torch.cat([shards[j]._local_tensor.reshape(-1) for j in partials.idx])  # views, then one copy
            summed[size - len(partials.owners):].copy_(values).mul_(partials.weights)
        work = dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=reduction.group, async_op=True)
        parts: list[HostCopy] = []
        if loss_tensor is not None and not reduction.spread:
            parts.append(HostCopy(*_to_host(loss_tensor.reshape(-1)[:1].to(torch.float64)), True))
        return PendingNorms(parts, present, n, host_loss,
                            _Summed(summed, work, reduction.spread, None if partials is None else partials.owners))

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
            norms = torch._foreach_norm(tensors, 2.0, dtype=norm_dtype(tensors[0].dtype))
            squares = torch.stack(norms).to(acc_dtype).square_()
            if weights is not None:
                squares.mul_(weights)
            totals.index_add_(0, owners, squares)
        return totals

    def _prepare(self, grads: list[torch.Tensor], positions: list[int], present: np.ndarray) -> _Prepared:
        """The plan of ``_squares`` (see ``_Entry``) per device; under a reduction, the Partial gradients
        and this rank's presence too."""
        reduction = self._reduction
        weights = np.ones(len(grads))
        partial: list[int] = []
        lost: list[int] = []
        if reduction is not None:
            for j, g in enumerate(grads):
                weights[j] = _weight(g, reduction, reduction.holders[self._owner[positions[j]]])
                dims = _partial_dims(g)
                if dims:
                    (lost if reduction.spread or not dims <= reduction.dims else partial).append(j)
            if lost:
                self._warn_partial(positions, lost)
        by_device: dict[torch.device, dict[tuple[torch.dtype, bool], list[int]]] = {}
        taken = set(partial + lost)
        for j, g in enumerate(grads):
            if j not in taken:
                kind = (g.dtype, hasattr(g, "device_mesh"))  # a DTensor: its local shard is read
                by_device.setdefault(g.device, {}).setdefault(kind, []).append(j)
        plan: _Plan = []
        for device, by_kind in by_device.items():
            entries: list[_Entry] = []
            for (_, local), idx in by_kind.items():
                owners = _on_device(self._owner[[positions[j] for j in idx]], device)
                scale = None
                if (weights[idx] != 1.0).any():
                    scale = _on_device(weights[idx].astype(np.float32 if device.type == "mps" else np.float64), device)
                sparse = any(grads[j].is_sparse for j in idx)
                entries.append((idx, owners, local, scale, sparse))
            plan.append((device, entries))
        if reduction is None:
            return _Prepared(plan, None, None, self._segments(plan, grads, positions))
        acc = np.float32 if reduction.home.type == "mps" else np.float64
        partials = None
        if partial:
            sizes = [cast("DTensor", grads[j])._local_tensor.numel() for j in partial]
            partials = _Partials(partial, _on_device(np.repeat(weights[partial], sizes).astype(acc), reduction.home),
                                 np.repeat(self._owner[[positions[j] for j in partial]], sizes))
        here = _on_device(present.astype(acc), reduction.home) if reduction.spread else None
        return _Prepared(plan, partials, here)

    def _segments(self, plan: _Plan, grads: list[torch.Tensor], positions: list[int]) -> Segments | None:
        """The layout of ``launch``'s usual step, where it applies: every gradient on one device,
        dense, of one dtype, in one plain (not sharded) group."""
        if len(plan) != 1 or len(plan[0][1]) != 1:
            return None
        idx, _, local, scale, sparse = plan[0][1][0]
        if local or sparse or scale is not None or idx != list(range(len(grads))):
            return None
        if grads[0].dtype not in _EXACT_IN_FLOAT32:  # a float64 gradient's norm would not stack with a float32 loss
            return None
        owners = self._owner[positions]  # non-decreasing: parameters are held in layer order
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        return Segments(starts, owners[starts], len(self.layers))

    def _warn_partial(self, positions: list[int], lost: list[int]) -> None:
        """Partial gradients gradmidi cannot sum: under pipeline stages (the other stages cannot know
        their size in advance), or partial over a mesh dimension nothing is sharded over."""
        if not self._warned_partial:
            self._warned_partial = True
            names = sorted({self.layers[self._owner[positions[j]]].name for j in lost})
            warnings.warn(f"gradmidi: layers {', '.join(names)} have Partial (unreduced) gradients that gradmidi "
                          "cannot sum here: their norms leave those out (fully_shard reduces them)",
                          RuntimeWarning, stacklevel=5)


def _reduction(params: list[torch.nn.Parameter], n_layers: int, holders: np.ndarray | None) -> _Reduction | None:
    """How each step's values are summed across ranks; None when no sum is needed.

    Without pipeline stages (``holders`` None): over the mesh dimensions any parameter is sharded
    over (FSDP2: its one dimension; HSDP: the shard dimension, not the replicate one; FSDP2 with
    tensor parallelism: both), so that every rank holds every layer. With them: over every rank.
    """
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    dtensors = [p for p in params if isinstance(p, DTensor)]
    mesh = dtensors[0].device_mesh if dtensors else None
    for p in dtensors:
        if p.device_mesh != mesh:
            raise GradmidiError("gradmidi needs every sharded parameter on one device mesh; "
                                f"found {mesh} and {p.device_mesh}")
        if any(pl.is_partial() for pl in p.placements):
            raise GradmidiError("a parameter with a Partial placement cannot be sounded: reduce it first")
    home = dtensors[0].to_local().device if dtensors else (params[0].device if params else torch.device("cpu"))
    if holders is not None:
        return _Reduction(None, frozenset(range(mesh.ndim)) if mesh is not None else frozenset(), holders, home, True)
    dims = frozenset(d for p in dtensors for d, pl in enumerate(p.placements) if pl.is_shard())
    if mesh is None or not dims:
        return None
    group_size = math.prod(mesh.size(d) for d in dims)
    return _Reduction(_group_over(mesh, dims), dims, np.full(n_layers, float(group_size)), home, False)


def _group_over(mesh: Any, dims: frozenset[int]) -> ProcessGroup | None:
    """The process group spanning ``dims`` of ``mesh`` (None: the default group, when that is every rank)."""
    import torch.distributed as dist

    if len(dims) == 1:
        return mesh.get_group(next(iter(dims)))
    if len(dims) == mesh.ndim and mesh.size() == dist.get_world_size():
        return None
    names = mesh.mesh_dim_names
    if names is None:
        raise GradmidiError(f"gradmidi sums gradients over mesh dimensions {sorted(dims)} together: give the "
                            "device mesh mesh_dim_names so that they can be flattened into one group")
    return mesh[tuple(names[d] for d in sorted(dims))]._flatten().get_group()


def _weight(grad: torch.Tensor, reduction: _Reduction, holders: float) -> float:
    """1/copies of ``grad``'s local values that the sum adds up.

    Of the ``holders`` ranks of the group that hold the layer, those that differ only in a mesh
    dimension the gradient is replicated over hold the same values; over the dimensions it is
    sharded or partial over they differ. A plain tensor is the same on every holder.
    """
    placements = getattr(grad, "placements", None)
    if placements is None:
        return 1.0 / holders
    mesh = cast("DTensor", grad).device_mesh
    return math.prod(mesh.size(d) for d in reduction.dims if not placements[d].is_replicate()) / holders


def _partial_dims(grad: torch.Tensor) -> frozenset[int]:
    """The mesh dimensions a DTensor gradient is Partial over (sequence-parallel norms without FSDP)."""
    return frozenset(d for d, pl in enumerate(getattr(grad, "placements", ())) if pl.is_partial())


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


def _to_host(totals: torch.Tensor) -> tuple[np.ndarray, torch.Event | None]:
    """The values on their way to the host, as a numpy view made here on the training thread (under a
    microsecond), so that reading them on the worker touches no torch code: a live worker woken from
    sleep pays for every library it enters first, and torch's is the largest."""
    if totals.device.type == "cpu":
        return totals.numpy(), None
    host = torch.empty(totals.shape, dtype=totals.dtype, pin_memory=totals.device.type == "cuda")
    host.copy_(totals, non_blocking=True)
    event = torch.Event(device=totals.device)
    event.record()
    return host.numpy(), event
