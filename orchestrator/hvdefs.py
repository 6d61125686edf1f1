"""Hyper-V numbers the tests, the demo and the clients share (TLFS; QEMU's
include/hw/hyperv/hyperv-proto.h and target/i386/kvm/hyperv-proto.h).
Statuses are contract.HvStatus."""

from __future__ import annotations

from enum import IntEnum


class Msr(IntEnum):
    GUEST_OS_ID = 0x40000000
    HYPERCALL = 0x40000001
    VP_INDEX = 0x40000002
    RESET = 0x40000003
    VP_RUNTIME = 0x40000010
    TIME_REF_COUNT = 0x40000020
    REFERENCE_TSC = 0x40000021
    TSC_FREQUENCY = 0x40000022
    APIC_FREQUENCY = 0x40000023
    EOI = 0x40000070
    ICR = 0x40000071
    TPR = 0x40000072
    APIC_ASSIST_PAGE = 0x40000073
    SCONTROL = 0x40000080
    SVERSION = 0x40000081
    SIEFP = 0x40000082
    SIMP = 0x40000083
    EOM = 0x40000084
    SINT0 = 0x40000090
    STIMER0_CONFIG = 0x400000B0
    STIMER0_COUNT = 0x400000B1


def stimer_config_msr(timer: int) -> int:
    return Msr.STIMER0_CONFIG + 2 * timer


def stimer_count_msr(timer: int) -> int:
    return Msr.STIMER0_COUNT + 2 * timer


# Synthetic timer configuration bits
STIMER_ENABLE = 1 << 0
STIMER_PERIODIC = 1 << 1
STIMER_AUTO_ENABLE = 1 << 3
STIMER_DIRECT = 1 << 12


def stimer_vector(vector: int) -> int:
    return vector << 4


def stimer_sint(sint: int) -> int:
    return sint << 16


# The message a synthetic timer posts, and the reference time's unit
MESSAGE_TIMER_EXPIRED = 0x80000010
REF_TIME_HZ = 10_000_000


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
