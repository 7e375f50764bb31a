"""torch.distributed awareness: which rank sounds, DDP wrappers, and steps whose gradients
were not synchronised (DDP's ``no_sync()``, FSDP2's ``set_requires_gradient_sync(False)``).

Sharded gradients (FSDP2, tensor parallelism) are reduced in capture.py, pipeline stages' layers
gathered in stages.py; this module only decides who does what.
"""

from __future__ import annotations

import warnings

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
    if not isinstance(model, torch.nn.Module):
        raise GradmidiError(f"model must be a torch.nn.Module (the model being trained), not {_short(model)}")
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

    A forward pre-hook on the inner module records, for each forward with grad enabled, whether
    the gradients will be reduced: DDP's ``require_backward_grad_sync`` of the wrapper running
    it (False inside ``no_sync()``; found whether the model was wrapped before or after the
    Sonifier was made), and FSDP2's ``reduce_grads`` flags. Deciding at the forward, as DDP
    does, lets ``step()`` come after the no-sync context has been left.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        # torch's own record of the DDP wrapper whose forward is running (set around the inner call)
        self._active_ddp = getattr(DistributedDataParallel, "_get_active_ddp_module", lambda: None)
        self._last_forward_syncs = True
        self._handle = model.register_forward_pre_hook(self._on_forward)
        self._model = model
        self._fsdp_groups: list | None = None

    def _on_forward(self, module, args) -> None:
        if torch.is_grad_enabled():  # an evaluation forward under no_grad changes nothing
            ddp = self._active_ddp()
            self._last_forward_syncs = (ddp is None or bool(ddp.require_backward_grad_sync)) and self._fsdp_syncs()

    def synced(self) -> bool:
        """False when the last training forward ran without gradient sync, or FSDP2's sync is off now
        (so a step called after the no-sync context has been left is still recognised)."""
        return self._last_forward_syncs and self._fsdp_syncs()

    def _fsdp_syncs(self) -> bool:
        if self._fsdp_groups is None:  # found at first use: the model may be sharded after the Sonifier is made
            self._fsdp_groups = _fsdp_param_groups(self._model)
        return all(group.reduce_grads for group in self._fsdp_groups)

    def close(self) -> None:
        self._handle.remove()
        self._fsdp_groups = None  # they reach the process group: let it go with the group


def _fsdp_param_groups(model: torch.nn.Module) -> list:
    """FSDP2's parameter groups (each has ``reduce_grads``); torch keeps them private, so a torch
    that moved them gets a warning and every step counts as synchronised, never an exception."""
    from torch.distributed.fsdp import FSDPModule

    groups = []
    try:
        for module in model.modules():
            if isinstance(module, FSDPModule):
                groups += module._get_fsdp_state()._fsdp_param_groups
    except AttributeError as exc:
        warnings.warn(f"gradmidi: cannot see FSDP2's gradient-sync flag ({exc}); "
                      "no-sync micro-steps will be sounded", RuntimeWarning, stacklevel=2)
        return []
    return groups


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else f"a {type(value).__name__}"
