"""Roles: the layers of repeated blocks, grouped by what they do.

A transformer is a stack of identical blocks; an LLM engineer reads its layers as
*role x block*. The block index is the first integer component of the qualified name whose
container holds at least two blocks, and the role is what follows it::

    model.layers.7.mlp.down_proj   ->  role "mlp.down_proj", block 7
    transformer.h.0.attn.c_attn    ->  role "attn.c_attn",   block 0

A role is *repeated* when it occurs in at least two blocks of the same container. When the
same role name appears under two containers (an encoder and a decoder stack) the role keeps
the container as a prefix (``encoder.layer.*.attention.output.dense``). Layers outside
repeated blocks (an embedding projection, the LM head) have no role.

Example:
    >>> r = assign_roles(["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"])
    >>> r.roles, r.blocks("mlp.down_proj"), r.loose
    (('mlp.down_proj',), {0: 'model.layers.0.mlp.down_proj', 1: 'model.layers.1.mlp.down_proj'}, ('lm_head',))
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from quantlens.errors import QuantlensError

__all__ = ["RoleMap", "split_name", "assign_roles", "require_roles"]


def split_name(name: str) -> Optional[tuple[str, int, str]]:
    """``(container, block, role)`` at the first integer component with a non-empty role after it."""
    parts = name.split(".")
    for k, p in enumerate(parts):
        if p.isdigit() and 0 < k < len(parts) - 1:
            return ".".join(parts[:k]), int(p), ".".join(parts[k + 1 :])
    return None


@dataclass(frozen=True)
class RoleMap:
    """Layers grouped by role: ``members[role][block] = layer name``; ``loose``: layers without one."""

    members: Mapping[str, Mapping[int, str]]
    loose: tuple[str, ...]

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.members)

    @property
    def block_ids(self) -> tuple[int, ...]:
        return tuple(sorted({b for m in self.members.values() for b in m}))

    def blocks(self, role: str) -> dict[int, str]:
        return dict(self.members[role])

    def layers(self, role: str) -> list[str]:
        """The role's layers, in block order."""
        return [self.members[role][b] for b in sorted(self.members[role])]

    def role_of(self, layer: str) -> Optional[tuple[str, int]]:
        for role, m in self.members.items():
            for b, n in m.items():
                if n == layer:
                    return role, b
        return None

    def __bool__(self) -> bool:
        return bool(self.members)


def assign_roles(names: Sequence[str]) -> RoleMap:
    """Group ``names`` (in order) by role (see module docstring)."""
    found: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    where: dict[str, Optional[tuple[str, str]]] = {}
    for n in names:
        s = split_name(n)
        if s is None or s[1] in found[(s[0], s[2])]:
            where[n] = None
            continue
        found[(s[0], s[2])][s[1]] = n
        where[n] = (s[0], s[2])
    repeated = {k: v for k, v in found.items() if len(v) >= 2}
    containers: dict[str, set[str]] = defaultdict(set)
    for c, r in repeated:
        containers[r].add(c)
    members: dict[str, dict[int, str]] = {}
    for n in names:  # roles in the order of their first layer
        k = where[n]
        if k is None or k not in repeated:
            continue
        c, r = k
        label = r if len(containers[r]) == 1 else f"{c}.*.{r}"
        members.setdefault(label, dict(sorted(repeated[k].items())))
    loose = tuple(n for n in names if where[n] is None or where[n] not in repeated)
    return RoleMap(members, loose)


def require_roles(names: Sequence[str]) -> RoleMap:
    """:func:`assign_roles`, or one line saying that the model has no repeated blocks."""
    r = assign_roles(names)
    if not r:
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} layers)" if len(names) > 20 else "")
        raise QuantlensError(
            f"--group-by role: the model has no repeated blocks (no layer name like 'layers.7.mlp.down_proj' "
            f"repeats across blocks); its layers are: {shown}. Drop --group-by role to sweep layer by layer"
        )
    return r
