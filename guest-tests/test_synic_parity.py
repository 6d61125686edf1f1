"""What the SynIC does the same way under TCG as under KVM, where outside
scenarios (kvm-unit-tests' hyperv_synic and hyperv_connections, Linux's
hv_vmbus) depend on it: auto-EOI SINTs, a disabled SynIC, and a VM reset
after the guest made objects through hyperv-testdev.

Auto-EOI is observed at delivery: the probe counts, per vector, the
interrupts taken while the vector was in service in the local APIC (its ISR
bit set). An auto-EOI SINT is acknowledged without entering service, so a
guest that sends no EOI for it still gets the next one; a normal SINT is in
service until the guest's EOI."""

from __future__ import annotations

import shlex
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from orchestrator.accel import Accel
from orchestrator.contract import HvStatus
from orchestrator.expect import expected_direct_status
from orchestrator.hvdefs import FAST, Call
from orchestrator.polling import eventually
from orchestrator.post_message import message_call, message_input
from orchestrator.probe import HypercallArgs, Probe
from orchestrator.signal_direct import direct_call
from orchestrator.synic_pages import SimMessage, slot_flags
from orchestrator.synic_setup import SintSetup, synic_on
from orchestrator.testdev import HypervTestDev
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

SUCCESS = HvStatus.SUCCESS
# Several of the 16 SINTs are auto-EOI, as in kvm-unit-tests' hyperv_synic.
AUTO_EOI_SINTS = frozenset({1, 4, 7, 10, 13})
ROUNDS = 3


def vector_of(cpu: int, sint: int) -> int:
    """Every SINT of every vCPU on a vector of its own."""
    return 0x90 + cpu * 0x20 + sint


@pytest.fixture
def all_sints(probe: Probe) -> Iterator[None]:
    """Both vCPUs' SynICs on, all 16 SINTs unmasked, the AUTO_EOI_SINTS auto-EOI."""
    with ExitStack() as synics:
        for cpu in (0, 1):
            sints = {
                sint: SintSetup(vector_of(cpu, sint), auto_eoi=sint in AUTO_EOI_SINTS)
                for sint in range(16)
            }
            synics.enter_context(synic_on(probe, cpu, sints))
        yield


def taken(probe: Probe, cpu: int, vector: int) -> tuple[int, int]:
    """(interrupts taken, of which in service at delivery) for `vector` on `cpu`."""
    return probe.irqs(cpu, vector), probe.in_service(cpu, vector)


def expected_in_service(sint: int, count: int) -> int:
    return 0 if sint in AUTO_EOI_SINTS else count


def test_auto_eoi_sints_are_acknowledged_without_entering_service(
    probe: Probe, testdev: HypervTestDev, all_sints: None
) -> None:
    for target in (0, 1):
        for sint in range(16):
            testdev.route_create(target, sint)
    try:
        for target in (0, 1):
            for sint in range(16):
                vector = vector_of(target, sint)
                before = taken(probe, target, vector)
                other_before = probe.irqs(1 - target, vector)
                # Each taken before the next is raised: a vector raised again
                # while still pending in the APIC is taken once.
                for n in range(1, ROUNDS + 1):
                    testdev.route_set_sint(target, sint)
                    eventually(
                        lambda t=target, v=vector, want=before[0] + n: probe.irqs(t, v) == want,
                        f"interrupt {n} of SINT{sint} on cpu {target}",
                    )
                irqs, in_service = taken(probe, target, vector)
                assert irqs - before[0] == ROUNDS
                assert in_service - before[1] == expected_in_service(sint, ROUNDS), (
                    f"SINT{sint} of cpu {target} (auto-EOI: {sint in AUTO_EOI_SINTS})"
                )
                assert probe.irqs(1 - target, vector) == other_before, "leaked to the other vCPU"
    finally:
        for target in (0, 1):
            for sint in range(16):
                testdev.route_destroy(target, sint)


@pytest.mark.direct_in_qemu
@pytest.mark.parametrize("target", [0, 1], ids=["self", "other-vcpu"])
def test_signal_event_direct_to_an_auto_eoi_sint(
    probe: Probe, all_sints: None, target: int
) -> None:
    sint = 4
    vector = vector_of(target, sint)
    before = taken(probe, target, vector)
    for n, flag in enumerate((30, 31, 32), 1):
        result = probe.hypercall_with(direct_call(target, sint, flag, cpu=0))
        assert result.status == SUCCESS
        assert result.output[:1] == b"\x01"
        # Taken before the next flag raises the vector again
        eventually(lambda n=n: probe.irqs(target, vector) == before[0] + n, f"interrupt {n}")
    assert taken(probe, target, vector) == (before[0] + 3, before[1])
    assert slot_flags(probe.sief(target, sint)) == {30, 31, 32}


def signal_event(probe: Probe, cpu: int, connection: int) -> int | None:
    return probe.hypercall(
        Call.SIGNAL_EVENT | FAST, cpu=cpu, fast=True, input=struct.pack("<QQ", connection, 0)
    ).status


MSG_SINT, EVT_SINT = 1, 4  # both auto-EOI


def msg_connection(cpu: int) -> int:
    return 0x40 + cpu


def evt_connection(cpu: int) -> int:
    return 0x50 + cpu


@pytest.fixture
def connections(testdev: HypervTestDev, all_sints: None) -> Iterator[None]:
    """A message and an event connection to each vCPU, on auto-EOI SINTs."""
    for cpu in (0, 1):
        testdev.msg_conn_create(cpu, MSG_SINT, msg_connection(cpu))
        testdev.evt_conn_create(cpu, EVT_SINT, evt_connection(cpu))
    try:
        yield
    finally:
        for cpu in (0, 1):
            testdev.msg_conn_destroy(msg_connection(cpu))
            testdev.evt_conn_destroy(evt_connection(cpu))


def receive_message(probe: Probe, cpu: int, message_type: int) -> None:
    message = eventually(
        lambda: (m := SimMessage.from_slot(probe.sim(cpu, MSG_SINT))).message_type and m,
        f"message {message_type:#x} on cpu {cpu}",
    )
    assert message.message_type == message_type
    probe.sim(cpu, MSG_SINT, clear=True)


@pytest.mark.parametrize("sender_of", [lambda t: t, lambda t: 1 - t], ids=["self", "other-vcpu"])
def test_connections_on_auto_eoi_sints_keep_delivering(
    probe: Probe, connections: None, sender_of: object
) -> None:
    assert callable(sender_of)
    for round_ in range(ROUNDS):
        for target in (0, 1):
            vector = vector_of(target, MSG_SINT)
            before = taken(probe, target, vector)
            message_type = 0x100 + round_ * 2 + target
            assert post_message(probe, sender_of(target), msg_connection(target), message_type) == (
                SUCCESS
            )
            receive_message(probe, target, message_type)
            eventually(lambda t=target, v=vector, n=before[0] + 1: probe.irqs(t, v) == n, "irq")
            assert taken(probe, target, vector) == (before[0] + 1, before[1])

            vector = vector_of(target, EVT_SINT)
            before = taken(probe, target, vector)
            assert signal_event(probe, sender_of(target), evt_connection(target)) == SUCCESS
            eventually(
                lambda t=target: evt_connection(t) in slot_flags(probe.sief(t, EVT_SINT)),
                f"flag {evt_connection(target)} on cpu {target}",
            )
            eventually(lambda t=target, v=vector, n=before[0] + 1: probe.irqs(t, v) == n, "irq")
            # Already set: no second interrupt.
            assert signal_event(probe, sender_of(target), evt_connection(target)) == SUCCESS
            time.sleep(0.5)
            assert taken(probe, target, vector) == (before[0] + 1, before[1])
            probe.sief(target, EVT_SINT, clear=True)


def post_message(probe: Probe, cpu: int, connection: int, message_type: int) -> int | None:
    return probe.hypercall_with(message_call(connection, message_type, cpu=cpu)).status


def test_both_vcpus_post_to_each_other_at_once(hv_vm: Vm, probe: Probe, connections: None) -> None:
    before = {cpu: taken(probe, cpu, vector_of(cpu, MSG_SINT)) for cpu in (0, 1)}
    # Two probe processes, each on its vCPU, post to the other vCPU together.
    posts = [
        shlex.join(
            [
                probe.binary,
                "hypercall",
                *HypercallArgs(
                    Call.POST_MESSAGE,
                    cpu=sender,
                    input=message_input(msg_connection(1 - sender), 0x200 + sender),
                ).argv(),
            ]
        )
        for sender in (0, 1)
    ]
    result = hv_vm.guest.run(" & ".join(posts) + " & wait")
    assert result.out.count('"status": 0') == 2, result.out
    for target in (0, 1):
        receive_message(probe, target, 0x200 + (1 - target))
        vector = vector_of(target, MSG_SINT)
        eventually(
            lambda t=target, v=vector: probe.irqs(t, v) == before[t][0] + 1, f"irq on cpu {target}"
        )
        assert taken(probe, target, vector) == (before[target][0] + 1, before[target][1])


def test_a_disabled_synic_takes_no_sint(probe: Probe, testdev: HypervTestDev, accel: Accel) -> None:
    # SIEF and SIM pages on, the SINT unmasked, but SCONTROL's enable bit clear.
    cpu, sint, vector = 1, 6, 0xE6
    probe.synic_setup(cpu, scontrol=False)
    probe.sint(cpu, sint, vector)
    testdev.route_create(cpu, sint)
    try:
        before = probe.irqs(cpu, vector)
        testdev.route_set_sint(cpu, sint)
        args = direct_call(cpu, sint, 9)
        result = probe.hypercall_with(args)
        assert result.status == expected_direct_status(
            accel, HvStatus.INVALID_SYNIC_STATE, args.control
        )
        time.sleep(1.0)
        assert probe.irqs(cpu, vector) == before
    finally:
        testdev.route_destroy(cpu, sint)
        probe.sint(cpu, sint, vector, masked=True)
        probe.synic_teardown(cpu)


@pytest.mark.long(seconds=26)
@pytest.mark.hyperv
def test_reset_after_every_testdev_object(fresh_vm: Vm) -> None:
    probe = Probe(fresh_vm.guest)
    testdev = HypervTestDev(probe)
    probe.synic_setup(1)
    testdev.route_create(1, 2)
    testdev.msg_conn_create(1, 3, 7)
    testdev.evt_conn_create(0, 4, 8)
    testdev.evt_conn_create_flags(1, 5, 9, 4)
    fresh_vm.reboot()
    assert fresh_vm.qmp.status() == "running"

    # What the guest made before the reset is gone with it ...
    probe = Probe(fresh_vm.guest)
    testdev = HypervTestDev(probe)
    probe.synic_setup(1)
    probe.sint(1, 3, 0xE3)
    try:
        assert post_message(probe, 0, 7, 0x31) == HvStatus.INVALID_CONNECTION_ID
        assert signal_event(probe, 0, 8) == HvStatus.INVALID_CONNECTION_ID
        assert signal_event(probe, 0, 9) == HvStatus.INVALID_CONNECTION_ID
        # ... and the same objects can be made again, and work.
        testdev.msg_conn_create(1, 3, 7)
        assert post_message(probe, 0, 7, 0x31) == SUCCESS
        receive_message_on(probe, 1, 3, 0x31)
        testdev.msg_conn_destroy(7)
        testdev.route_create(1, 2)
        testdev.route_destroy(1, 2)
    finally:
        probe.sint(1, 3, 0xE3, masked=True)
        probe.synic_teardown(1)
    # Once more with the objects still there, as a guest may leave them.
    testdev.route_create(1, 2)
    testdev.msg_conn_create(1, 3, 7)
    fresh_vm.reboot()
    assert fresh_vm.qmp.status() == "running"


def receive_message_on(probe: Probe, cpu: int, sint: int, message_type: int) -> None:
    message = eventually(
        lambda: (m := SimMessage.from_slot(probe.sim(cpu, sint))).message_type and m,
        f"message {message_type:#x} on cpu {cpu}",
    )
    assert message.message_type == message_type
