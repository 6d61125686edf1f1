"""SynIC state and event ports carried through savevm/loadvm under TCG
(issue 12, "Migration and snapshots"): the SynIC MSRs, the SIEF page's
flags and the ports with their connections come back as they were saved,
and signals after the load set new flags and interrupt."""

from __future__ import annotations

import pytest

from orchestrator.contract import HvStatus
from orchestrator.polling import eventually
from orchestrator.ports import Port
from orchestrator.probe import Probe, slot_flags
from orchestrator.signal_direct import direct_call, newly_signaled
from orchestrator.signal_event import event_call
from orchestrator.vm import Vm

pytestmark = [
    pytest.mark.vm,
    pytest.mark.hyperv,
    pytest.mark.accel("tcg", reason="savevm under nested KVM is the KVM host's business"),
]

CALLER, TARGET, SINT, VECTOR = 0, 1, 2, 0xE2
PORT = Port(port_id=0x10, vp=TARGET, sint=SINT, base_flag=100, flag_count=8)
CONN = 0x20
SAVED_DIRECT_FLAG, SAVED_PORT_FLAG = 5, 1
LATER_DIRECT_FLAG, LATER_PORT_FLAG = 6, 2


def hmp_ok(vm: Vm, command: str) -> None:
    output = vm.qmp.hmp(command, timeout=120.0)
    assert output.strip() == "", f"{command}: {output}"


def test_savevm_loadvm_carries_synic_flags_and_ports(module_vm: Vm) -> None:
    vm = module_vm
    probe = Probe(vm.guest)
    probe.synic_setup(TARGET)
    probe.sint(TARGET, SINT, VECTOR)
    vm.ports.create(PORT)
    vm.ports.connect(CONN, PORT.port_id)
    direct = probe.hypercall_with(direct_call(TARGET, SINT, SAVED_DIRECT_FLAG, cpu=CALLER))
    assert newly_signaled(direct) == 1
    assert probe.hypercall_with(event_call(CONN, SAVED_PORT_FLAG, cpu=CALLER)).status == 0
    saved_flags = {SAVED_DIRECT_FLAG, PORT.bit(SAVED_PORT_FLAG)}
    assert vm.synic.sief(TARGET).get(SINT, frozenset()) == saved_flags
    saved_synic = vm.synic.state()[TARGET]
    saved_ports = vm.ports.table()

    hmp_ok(vm, "savevm hvsd-snapshot")
    # Everything saved is then undone, so that only the load can bring it back.
    probe.sief(TARGET, SINT, clear=True)
    vm.ports.clear()
    probe.sint(TARGET, SINT, VECTOR, masked=True)
    assert vm.synic.sief(TARGET).get(SINT, frozenset()) == frozenset()
    assert vm.ports.table().ports == {}

    hmp_ok(vm, "loadvm hvsd-snapshot")
    vm.reconnect()
    assert vm.qmp.status() == "running"
    assert vm.synic.state()[TARGET] == saved_synic
    assert vm.synic.sief(TARGET).get(SINT, frozenset()) == saved_flags
    assert slot_flags(probe.sief(TARGET, SINT)) == saved_flags
    assert vm.ports.table() == saved_ports

    # Signals after the load: new flags, each interrupting the target once;
    # the saved flags are still set, so signalling them again is not new.
    before = probe.irqs(TARGET, VECTOR)
    again = probe.hypercall_with(direct_call(TARGET, SINT, SAVED_DIRECT_FLAG, cpu=CALLER))
    assert newly_signaled(again) == 0
    later = probe.hypercall_with(direct_call(TARGET, SINT, LATER_DIRECT_FLAG, cpu=CALLER))
    assert newly_signaled(later) == 1
    assert probe.hypercall_with(event_call(CONN, LATER_PORT_FLAG, cpu=CALLER)).status == (
        HvStatus.SUCCESS
    )
    assert vm.synic.sief(TARGET).get(SINT, frozenset()) == saved_flags | {
        LATER_DIRECT_FLAG,
        PORT.bit(LATER_PORT_FLAG),
    }
    eventually(lambda: probe.irqs(TARGET, VECTOR) == before + 2, "two interrupts after the load")
    hmp_ok(vm, "delvm hvsd-snapshot")
