"""Layers -> voices: at most 15 melodic voices per MIDI port, each on its own channel.

Up to ``max_voices`` layers each get a voice. Beyond that, layers are grouped by module
path: the group holding the most layers is split into its children while the budget
allows, and a group with too many children is cut into contiguous runs of them
(``encoder.layers.0-5``). A group's norm is the root of the sum of its layers' squares.
Users may instead name the voices with glob patterns.

Layers come named as the user wrote the model (``wrappers.py``); layers sharing a name are one
unit (an adapter and the module it adapts, the experts of a mixture). An adapted model is planned
over its whole structure, frozen base included, and the voices with nothing to sound are left out:
it gets the voices of the model it adapts.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Mapping as MappingABC
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import GradmidiError
from .instruments import MELODIC_CHANNELS, kind_program, layer_kind, program_number
from .score import Voice

MAX_VOICES = len(MELODIC_CHANNELS)
ROOT_NAME = "(root)"

VoiceSpec = Sequence[str] | MappingABC[str, str | Sequence[str]]
# A group of layers: (module path as parts, member indices, display name)
_Group = tuple[list[str], list[int], str]
# When a voice holds several kinds of layer, the most common wins; a tie goes to the first here
# (a transformer block of two norms, two attention and two MLP projections sounds as attention).
_KIND_PRECEDENCE = ("attention", "recurrent", "convolution", "linear", "embedding", "normalisation", "other")


@dataclass(frozen=True)
class LayerRecord:
    """A layer as the planner sees it: a name, a class, whether it sounds, an adapter factor."""

    name: str  # as the user wrote the model; layers that share it are one unit (an adapter and its module)
    class_name: str
    sounded: bool = True  # False: planned for the model's shape only (the frozen base of an adapted model)
    factor: str | None = None  # an adapter's part (lora_A, lora_B, ...): a voice of its own with factors=True


def plan_voices(
    layers: Sequence[LayerRecord | tuple[str, str]],
    *,
    voices: VoiceSpec | None = None,
    programs: MappingABC[str, int | str] | None = None,
    max_voices: int = MAX_VOICES,
    factors: bool = False,
) -> tuple[tuple[Voice, ...], np.ndarray]:
    """Voices for ``layers`` and each layer's voice index (-1: unsounded).

    A layer is a ``LayerRecord`` or a (name, class name) pair. Layers that do not sound still
    shape the automatic grouping, so an adapted model gets the voices of the model it adapts,
    less those with nothing to sound. ``factors``: each adapter factor is a voice of its own.
    """
    if isinstance(max_voices, bool) or not isinstance(max_voices, int) or not 1 <= max_voices <= MAX_VOICES:
        raise GradmidiError(f"max_voices must be 1-{MAX_VOICES}: channel 10 is for drums (not {max_voices!r})")
    if voices is not None and (isinstance(voices, str) or not isinstance(voices, (Sequence, MappingABC))):
        raise GradmidiError(f"voices must be a list of layer patterns or {{name: patterns}}, not {voices!r}")
    if programs is not None and not isinstance(programs, MappingABC):
        raise GradmidiError(f"programs must be {{voice or layer pattern: GM program name or 0-127}}, not {programs!r}")
    records = [r if isinstance(r, LayerRecord) else LayerRecord(*r) for r in layers]
    if not any(r.sounded for r in records):
        raise GradmidiError("the model has no parameters to listen to")
    # A layer's label: its name, and its factor when factors are voices of their own.
    labels = [(r.name or ROOT_NAME) + (f".{r.factor}" if factors and r.factor else "") for r in records]
    sounded = [i for i, r in enumerate(records) if r.sounded]
    if voices is not None:
        units, members_of = _units([labels[i] for i in sounded], sounded)
        groups = [(name, [i for u in unit_ids for i in members_of[u]])
                  for name, unit_ids in _groups_from_patterns(units, voices)]
        if len(groups) > max_voices:
            raise GradmidiError(f"{len(groups)} voices asked for, but a MIDI port holds at most {max_voices}")
    else:
        groups = _planned_groups(records, max_voices, factors)
    assignment = np.full(len(records), -1, dtype=np.int64)
    table = []
    per_kind: Counter[str] = Counter()
    for index, (voice_name, members) in enumerate(groups):
        assignment[members] = index
        kinds = Counter(layer_kind(records[i].class_name, records[i].name) for i in members)
        kind = min(kinds, key=lambda k: (-kinds[k], _KIND_PRECEDENCE.index(k)))
        program = kind_program(kind, per_kind[kind])
        per_kind[kind] += 1
        shown = tuple(dict.fromkeys(labels[i] for i in members))
        table.append(Voice(index, voice_name, shown, kind, MELODIC_CHANNELS[index], program))
    table = _apply_programs(table, programs or {})
    return tuple(table), assignment


def _units(names: list[str], indices: list[int]) -> tuple[list[str], list[list[int]]]:
    """Distinct names in order, and the layer indices under each."""
    by_name: dict[str, list[int]] = {}
    for name, i in zip(names, indices, strict=True):
        by_name.setdefault(name, []).append(i)
    return list(by_name), list(by_name.values())


def _planned_groups(records: list[LayerRecord], max_voices: int, factors: bool) -> list[tuple[str, list[int]]]:
    """Groups by module path over every layer (sounded or not), keeping those that sound; with
    ``factors``, each group split by adapter factor, planned coarser until the split fits."""
    units, members_of = _units([r.name or ROOT_NAME for r in records], list(range(len(records))))
    groups: list[tuple[str, list[int]]] = []
    for budget in range(max_voices, 0, -1):
        groups = []
        for name, unit_ids in _groups_by_prefix(units, budget):
            members = [i for u in unit_ids for i in members_of[u] if records[i].sounded]
            if not members:
                continue  # nothing here sounds (a frozen base): the voice is left out
            parts: dict[str | None, list[int]] = {}
            for i in members:
                parts.setdefault(records[i].factor if factors else None, []).append(i)
            if len(parts) == 1:
                groups.append((name, members))
            else:
                groups.extend((f"{name}.{factor}" if factor else name, idx) for factor, idx in parts.items())
        if len(groups) <= max_voices:
            break
    return groups


def _groups_from_patterns(names: list[str], spec: VoiceSpec) -> list[tuple[str, list[int]]]:
    items = list(spec.items()) if isinstance(spec, MappingABC) else [(p, p) for p in spec]
    if not items:
        raise GradmidiError("voices= is empty: name at least one layer pattern")
    taken: set[int] = set()
    groups = []
    for voice_name, patterns in items:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        members = [
            i for i, n in enumerate(names)
            if i not in taken and any(fnmatch.fnmatchcase(n, p) or n == p for p in patterns)
        ]
        if not members:
            raise GradmidiError(f"voice pattern {patterns!r} matches no layer (layers: {_preview(names)})")
        taken.update(members)
        groups.append((str(voice_name), members))
    return groups


def _preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def _groups_by_prefix(names: list[str], max_voices: int) -> list[tuple[str, list[int]]]:
    if len(names) <= max_voices:
        return [(n, [i]) for i, n in enumerate(names)]
    parts = [[] if n == ROOT_NAME else n.split(".") for n in names]
    groups: list[_Group] = [([], list(range(len(names))), "all")]
    progress = True
    while progress:
        progress = False
        groups = [_descend(g, parts) for g in groups]  # all at once, so the blocks' parts compare alike
        for gi in sorted(range(len(groups)), key=lambda g: -len(groups[g][1])):
            prefix, members, _ = groups[gi]
            if not _splittable(groups[gi]):
                continue
            children = _children(prefix, members, parts)
            budget = max_voices - len(groups) + 1
            # Siblings of the same size (the blocks of a transformer), and the same part of each
            # block (layers.0.experts, layers.1.experts), are split all alike or not at all: six
            # blocks as six voices beats block 0 in detail and block 5 as a lump.
            twins = [g for g in groups if g[0] != prefix and len(g[1]) == len(members)
                     and (g[0][:-1] == prefix[:-1] or _shape(g[0]) == _shape(prefix))]
            if twins:
                cost = sum(len(_children(t[0], t[1], parts)) - 1 for t in twins) + len(children) - 1
                if cost > budget - 1:
                    continue
            if len(children) > budget:
                if budget < 2:
                    continue
                children = _chunk(prefix, children, budget)
            groups[gi : gi + 1] = children
            progress = True
            break
    groups.sort(key=lambda g: min(g[1]))
    return [(display or ROOT_NAME, sorted(members)) for _, members, display in groups]


def _splittable(group: _Group) -> bool:
    """Not a single layer, nor a cut run of siblings: something is left to split."""
    prefix, members, _ = group
    return len(members) >= 2 and not (prefix and prefix[-1].startswith("\0"))


def _descend(group: _Group, parts: list[list[str]]) -> _Group:
    """The same group under its longest common path (``layers.0.experts`` -> ``layers.0.experts.*``)."""
    while _splittable(group):
        children = _children(group[0], group[1], parts)
        if len(children) != 1:
            break
        group = children[0]
    return group


def _shape(prefix: list[str]) -> list[str]:
    """A path with its indices taken out: the same part of every block has the same shape."""
    return ["#" if part.isdigit() else part for part in prefix]


def _children(prefix: list[str], members: list[int], parts: list[list[str]]) -> list[_Group]:
    depth = len(prefix)
    by_child: dict[str, list[int]] = {}
    for i in members:
        key = parts[i][depth] if len(parts[i]) > depth else ""  # "": the prefix module itself
        by_child.setdefault(key, []).append(i)
    out: list[_Group] = []
    for key, idx in by_child.items():
        path = prefix + [key] if key else prefix
        if not key and len(by_child) > 1:
            out.append((prefix + ["\0self"], idx, ".".join(prefix) or ROOT_NAME))
        else:
            out.append((path, idx, ".".join(path)))
    return out


def _chunk(prefix: list[str], children: list[_Group], n: int) -> list[_Group]:
    """Cut ``children`` (in model order) into ``n`` contiguous groups named by their range."""
    bounds = np.linspace(0, len(children), n + 1).round().astype(int)
    out: list[_Group] = []
    base = ".".join(prefix)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        run = children[a:b]
        first, last = _child_key(run[0]), _child_key(run[-1])
        label = first if a + 1 == b else f"{first}-{last}"
        members = sorted(i for child in run for i in child[1])
        out.append((prefix + [f"\0{label}"], members, f"{base}.{label}" if base else label))
    return out


def _child_key(child: _Group) -> str:
    """A child's own path component; the parent's own parameters are called 'self'."""
    path = child[0]
    return "self" if path and path[-1] == "\0self" else child[2].split(".")[-1]


def _apply_programs(table: list[Voice], programs: MappingABC[str, int | str]) -> list[Voice]:
    """Overrides by voice name, layer name, or glob pattern over either. The most exact entry wins,
    whatever the order: a voice's own name, then one of its layers' names, then a pattern (of
    several patterns, the later); so {"0": "Violin", "*": "Flute"} makes voice 0 a violin."""
    best: dict[int, tuple[int, int, int]] = {}  # voice -> (exactness, entry order, program)
    for order, (pattern, program) in enumerate(programs.items()):
        number = program_number(program)
        hit = False
        for v in table:
            exactness = 2 if v.name == pattern else 1 if pattern in v.layers else 0
            if exactness or any(fnmatch.fnmatchcase(c, pattern) for c in (v.name, *v.layers)):
                best[v.index] = max(best.get(v.index, (-1, -1, 0)), (exactness, order, number))
                hit = True
        if not hit:
            raise GradmidiError(f"programs pattern {pattern!r} matches no voice or layer")
    return [Voice(v.index, v.name, v.layers, v.kind, v.channel, best[v.index][2]) if v.index in best else v
            for v in table]
