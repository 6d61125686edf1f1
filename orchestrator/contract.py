"""The contract (orchestrator/contract.toml): the rows every test and report reads."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence, Set
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Protocol, TypeVar

# Package data, so that an installed orchestrator finds it without the tree
CONTRACT = resources.files("orchestrator") / "contract.toml"


class HvStatus(IntEnum):
    """HV_STATUS values (TLFS)."""

    SUCCESS = 0x0
    INVALID_HYPERCALL_CODE = 0x2
    INVALID_HYPERCALL_INPUT = 0x3
    INVALID_ALIGNMENT = 0x4
    INVALID_PARAMETER = 0x5
    ACCESS_DENIED = 0x6
    INVALID_PARTITION_STATE = 0x7
    OPERATION_DENIED = 0x8
    INSUFFICIENT_MEMORY = 0xB
    INVALID_PARTITION_ID = 0xD
    INVALID_VP_INDEX = 0xE
    INVALID_PORT_ID = 0x11
    INVALID_CONNECTION_ID = 0x12
    INSUFFICIENT_BUFFERS = 0x13
    INVALID_VP_STATE = 0x15
    INVALID_SYNIC_STATE = 0x18
    INVALID_VTL_STATE = 0x51


@dataclass(frozen=True)
class Row:
    id: str
    call: str
    condition: str
    status: HvStatus
    tested: str

    @property
    def has_guest_test(self) -> bool:
        return self.tested.startswith("guest-tests/")


def load(path: Traversable | Path = CONTRACT) -> tuple[Row, ...]:
    with path.open("rb") as source:
        data = tomllib.load(source)
    return tuple(
        Row(r["id"], r["call"], r["condition"], HvStatus[r["status"]], r["tested"])
        for r in data["row"]
    )


def row(row_id: str, rows: tuple[Row, ...] | None = None) -> Row:
    for candidate in rows if rows is not None else load():
        if candidate.id == row_id:
            return candidate
    raise KeyError(f"no contract row {row_id}")


class BreaksARow(Protocol):
    """A way to break one row's rule (a test's fault table entry)."""

    @property
    def row_id(self) -> str: ...


F = TypeVar("F", bound=BreaksARow)


def ordered_pairs(
    faults: Sequence[F], incompatible: Set[tuple[str, str]], rows: tuple[Row, ...]
) -> list[tuple[F, F]]:
    """Every pair of `faults` that can be broken at once, the row the contract
    checks first leading; ValueError if `faults` are not in the contract's order."""
    order = [r.id for r in rows]
    positions = [order.index(fault.row_id) for fault in faults]
    if positions != sorted(positions):
        raise ValueError(f"faults not in the contract's order: {[f.row_id for f in faults]}")
    return [
        (first, second)
        for i, first in enumerate(faults)
        for second in faults[i + 1 :]
        if (first.row_id, second.row_id) not in incompatible
    ]
