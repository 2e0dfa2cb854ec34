"""One op of a forward pass, as the roofline prices it and a results row stores it (`ops`, `encoder_ops`).

A row stores an op as the JSON list `[kind, dtype, flops, bytes, count]` (identical ops folded together);
`Op(*row_op)` reads one back by name. A leaf: it imports nothing from the package.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple


class Op(NamedTuple):
    """`count` identical ops of `kind` (matmul, conv, attention, elementwise, ...) in `dtype`, each doing
    `flops` and moving `bytes`. A NamedTuple: it is stored in JSON as the list it is."""

    kind: str
    dtype: str
    flops: int
    bytes: int
    count: int


def as_ops(rows: Iterable[Sequence[Any]]) -> list[Op]:
    """Ops from their stored form (lists from a results row, or `Op`s already)."""
    return [Op(*r) for r in rows]


def totals(ops: Iterable[Sequence[Any]]) -> dict[str, int]:
    """Total flops, bytes and op count of an op list."""
    ops = as_ops(ops)
    return {"flops": sum(o.flops * o.count for o in ops), "bytes": sum(o.bytes * o.count for o in ops),
            "ops": sum(o.count for o in ops)}
