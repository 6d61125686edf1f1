"""Hyper-V numbers the tests, the demo and the clients share (TLFS; QEMU's
include/hw/hyperv/hyperv-proto.h and target/i386/kvm/hyperv-proto.h).
Statuses are contract.HvStatus."""

from __future__ import annotations

from enum import IntEnum


class Msr(IntEnum):
    GUEST_OS_ID = 0x40000000
    HYPERCALL = 0x40000001
    VP_INDEX = 0x40000002
    VP_RUNTIME = 0x40000010  # in the TLFS, not offered by the series
    SCONTROL = 0x40000080
    SVERSION = 0x40000081
    SIEFP = 0x40000082
    SIMP = 0x40000083
    EOM = 0x40000084
    SINT0 = 0x40000090


class Call(IntEnum):
    POST_MESSAGE = 0x005C
    SIGNAL_EVENT = 0x005D
    SIGNAL_EVENT_DIRECT = 0x00C0


# Control word
FAST = 1 << 16

# SINT register bits
SINT_MASKED = 1 << 16
SINT_AUTO_EOI = 1 << 17
SINT_POLLING = 1 << 18

# CPUID 0x40000003 EBX: partition privileges
PRIVILEGE_POST_MESSAGES = 1 << 4
PRIVILEGE_SIGNAL_EVENTS = 1 << 5
