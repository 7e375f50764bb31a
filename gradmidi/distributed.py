"""torch.distributed awareness: which rank sounds, DDP wrappers, and steps whose gradients
were not synchronised (DDP's ``no_sync()``, FSDP2's ``set_requires_gradient_sync(False)``).

FSDP2's sharded gradients are reduced in capture.py; this module only decides who does what.
"""

from __future__ import annotations

import torch

from .errors import GradmidiError


def rank_and_world() -> tuple[int, int]:
    """(global rank, world size); (0, 1) when torch.distributed is not initialised."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose layers are sounded: DDP's inner module (so names carry no ``module.``).

    FSDP1 is refused: its flat parameters hide the layers' own gradients.
    """
    if not torch.distributed.is_available():
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.nn.parallel import DistributedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise GradmidiError("FullyShardedDataParallel (FSDP1) is not supported; shard the model with "
                            "torch.distributed.fsdp.fully_shard (FSDP2) instead")
    return model.module if isinstance(model, DistributedDataParallel) else model


def layer_class_name(module: torch.nn.Module) -> str:
    """The class a user wrote: fully_shard turns ``Linear`` into ``FSDPLinear``; look past it."""
    for cls in type(module).__mro__:
        if not cls.__module__.startswith("torch.distributed.fsdp"):
            return cls.__name__
    return type(module).__name__


class GradientSyncWatch:
    """Tells whether the gradients that ``step()`` is about to read were synchronised.

    DDP: a forward pre-hook on the inner module records, for each forward with grad enabled,
    whether the DDP wrapper running it will all-reduce the gradients (False inside
    ``no_sync()``). It works whether the model was wrapped before or after the Sonifier was made.
    FSDP2: the modules' own ``reduce_grads`` flag, read when the step comes.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self._active_ddp = DistributedDataParallel._get_active_ddp_module
        self._last_forward_syncs = True
        self._handle = model.register_forward_pre_hook(self._on_forward)
        self._model = model
        self._fsdp_groups: list | None = None

    def _on_forward(self, module, args) -> None:
        if torch.is_grad_enabled():  # an evaluation forward under no_grad changes nothing
            ddp = self._active_ddp()
            self._last_forward_syncs = ddp is None or bool(ddp.require_backward_grad_sync)

    def synced(self) -> bool:
        if not self._last_forward_syncs:
            return False
        if self._fsdp_groups is None:
            self._fsdp_groups = _fsdp_param_groups(self._model)
        return all(group.reduce_grads for group in self._fsdp_groups)

    def close(self) -> None:
        self._handle.remove()


def _fsdp_param_groups(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    groups = []
    for module in model.modules():
        if isinstance(module, FSDPModule):
            groups += module._get_fsdp_state()._fsdp_param_groups
    return groups
