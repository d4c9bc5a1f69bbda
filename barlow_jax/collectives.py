"""Collective bytes of a compiled (or lowered) XLA program, read from its HLO text.

``collective_bytes(hlo_text, num_devices)`` finds every all-reduce,
all-gather, reduce-scatter, all-to-all and collective-permute instruction
(and the asynchronous ``-start`` forms GPU programs use), reads the array
types of its result and returns, per kind, the bytes ONE device's program
moves per execution. For an SPMD program under ``jax.shard_map`` the HLO is
the per-device program, so these are per-device figures.

Two measures per kind:

* ``bytes``: the size of the buffer the collective works on, per device:
  all-reduce: the reduced array; all-gather: the gathered (output) array;
  reduce-scatter: the input array (output x group size); all-to-all: the
  exchanged array; collective-permute: the array sent.
* ``wire_bytes``: what a bandwidth-optimal ring sends per device, with g the
  replica-group size: all-reduce 2 (g-1)/g x bytes, all-gather and
  reduce-scatter and all-to-all (g-1)/g x bytes, collective-permute bytes.
  This is the figure that sets the time on a bandwidth-bound link.

A collective inside a ``conditional`` branch (e.g. the embedding health's
effective rank, computed on logged steps only) runs only when that branch
runs: it is reported apart, under ``conditional``, with the kind's totals
covering the unconditional ones only. Collectives inside a ``while`` body
are counted once per appearance (the step has none).

The text formats handled are those XLA prints for ``Compiled.as_text()``
and ``Lowered.as_text(dialect='hlo')``: ``%name = TYPE op(...), ...,
replica_groups={{0,1,...}}`` or ``replica_groups=[G,S]<=[N]``. Tested on
the CPU backend (tests/test_collectives.py); the GPU ``-start`` forms are
parsed from the same type rules but were not seen in a test here.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
               "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}

_ARRAY = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True))
                    + r")\[([0-9,]*)\]")
_OP = re.compile(r"=\s*(.*?)\s+(" + "|".join(KINDS) + r")(-start)?\(")
_COMP_HEADER = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?\s*->.*\{\s*$")
_COMP_HEADER_SIMPLE = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s*\{\s*$")
_BRANCHES = re.compile(r"(?:branch_computations=\{([^}]*)\}|true_computation=%?([\w.\-]+)|"
                       r"false_computation=%?([\w.\-]+))")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_CALLS_LIST = re.compile(r"calls=\{([^}]*)\}")


def _arrays(type_text: str) -> List[Tuple[str, int]]:
    """[(dtype, bytes)] of every array type written in ``type_text``."""
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append((dtype, int(n * DTYPE_BYTES[dtype])))
    return out


def _group_size(line: str, num_devices: Optional[int]) -> int:
    m = re.search(r"replica_groups=\{\{([0-9,\s]*)\}", line)
    if m:
        return len([t for t in m.group(1).split(",") if t.strip()])
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
    if m:
        return int(m.group(2))
    m = re.search(r"source_target_pairs=\{(.*?)\}\}", line)
    if m:
        return 2
    return int(num_devices or 1)


def _computations(lines: List[str]):
    """(name of the computation each line is in, {computation: (callees, branch callees)})."""
    where, graph = [], {}
    current = None
    for line in lines:
        m = _COMP_HEADER.match(line) or _COMP_HEADER_SIMPLE.match(line)
        if m and "=" not in line.split("->")[0].split("(")[0]:
            current = m.group(2)
            graph.setdefault(current, (set(), set()))
        elif current is not None:
            calls, branches = graph[current]
            for a, b, c in _BRANCHES.findall(line):
                names = [x.strip().lstrip("%") for x in a.split(",")] if a else []
                branches.update(n for n in names + [b, c] if n)
            calls.update(_CALLS.findall(line))
            for group in _CALLS_LIST.findall(line):
                calls.update(x.strip().lstrip("%") for x in group.split(","))
        where.append(current)
    return where, graph


def _conditional_computations(graph) -> set:
    """Computations reachable from a ``conditional``'s branches."""
    seen, todo = set(), [b for calls, branches in graph.values() for b in branches]
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        if c in graph:
            todo.extend(graph[c][0] | graph[c][1])
    return seen


def collective_ops(hlo_text: str, num_devices: Optional[int] = None) -> List[Dict]:
    """One dict per collective instruction: kind, dtypes, bytes, wire_bytes, group, conditional."""
    lines = hlo_text.splitlines()
    where, graph = _computations(lines)
    conditional = _conditional_computations(graph)
    ops = []
    for line, comp in zip(lines, where):
        m = _OP.search(line)
        if not m:
            continue
        type_text, kind, start = m.group(1), m.group(2), m.group(3)
        arrays = _arrays(type_text)
        if not arrays:
            continue
        g = _group_size(line, num_devices)
        if start and kind == "all-gather":
            arrays = arrays[len(arrays) // 2:]       # (operands, outputs): the outputs
        elif start and kind == "collective-permute":
            arrays = arrays[:1]                       # (operand, output, contexts...)
        size = sum(b for _, b in arrays)
        if kind == "reduce-scatter":
            size *= g                                 # the result is one shard of the input
        frac = (g - 1) / g if g > 0 else 0.0
        wire = {"all-reduce": 2 * frac, "all-gather": frac, "reduce-scatter": frac,
                "all-to-all": frac, "collective-permute": 1.0}[kind] * size
        ops.append({"kind": kind, "dtypes": sorted({d for d, _ in arrays}), "bytes": size,
                    "wire_bytes": wire, "group": g, "conditional": comp in conditional,
                    "shapes": [a for a in _ARRAY.findall(type_text)]})
    return ops


def summarize(ops: Iterable[Dict]) -> Dict:
    """Per kind: {count, bytes, wire_bytes, by_dtype}; 'conditional' holds the branch-only ones."""
    def empty():
        return {k: {"count": 0, "bytes": 0, "wire_bytes": 0.0, "by_dtype": {}} for k in KINDS}

    out = {"every_step": empty(), "conditional": empty()}
    for op in ops:
        slot = out["conditional" if op["conditional"] else "every_step"][op["kind"]]
        slot["count"] += 1
        slot["bytes"] += op["bytes"]
        slot["wire_bytes"] += op["wire_bytes"]
        key = "+".join(op["dtypes"])
        slot["by_dtype"][key] = slot["by_dtype"].get(key, 0) + op["bytes"]
    for part in out.values():
        part["total"] = {"bytes": sum(v["bytes"] for k, v in part.items() if k in KINDS),
                         "wire_bytes": sum(v["wire_bytes"] for k, v in part.items()
                                           if k in KINDS)}
    return out


def collective_bytes(hlo_text: str, num_devices: Optional[int] = None) -> Dict:
    """``summarize(collective_ops(hlo_text, num_devices))``."""
    return summarize(collective_ops(hlo_text, num_devices))


def format_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_summary(summary: Dict, indent: str = "  ") -> List[str]:
    """Readable lines: one per kind that occurs, every step, then the conditional ones."""
    lines = []
    for part, title in (("every_step", "every step"), ("conditional", "logged steps only")):
        kinds = [k for k in KINDS if summary[part][k]["count"]]
        if not kinds:
            continue
        t = summary[part]["total"]
        lines.append(f"{indent}{title}: {format_bytes(t['bytes'])} per device "
                     f"(ring wire {format_bytes(t['wire_bytes'])})")
        for k in kinds:
            v = summary[part][k]
            dt = ", ".join(f"{d} {format_bytes(b)}" for d, b in sorted(v["by_dtype"].items()))
            lines.append(f"{indent}  {k:<19}{v['count']:>4} ops  {format_bytes(v['bytes']):>10}"
                         f"  (wire {format_bytes(v['wire_bytes'])}; {dt})")
    return lines
