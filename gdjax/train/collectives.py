"""The collectives of a compiled program, read from its optimized HLO: what moves between
devices, over which mesh axes, and how many bytes.

>>> compiled = parallel.compile_train_step(state, batch)       # doctest: +SKIP
>>> for c in collectives(compiled.as_text(), parallel.mesh):   # doctest: +SKIP
...     print(c.kind, c.axes, c.shapes, c.bytes)

``bytes`` is the size of the collected value (an all-gather's result, an all-reduce's or a
reduce-scatter's operand). ``sent`` models what each device sends for it with the ring
algorithms of NCCL and TPU ICI: an all-gather or reduce-scatter over ``k`` devices sends
``(k - 1) / k`` of it, an all-reduce twice that, a collective-permute all of it. It is a model,
not a measurement; the schedules a runtime picks may differ.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
from jax.sharding import Mesh

__all__ = ["Collective", "collectives"]

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>\(.*?\)|[\w]+\[[^\]]*\](?:\{[^}]*\})?)\s+"
    r"(?P<kind>" + "|".join(KINDS) + r")(?:-start)?\("
)
_MESH_GROUPS = re.compile(
    r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(([^)]*)\))?\s*\{([^}]*)\}"
)
_ARRAY = re.compile(r"(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program.

    Attributes:
      kind: ``"all-reduce"``, ``"all-gather"``, ``"reduce-scatter"``, ``"all-to-all"`` or
        ``"collective-permute"``.
      axes: the mesh axes its device groups span (``("model",)``, ``("data",)``, both).
      shapes: the shapes of the values it collects (several for a combined all-reduce).
      dtypes: their element types (HLO names: ``f32``, ``pred``, ...).
      bytes: their total size in bytes.
      group_size: devices per group.
      op_name: the JAX operation it came from (HLO metadata), when recorded.
    """

    kind: str
    axes: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    bytes: int
    group_size: int
    op_name: str

    @property
    def sent(self) -> float:
        """Bytes each device sends for it (ring algorithms; see the module doc)."""
        k = self.group_size
        if k <= 1:
            return 0.0
        if self.kind == "collective-permute":
            return float(self.bytes)
        share = (k - 1) / k * self.bytes
        return 2 * share if self.kind == "all-reduce" else share


def collectives(hlo_text: str, mesh: Mesh) -> list[Collective]:
    """Every collective in ``hlo_text`` (``compiled.as_text()``) of a program partitioned over
    ``mesh``, in program order, with the mesh axes each one's device groups span."""
    n = mesh.devices.size
    position = np.arange(n).reshape(mesh.devices.shape)
    found = []
    for line in hlo_text.splitlines():
        match = _OP.match(line)
        if not match:
            continue
        arrays = [
            (m["dtype"], tuple(int(d) for d in m["dims"].split(",") if d))
            for m in _ARRAY.finditer(match["shape"])
        ]
        groups = _replica_groups(line, n)
        axes = _axes_of(groups, position, mesh.axis_names)
        name = re.search(r'op_name="([^"]*)"', line)
        found.append(
            Collective(
                kind=match["kind"],
                axes=axes,
                shapes=tuple(shape for _, shape in arrays),
                dtypes=tuple(dtype for dtype, _ in arrays),
                bytes=sum(_BYTES.get(d, 4) * math.prod(s) for d, s in arrays),
                group_size=len(groups[0]) if groups else n,
                op_name=name[1] if name else "",
            )
        )
    return found


def _replica_groups(line: str, n: int) -> list[list[int]]:
    """The device groups of one collective, in any of HLO's three spellings."""
    if "collective-permute" in line:
        pairs = re.search(r"source_target_pairs=\{([^}]*(?:\}[^}]*)*)\}", line)
        if pairs:
            return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", pairs[1])]
    explicit = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", line)
    if explicit:
        groups = [
            [int(d) for d in g.split(",") if d] for g in re.findall(r"\{([\d,]*)\}", explicit[1])
        ]
        return [g for g in groups if g] or [list(range(n))]
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if iota:
        shape = [int(d) for d in iota[1].split(",")]
        return _iota([int(d) for d in iota[2].split(",")], iota[3]).reshape(shape).tolist()
    meshed = re.search(
        r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(([^)]*)\))?\s*\{([^}]*)\}", line
    )
    if meshed:
        sizes = [int(s) for s in re.findall(r"'[^']*'=(\d+)", meshed[1])]
        names = re.findall(r"'([^']*)'=", meshed[1])
        ids = np.arange(math.prod(sizes))
        if meshed[2]:
            d = re.match(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", meshed[2].strip())
            ids = _iota([int(x) for x in d[1].split(",")], d[2]).reshape(-1)
        ids = ids.reshape(sizes)
        chosen = [names.index(a) for a in re.findall(r"'([^']*)'", meshed[3])]
        rest = [i for i in range(len(sizes)) if i not in chosen]
        size = math.prod(sizes[i] for i in chosen)
        return ids.transpose(rest + chosen).reshape(-1, size).tolist()
    return [list(range(n))]


def _iota(dims: list[int], perm: str | None) -> np.ndarray:
    ids = np.arange(math.prod(dims)).reshape(dims)
    return ids.transpose([int(p) for p in perm.split(",")]) if perm else ids


def _axes_of(groups: list[list[int]], position: np.ndarray, names: tuple[str, ...]) -> tuple:
    """The mesh axes along which the devices of the first group differ."""
    if not groups or len(groups[0]) <= 1:
        return ()
    coords = np.array([np.argwhere(position == d)[0] for d in groups[0]])
    return tuple(name for i, name in enumerate(names) if len(set(coords[:, i])) > 1)
