"""Modules as the user wrote them: wrapper plumbing and adapters looked past.

Training today goes through wrappers that rename every module: ``torch.compile`` (``_orig_mod.``),
DDP and DeepSpeed (``module.``), activation checkpointing (``_checkpoint_wrapped_module.``),
FSDP1 (``_fsdp_wrapped_module.``) and PEFT (``base_model.model.``). Each parameter-owning module
gets the path the user would write for it (its *shown* name), so a model reads and sounds the
same compiled or not, wrapped or not, adapted or not. The exact paths stay with the layers, for
capture and for the score's header.

Adapters (PEFT's LoRA, DoRA, IA3, ...) belong to the module they adapt: ``attn.c_attn.lora_A.default``
is shown as ``attn.c_attn``, with the factor (``lora_A``) kept aside, and takes the adapted
module's class, so an attention projection sounds as attention. PEFT is duck-typed (a tuner layer
has ``base_layer`` and ``adapter_layer_names``), never imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .distributed import layer_class_name

# Attribute names under which wrappers hold the module they wrap.
WRAPPED_ATTRIBUTES = ("_orig_mod", "module", "_checkpoint_wrapped_module", "_fsdp_wrapped_module")
# ``experts.3``: the experts of a mixture are one layer's, heard together (shown as ``experts.*``).
_EXPERTS = re.compile(r"^(experts?|local_experts)$")


@dataclass(frozen=True)
class ModuleRole:
    """How a parameter-owning module is shown and voiced."""

    shown: str  # its path as the user wrote the model
    class_name: str  # the class it is voiced as: an adapter's is the adapted module's
    factor: str | None = None  # an adapter's part (lora_A, lora_B, lora_magnitude_vector, ia3_l); None: the module
    adapter: bool = False  # an adapter's weights, or PEFT's trainable copy of a module (modules_to_save)


def module_roles(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module, ModuleRole]]:
    """(exact path, module, role) for every module, in ``named_modules`` order (each module once)."""
    seen: set[int] = set()
    yield from _walk(model, "", [], None, None, False, seen)


def user_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside the wrappers (what the user built): for the score's title."""
    while True:
        children = dict(model.named_children())
        inner = next((children[name] for name in children if _is_plumbing(model, name)), None)
        if inner is None:
            return model
        model = inner


def _walk(module: torch.nn.Module, exact: str, shown: list[str], like: torch.nn.Module | None,
          factor: str | None, adapter: bool, seen: set[int]) -> Iterator[tuple[str, torch.nn.Module, ModuleRole]]:
    if id(module) in seen:  # a module registered twice (shared) is listed once, as named_modules does
        return
    seen.add(id(module))
    class_name = layer_class_name(like if like is not None else module)
    yield exact, module, ModuleRole(".".join(shown), class_name, factor, adapter)
    tuner, saves = _is_tuner_layer(module), _saves_modules(module)
    adapter_parts = set(getattr(module, "adapter_layer_names", ())) if tuner else set()
    for name, child in module.named_children():
        path = f"{exact}.{name}" if exact else name
        if _is_plumbing(module, name):
            yield from _walk(child, path, shown, like, factor, adapter, seen)
        elif tuner and name == "base_layer":
            yield from _walk(child, path, shown, _adapted(module), factor, adapter, seen)
        elif name in adapter_parts:  # lora_A, ia3_l, ...: keyed by adapter name ("default"), shown as the module
            yield from _walk_adapter(child, path, shown, _adapted(module), name, seen)
        elif saves and name in ("original_module", "modules_to_save"):
            inner = _adapted(module)
            if name == "original_module":
                yield from _walk(child, path, shown, inner, factor, adapter, seen)
            else:  # PEFT's trainable copy of a whole module (modules_to_save=["lm_head"])
                yield from _walk_adapter(child, path, shown, inner, factor, seen)
        else:
            part = "*" if name.isdigit() and shown and _EXPERTS.match(shown[-1]) else name
            yield from _walk(child, path, shown + [part], like, factor, adapter, seen)


def _walk_adapter(container: torch.nn.Module, exact: str, shown: list[str], like: torch.nn.Module,
                  factor: str | None, seen: set[int]) -> Iterator[tuple[str, torch.nn.Module, ModuleRole]]:
    """An adapter container (a ModuleDict or ParameterDict keyed by adapter name): its keys are
    the adapters' names, not modules of the model, so they are not shown."""
    if id(container) in seen:
        return
    seen.add(id(container))
    yield exact, container, ModuleRole(".".join(shown), layer_class_name(like), factor, True)
    for name, child in container.named_children():
        yield from _walk(child, f"{exact}.{name}", shown, like, factor, True, seen)


def _is_plumbing(parent: torch.nn.Module, name: str) -> bool:
    """Whether the child ``name`` of ``parent`` is what a wrapper wraps: the wrapper adds no
    parameters of its own (compile, DDP, DeepSpeed, checkpointing), or it is PEFT's model
    holder (``base_model``, then ``model``)."""
    if name in ("base_model", "model") and _is_peft_model(parent):
        return True
    if name not in WRAPPED_ATTRIBUTES:
        return False
    if next(parent.parameters(recurse=False), None) is not None:
        return False
    return all(next(child.parameters(), None) is None for other, child in parent.named_children() if other != name)


def _is_peft_model(module: torch.nn.Module) -> bool:
    """PEFT's PeftModel or tuner model (a transformers model may carry ``peft_config`` too)."""
    return hasattr(module, "peft_config") and any(cls.__module__.partition(".")[0] == "peft"
                                                  for cls in type(module).__mro__)


def _is_tuner_layer(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "base_layer", None), torch.nn.Module) and hasattr(module, "adapter_layer_names")


def _saves_modules(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "original_module", None), torch.nn.Module) and hasattr(module, "modules_to_save")


def _adapted(module: torch.nn.Module) -> torch.nn.Module:
    """The module an adapter adapts (through stacked tuner layers)."""
    while True:
        inner = getattr(module, "base_layer", None) if _is_tuner_layer(module) else None
        if inner is None and _saves_modules(module):
            inner = module.original_module
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner
