"""DeepSpeed ZeRO (stages 1, 2 and 3): per-layer norms from each rank's own gradient partitions.

Under ZeRO ``param.grad`` is None after ``engine.backward``: the reduced gradients live in the
optimizer, each rank holding its own partition of them (``averaged_gradients``: per parameter
group, a list of this rank's pieces, in the order of ``params_in_partition`` for stages 1 and 2
and of ``fp16_groups`` for stage 3, with zero padding between or after them). A step reads those
lists as they are, runs one fused ``_foreach_norm`` over every piece, adds the squares per layer
with one ``index_add_`` and sums every layer across the data-parallel group with one asynchronous
all-reduce: no full gradient is ever gathered (``safe_get_full_grad`` per parameter would gather
each one). The squares are divided by the loss scale squared (fp16); the pieces already hold
the average over ranks and accumulation steps that ``engine.step()`` applies, so the norms are
those of the global batch's gradient.

Only gradient-accumulation boundaries sound: before one, the partitions are incomplete.
``deepspeed`` is imported here only once ``sys.modules`` shows the program has imported it.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np
import torch

from .capture import HostCopy, Layer, PendingNorms, _acc_dtype, _loss_parts, _on_device, _Summed, _to_host, norm_dtype
from .errors import GradmidiError

# One entry of a step's plan: (indices into the step's pieces of one device and dtype, their layers there)
_Entry = tuple[list[int], torch.Tensor]


def deepspeed_engine(model: Any) -> Any:
    """The DeepSpeedEngine ``model`` is, or None (also when DeepSpeed was never imported)."""
    if "deepspeed" not in sys.modules:
        return None
    from deepspeed.runtime.engine import DeepSpeedEngine

    return model if isinstance(model, DeepSpeedEngine) else None


class BoundaryWatch:
    """A micro-step sounds only on a gradient-accumulation boundary (the engine's own test, which
    ``engine.step()`` advances): before it, the partitions hold partial sums."""

    def __init__(self, engine: Any) -> None:
        managed = getattr(engine, "managed_gradient_accumulation", None)
        if managed is not None and not managed():
            raise GradmidiError("gradmidi needs DeepSpeed's managed gradient accumulation (the default): with "
                                "managed_gradient_accumulation=false the gradients are only complete inside "
                                "engine.step()")
        self._engine = engine

    def synced(self) -> bool:
        return bool(self._engine.is_gradient_accumulation_boundary())

    def close(self) -> None:
        self._engine = None


def engine_of_module(module: Any) -> Any:
    """The DeepSpeedEngine training ``module``, or None. For frameworks that keep the engine to
    themselves (the Transformers Trainer hands callbacks the bare model): DeepSpeed keeps no link
    from a module to its engine, so the engine is found among the module's holders, once."""
    if "deepspeed" not in sys.modules:
        return None
    import gc

    from deepspeed.runtime.engine import DeepSpeedEngine

    holders = gc.get_referrers(module)  # the engine itself, or its dict of submodules: two heap scans at most
    dicts = [holder for holder in holders if isinstance(holder, dict)]
    for owner in holders + (gc.get_referrers(*dicts) if dicts else []):
        if isinstance(owner, DeepSpeedEngine) and owner.module is module:
            return owner
    return None


def call_before_step(optimizer: Any, hook: Any) -> None:
    """Runs ``hook()`` each time ``optimizer.step()`` starts: the last moment the partitions hold the
    step's gradients, where a framework calls ``engine.step()`` itself (Accelerate's backward does).
    The hook runs inside the framework's step, out of the user's reach: a fault in it is a warning."""
    step = optimizer.step

    def step_after_hook(*args: Any, **kwargs: Any) -> Any:
        try:
            hook()
        except Exception as exc:  # never the training's end
            warnings.warn(f"gradmidi: this step is not sounded: {exc}", RuntimeWarning, stacklevel=2)
        return step(*args, **kwargs)

    optimizer.step = step_after_hook


class ZeroCapture:
    """``NormCapture``'s interface over a ZeRO optimizer's gradient partitions."""

    def __init__(self, optimizer: Any, layers: list[Layer]) -> None:
        self.layers = layers
        self._optimizer = optimizer
        self._groups, everything = _partition_layout(optimizer)
        n = len(layers)
        layer_of = {id(p): i for i, layer in enumerate(layers) for p in layer.params}
        # a piece of a parameter no sounding layer owns (or padding) goes to the spare slot n
        self._owners = [np.array([layer_of.get(id(p), n) for p in group], dtype=np.int64) for group in self._groups]
        self._present = np.zeros(n, dtype=bool)
        self._present[[layer_of[id(p)] for p in everything if id(p) in layer_of]] = True
        self._present.flags.writeable = False
        self._process_group = optimizer.dp_process_group
        self._device = torch.device(optimizer.device)
        # fp16 ZeRO skips every step whose gradients are not finite (loss-scale calibration): heard as skipped
        self.skips_nonfinite = getattr(optimizer, "dtype", None) == torch.float16
        self._plans: dict[tuple[int, ...], list[_Entry]] = {}

    spread = False  # the ranks' losses do not travel in the sum (that is for pipeline stages)

    @property
    def reduces(self) -> bool:
        """Every step all-reduces the per-layer squares: every rank must launch."""
        return self._optimizer is not None

    def release(self) -> None:
        """Drops the optimizer and its process group (see ``NormCapture.release``)."""
        self._optimizer = None
        self._process_group = None
        self._plans.clear()

    def launch(self, loss: torch.Tensor | float | None = None, only: set[int] | None = None) -> PendingNorms:
        """This rank's squares per layer, then one asynchronous all-reduce of them all; returns at once.
        ``only`` is ignored: a DeepSpeed engine has one optimizer."""
        import torch.distributed as dist

        loss_tensor, host_loss = _loss_parts(loss)
        optimizer = self._optimizer
        if optimizer is None:
            raise GradmidiError("this Sonifier is closed")
        averaged = optimizer.averaged_gradients
        lists = [averaged.get(i) or [] for i in range(len(self._groups))]
        key = tuple(map(len, lists))
        pieces = [g for pieces in lists for g in pieces]
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(lists, pieces)
        n = len(self.layers)
        totals = torch.zeros(n + 1, dtype=_acc_dtype(self._device), device=self._device)
        for idx, owners in plan:
            tensors = pieces if len(idx) == len(pieces) else [pieces[j] for j in idx]
            norms = torch._foreach_norm(tensors, 2.0, dtype=norm_dtype(tensors[0].dtype))
            squares = torch.stack(norms).to(totals.dtype).square_()
            totals.index_add_(0, owners, squares.to(totals.device))
        scale = float(optimizer.loss_scale)
        if scale != 1.0:  # fp16: the gradients are of the scaled loss
            totals.mul_(1.0 / (scale * scale))
        totals = totals[:n]
        work = dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=self._process_group, async_op=True)
        parts: list[HostCopy] = []
        if loss_tensor is not None:
            parts.append(HostCopy(*_to_host(loss_tensor.reshape(-1)[:1].to(torch.float64)), True))
        return PendingNorms(parts, self._present, n, host_loss, reduced=_Summed(totals, work, False, None))

    def _plan(self, lists: list[list[torch.Tensor]], pieces: list[torch.Tensor]) -> list[_Entry]:
        """Each piece's layer, by (device, dtype). Pieces are the group's parameters in order, with
        padding (marked ``_zero_padding``, or left over after the last parameter) between them."""
        owners = []
        for group_owners, group_pieces in zip(self._owners, lists, strict=True):
            params = iter(group_owners.tolist())
            spare = len(self.layers)
            owners += [spare if getattr(g, "_zero_padding", False) else next(params, spare) for g in group_pieces]
        by_kind: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for j, g in enumerate(pieces):
            by_kind.setdefault((g.device, g.dtype), []).append(j)
        return [(idx, _on_device(np.array(owners, dtype=np.int64)[idx], self._device))
                for idx in by_kind.values()]


def _partition_layout(optimizer: Any) -> tuple[list[list[torch.nn.Parameter]], list[torch.nn.Parameter]]:
    """(per parameter group, the parameters this rank's pieces belong to, in order; every parameter
    the optimizer trains). One-line errors for what gradmidi cannot read."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3):
        if optimizer.offload_optimizer:
            raise GradmidiError("gradmidi does not read ZeRO-Offload's gradients yet: turn offload_optimizer off")
        groups = [list(group) for group in optimizer.fp16_groups]
        _one_partition_group([getattr(p, "ds_process_group", optimizer.dp_process_group) for group in groups
                              for p in group], optimizer.dp_process_group)
        return groups, [p for group in groups for p in group]
    if isinstance(optimizer, DeepSpeedZeroOptimizer):
        if optimizer.cpu_offload:
            raise GradmidiError("gradmidi does not read ZeRO-Offload's gradients yet: turn offload_optimizer off")
        groups = [list(group) for group in optimizer.params_in_partition]
        _one_partition_group(optimizer.real_dp_process_group, optimizer.dp_process_group)
        return groups, [p for group in optimizer.bit16_groups for p in group]
    raise GradmidiError(f"gradmidi sounds DeepSpeed under ZeRO stages 1, 2 and 3; this engine's optimizer is "
                        f"{type(optimizer).__name__} (ZeRO stage 0, or bf16 with fp32 gradient accumulation)")


def _one_partition_group(groups: list[Any], data_parallel: Any) -> None:
    """The squares are summed over the data-parallel group: every partition must be cut over it
    (not so for mixture-of-experts parameters)."""
    import torch.distributed as dist

    def ranks(group: Any) -> list[int]:
        return dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))

    expected = ranks(data_parallel)
    distinct = {id(group): group for group in groups if group is not data_parallel}  # usually none
    if any(ranks(group) != expected for group in distinct.values()):
        raise GradmidiError("gradmidi sums ZeRO's partitions over the data-parallel group; some parameters here "
                            "are partitioned over another group (mixture of experts): not supported yet")
