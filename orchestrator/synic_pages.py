"""The layout of a SynIC's SIEF and SIM pages (TLFS): 16 slots of 256 bytes,
one per SINT; a SIEF slot is 2048 flags, flag n being bit n%8 of byte n/8; a
SIM slot is one HV_MESSAGE. Decoding for the guest's view (the probe) and
the host's (QMP reads) alike."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import HarnessError

PAGE_BYTES = 4096
SINT_COUNT = 16
SLOT_BYTES = 256
FLAGS_PER_SLOT = SLOT_BYTES * 8


def check_size(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise HarnessError(f"a {what} is {size} bytes, got {len(data)}")


@dataclass(frozen=True)
class SimMessage:
    """The header of a SIM slot (TLFS HV_MESSAGE) and its payload."""

    message_type: int
    payload_size: int
    message_flags: int
    payload: bytes

    @classmethod
    def from_slot(cls, slot: bytes) -> SimMessage:
        check_size(slot, SLOT_BYTES, "SIM slot")
        return cls(
            message_type=int.from_bytes(slot[0:4], "little"),
            payload_size=slot[4],
            message_flags=slot[5],
            payload=slot[16:],
        )


def slot_flags(slot: bytes) -> frozenset[int]:
    """The flag numbers set in one 256-byte SIEF slot (flag n: bit n%8 of byte n/8)."""
    check_size(slot, SLOT_BYTES, "SIEF slot")
    return frozenset(
        index * 8 + bit
        for index, byte in enumerate(slot)
        if byte
        for bit in range(8)
        if byte >> bit & 1
    )


def decode_sief_page(page: bytes) -> dict[int, frozenset[int]]:
    """Every SINT of a 4096-byte SIEF page (read over QMP) to its set flag numbers."""
    check_size(page, PAGE_BYTES, "SIEF page")
    return {
        sint: slot_flags(page[sint * SLOT_BYTES : (sint + 1) * SLOT_BYTES])
        for sint in range(SINT_COUNT)
    }
