"""HvCallSignalEventDirect (0x00C0) as the probe issues it: the input layout
(TLFS: TargetPartition u64, TargetVp u32, TargetVtl u8, TargetSint u8,
FlagNumber u16) and the output's NewlySignaled byte."""

from __future__ import annotations

import struct

from orchestrator.hvdefs import FAST, Call
from orchestrator.probe import HypercallArgs, HypercallResult

__all__ = ["FAST", "direct_call", "direct_input", "fast_direct_call", "newly_signaled"]

CALL_CODE = Call.SIGNAL_EVENT_DIRECT
SELF_PARTITION = 2**64 - 1
VP_INDEX_SELF, ANY_VP = 0xFFFFFFFE, 0xFFFFFFFF
OUTPUT_BYTES = 8


def direct_input(
    vp: int, sint: int, flag: int, partition: int = SELF_PARTITION, vtl: int = 0
) -> bytes:
    return struct.pack("<QIBBH", partition, vp, vtl, sint, flag)


def direct_call(vp: int, sint: int, flag: int, **overrides: object) -> HypercallArgs:
    """The memory-form call; `overrides` go to HypercallArgs (cpu, offsets, ...)."""
    fields: dict[str, object] = {
        "control": CALL_CODE,
        "input": direct_input(vp, sint, flag),
        "out_len": OUTPUT_BYTES,
    }
    fields.update(overrides)
    return HypercallArgs(**fields)  # type: ignore[arg-type]


def fast_direct_call(vp: int, sint: int, flag: int, **overrides: object) -> HypercallArgs:
    """The fast form: the input in RDX and R8, NewlySignaled back in XMM0
    (which needs XMM fast output, hv-xmm-input)."""
    fields: dict[str, object] = {
        "control": CALL_CODE | FAST,
        "fast": True,
        "input": direct_input(vp, sint, flag),
        "out_len": None,
    }
    fields.update(overrides)
    return HypercallArgs(**fields)  # type: ignore[arg-type]


def newly_signaled(result: HypercallResult) -> int | None:
    """NewlySignaled from a successful call's output; None if it did not succeed."""
    if result.ud or result.status != 0 or len(result.output) < 1:
        return None
    return result.output[0]
