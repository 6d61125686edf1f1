"""The SynIC scenarios of kvm-unit-tests' hyperv_synic and hyperv_connections,
as our own tests under TCG: SINT routes on every SINT of every vCPU,
HvCallSignalEvent through an event connection, HvCallPostMessage through a
message connection, a busy message slot and its redelivery after EOM. The
connections are hyperv-testdev's, which echo what the guest sends."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from orchestrator.accel import Accel
from orchestrator.contract import HvStatus
from orchestrator.hvdefs import FAST, Call, Msr
from orchestrator.polling import eventually
from orchestrator.post_message import message_call
from orchestrator.probe import Probe
from orchestrator.synic_pages import SimMessage, decode_sief_page, slot_flags
from orchestrator.synic_setup import synic_on
from orchestrator.testdev import HypervTestDev
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

POST_MESSAGE, SIGNAL_EVENT, EOM = Call.POST_MESSAGE, Call.SIGNAL_EVENT, Msr.EOM
SUCCESS = HvStatus.SUCCESS
MESSAGE_FLAG_PENDING = 1
T = TypeVar("T")


@contextmanager
def synic(probe: Probe, cpu: int, sint: int, vector: int) -> Iterator[None]:
    """SynIC enabled on `cpu` with SIEF and SIM pages, `sint` unmasked with `vector`."""
    with synic_on(probe, cpu, {sint: vector}):
        yield


def signal_event(probe: Probe, connection: int, flag: int = 0, cpu: int = 0) -> int | None:
    rdx = connection | flag << 32
    return probe.hypercall(
        SIGNAL_EVENT | FAST, cpu=cpu, fast=True, input=struct.pack("<QQ", rdx, 0)
    ).status


def post_message(probe: Probe, connection: int, message_type: int, payload: bytes) -> int | None:
    return probe.hypercall_with(message_call(connection, message_type, payload)).status


@pytest.mark.parametrize("target", [0, 1], ids=["self", "other-vcpu"])
def test_sint_routes_fire_on_every_sint(probe: Probe, testdev: HypervTestDev, target: int) -> None:
    probe.synic_setup(target)
    try:
        for sint in range(16):
            vector = 0xD0 + sint
            probe.sint(target, sint, vector)
            testdev.route_create(target, sint)
            before = {cpu: probe.irqs(cpu, vector) for cpu in (0, 1)}
            testdev.route_set_sint(target, sint)
            eventually(
                lambda v=vector, n=before[target] + 1: probe.irqs(target, v) == n,
                f"one interrupt with vector {vector:#x} on cpu {target}",
            )
            other = 1 - target
            assert probe.irqs(other, vector) == before[other], f"SINT{sint} leaked to cpu {other}"
            testdev.route_destroy(target, sint)
            probe.sint(target, sint, vector, masked=True)
    finally:
        probe.synic_teardown(target)


def test_a_masked_or_polling_sint_delivers_nothing(
    probe: Probe, testdev: HypervTestDev, accel: Accel
) -> None:
    sint, vector = 6, 0xE6
    with synic(probe, 1, sint, vector):
        testdev.route_create(1, sint)
        try:
            for masked, polling in ((True, False), (False, True)):
                probe.sint(1, sint, vector, masked=masked, polling=polling)
                before = probe.irqs(1, vector)
                testdev.route_set_sint(1, sint)
                # Give the main loop time to deliver, were it going to.
                time.sleep(1.0)
                # A device's SINT route goes through KVM's irqfd under KVM, and
                # KVM's SynIC does not implement polling mode: it interrupts.
                # (HvCallSignalEvent(Direct) to a polling SINT does not: QEMU
                # knows the SINT and asserts nothing.)
                delivered = 1 if polling and accel.is_kvm else 0
                assert probe.irqs(1, vector) == before + delivered, (masked, polling)
        finally:
            testdev.route_destroy(1, sint)


@pytest.mark.parametrize("target", [0, 1], ids=["self", "other-vcpu"])
def test_signal_event_sets_the_connection_flag_once(
    hv_vm: Vm, probe: Probe, testdev: HypervTestDev, target: int
) -> None:
    sint, vector, connection = 2, 0xE2, 5
    with synic(probe, target, sint, vector):
        testdev.evt_conn_create(target, sint, connection)
        try:
            before = probe.irqs(target, vector)
            assert signal_event(probe, connection) == SUCCESS
            eventually(
                lambda: connection in slot_flags(probe.sief(target, sint)),
                f"flag {connection} in SIEF slot {sint} of cpu {target}",
            )
            eventually(lambda: probe.irqs(target, vector) == before + 1, "one interrupt")
            # The host reads the same page over QMP.
            sief_gpa = probe.pages(target).sief_gpa
            assert sief_gpa is not None
            host_view = decode_sief_page(hv_vm.qmp.read_phys(sief_gpa, 4096))
            assert host_view[sint] == {connection}
            assert all(not flags for s, flags in host_view.items() if s != sint)

            # Already set: success, and no new interrupt.
            assert signal_event(probe, connection) == SUCCESS
            time.sleep(1.0)
            assert probe.irqs(target, vector) == before + 1

            # Cleared by the guest: the next signal interrupts again.
            probe.sief(target, sint, clear=True)
            assert signal_event(probe, connection) == SUCCESS
            eventually(lambda: probe.irqs(target, vector) == before + 2, "a second interrupt")
        finally:
            testdev.evt_conn_destroy(connection)


@pytest.mark.parametrize("target", [0, 1], ids=["self", "other-vcpu"])
def test_post_message_is_echoed_into_the_sim_slot(
    probe: Probe, testdev: HypervTestDev, target: int
) -> None:
    sint, vector, connection = 1, 0xE1, 7
    payload = bytes(range(240))  # the largest payload
    with synic(probe, target, sint, vector):
        testdev.msg_conn_create(target, sint, connection)
        try:
            before = probe.irqs(target, vector)
            assert post_message(probe, connection, 0x11, payload) == SUCCESS
            message = eventually(
                lambda: (m := SimMessage.from_slot(probe.sim(target, sint))).message_type and m,
                f"a message in SIM slot {sint} of cpu {target}",
            )
            assert (message.message_type, message.payload_size) == (0x11, 240)
            assert message.payload == payload
            eventually(lambda: probe.irqs(target, vector) == before + 1, "one interrupt")
        finally:
            probe.sim(target, sint, clear=True)
            testdev.msg_conn_destroy(connection)


def test_busy_slot_is_redelivered_after_eom(probe: Probe, testdev: HypervTestDev) -> None:
    target, sint, vector, connection = 1, 3, 0xE3, 9
    with synic(probe, target, sint, vector):
        testdev.msg_conn_create(target, sint, connection)
        try:
            before = probe.irqs(target, vector)
            assert post_message(probe, connection, 0x21, b"first") == SUCCESS
            eventually(
                lambda: SimMessage.from_slot(probe.sim(target, sint)).message_type == 0x21,
                "the first message",
            )
            # The slot is busy: the second message waits, and the first is
            # marked so that the guest knows to signal EOM.
            assert post_message(probe, connection, 0x22, b"second") == SUCCESS
            eventually(
                lambda: (
                    SimMessage.from_slot(probe.sim(target, sint)).message_flags
                    & MESSAGE_FLAG_PENDING
                ),
                "the pending flag on the first message",
            )
            first = SimMessage.from_slot(probe.sim(target, sint, clear=True))
            assert (first.message_type, first.payload[:5]) == (0x21, b"first")
            assert probe.irqs(target, vector) == before + 1

            assert not probe.wrmsr(EOM, 0, cpu=target).gp
            second = eventually(
                lambda: (m := SimMessage.from_slot(probe.sim(target, sint))).message_type and m,
                "the second message after EOM",
            )
            assert (second.message_type, second.payload[:6]) == (0x22, b"second")
            eventually(lambda: probe.irqs(target, vector) == before + 2, "a second interrupt")
        finally:
            probe.sim(target, sint, clear=True)
            testdev.msg_conn_destroy(connection)
