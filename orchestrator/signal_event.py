"""HvCallSignalEvent (0x005D) as the probe issues it (TLFS: ConnectionId u32,
FlagNumber u16, RsvdZ u16; the fast form passes the same 8 bytes in RDX)."""

from __future__ import annotations

import struct

from orchestrator.hvdefs import FAST, Call
from orchestrator.probe import HypercallArgs

CALL_CODE = Call.SIGNAL_EVENT


def event_input(connection: int, flag: int, reserved: int = 0) -> bytes:
    return struct.pack("<IHH", connection, flag, reserved)


def event_call(
    connection: int, flag: int = 0, *, fast: bool = False, reserved: int = 0, **overrides: object
) -> HypercallArgs:
    """The memory form, or the fast form (RDX = the input, R8 = 0);
    `overrides` go to HypercallArgs (cpu, control, offsets, ...)."""
    data = event_input(connection, flag, reserved)
    fields: dict[str, object] = {
        "control": CALL_CODE | FAST if fast else CALL_CODE,
        "fast": fast,
        "input": data + bytes(8) if fast else data,
    }
    fields.update(overrides)
    return HypercallArgs(**fields)  # type: ignore[arg-type]
