"""HvCallPostMessage (0x005C) as the probe issues it (TLFS: ConnectionId u32,
Reserved u32, MessageType u32, PayloadSize u32, then 240 payload bytes)."""

from __future__ import annotations

import struct

from orchestrator.hvdefs import Call
from orchestrator.probe import HypercallArgs

CALL_CODE = Call.POST_MESSAGE
PAYLOAD_MAX = 240


def message_input(connection: int, message_type: int, payload: bytes = bytes(8)) -> bytes:
    """The input; a payload shorter than 240 bytes is padded with zeros."""
    header = struct.pack("<IIII", connection, 0, message_type, len(payload))
    return header + payload.ljust(PAYLOAD_MAX, b"\0")


def message_call(
    connection: int, message_type: int, payload: bytes = bytes(8), **overrides: object
) -> HypercallArgs:
    """The memory form; `overrides` go to HypercallArgs (cpu, ...)."""
    fields: dict[str, object] = {
        "control": CALL_CODE,
        "input": message_input(connection, message_type, payload),
    }
    fields.update(overrides)
    return HypercallArgs(**fields)  # type: ignore[arg-type]
