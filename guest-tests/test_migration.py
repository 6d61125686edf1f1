"""SynIC state and event ports carried when a VM moves, under TCG (issue 12,
"Migration and snapshots"), three ways: savevm/loadvm in one QEMU, through a
file into a second QEMU, and live into a second QEMU on this host.

Each way carries the SynIC MSRs, the SIEF page's flags, a message pending
in the SIM page and the ports with their connections as they were saved;
signals afterwards set new flags and interrupt, and the saved flags, still
set, are not newly signalled. The synthetic timers are armed again on the
other side, and the reference counter goes on reading the TSC page's time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import guest_timers
from orchestrator.command import STIMER_CPU
from orchestrator.contract import HvStatus
from orchestrator.hvdefs import (
    REF_TIME_HZ,
    STIMER_DIRECT,
    STIMER_ENABLE,
    STIMER_PERIODIC,
    Msr,
    stimer_config_msr,
    stimer_count_msr,
    stimer_vector,
)
from orchestrator.migration import load_from_file, migrate_live, save_to_file
from orchestrator.polling import eventually
from orchestrator.ports import HostPorts, Port, PortTable
from orchestrator.post_message import message_call
from orchestrator.probe import Probe
from orchestrator.signal_direct import direct_call, newly_signaled
from orchestrator.signal_event import event_call
from orchestrator.synic import HostSynic, SynicInfo
from orchestrator.synic_pages import SimMessage, slot_flags
from orchestrator.testdev import HypervTestDev
from orchestrator.vm import Vm

pytestmark = [
    pytest.mark.vm,
    pytest.mark.hyperv,
    pytest.mark.accel("tcg", reason="under the KVM leg, the QEMU to move runs nested"),
]

CALLER, TARGET, SINT, VECTOR = 0, 1, 2, 0xE2
PORT = Port(port_id=0x10, vp=TARGET, sint=SINT, base_flag=100, flag_count=8)
CONN = 0x20
SAVED_DIRECT_FLAG, SAVED_PORT_FLAG = 5, 1
# A message hyperv-testdev echoes into the SIM, left there unread.
MSG_SINT, MSG_VECTOR, MSG_CONN, MSG_TYPE = 3, 0xE3, 7, 0x41
MSG_PAYLOAD = b"carried across"
LATER_DIRECT_FLAG, LATER_PORT_FLAG = 6, 2


@dataclass(frozen=True)
class Saved:
    synic: SynicInfo
    flags: frozenset[int]
    message: SimMessage
    ports: PortTable


def sief_flags(vm: Vm) -> frozenset[int]:
    return HostSynic(vm.qmp).sief(TARGET).get(SINT, frozenset())


def arrange(vm: Vm) -> Saved:
    """A SynIC on the target, a port with a connection, and one flag set by
    each call: the state every way must carry."""
    probe = Probe(vm.guest)
    # Not undone: the VM is this test's own, and what is arranged is what moves
    probe.synic_setup(TARGET)
    probe.sint(TARGET, SINT, VECTOR)
    HostPorts(vm.qmp).create(PORT)
    HostPorts(vm.qmp).connect(CONN, PORT.port_id)
    direct = probe.hypercall_with(direct_call(TARGET, SINT, SAVED_DIRECT_FLAG, cpu=CALLER))
    assert newly_signaled(direct) == 1
    assert probe.hypercall_with(event_call(CONN, SAVED_PORT_FLAG, cpu=CALLER)).status == 0
    flags = frozenset({SAVED_DIRECT_FLAG, PORT.bit(SAVED_PORT_FLAG)})
    assert sief_flags(vm) == flags

    probe.sint(TARGET, MSG_SINT, MSG_VECTOR)
    HypervTestDev(probe).msg_conn_create(TARGET, MSG_SINT, MSG_CONN)
    posted = probe.hypercall_with(message_call(MSG_CONN, MSG_TYPE, MSG_PAYLOAD, cpu=CALLER))
    assert posted.status == HvStatus.SUCCESS
    message = eventually(
        lambda: (m := SimMessage.from_slot(probe.sim(TARGET, MSG_SINT))).message_type and m,
        "the message in the SIM slot",
    )
    assert (message.message_type, message.payload[: len(MSG_PAYLOAD)]) == (MSG_TYPE, MSG_PAYLOAD)
    return Saved(HostSynic(vm.qmp).state()[TARGET], flags, message, HostPorts(vm.qmp).table())


def assert_carried(vm: Vm, saved: Saved) -> None:
    probe = Probe(vm.guest)
    assert vm.qmp.status() == "running"
    assert HostSynic(vm.qmp).state()[TARGET] == saved.synic
    assert sief_flags(vm) == saved.flags
    assert slot_flags(probe.sief(TARGET, SINT)) == saved.flags
    assert SimMessage.from_slot(probe.sim(TARGET, MSG_SINT)) == saved.message
    assert HostPorts(vm.qmp).table() == saved.ports

    before = probe.irqs(TARGET, VECTOR)
    again = probe.hypercall_with(direct_call(TARGET, SINT, SAVED_DIRECT_FLAG, cpu=CALLER))
    assert newly_signaled(again) == 0
    later = probe.hypercall_with(direct_call(TARGET, SINT, LATER_DIRECT_FLAG, cpu=CALLER))
    assert newly_signaled(later) == 1
    # Taken before the port's signal raises the same vector again
    eventually(lambda: probe.irqs(TARGET, VECTOR) == before + 1, "an interrupt after the move")
    port_call = probe.hypercall_with(event_call(CONN, LATER_PORT_FLAG, cpu=CALLER))
    assert port_call.status == HvStatus.SUCCESS
    assert sief_flags(vm) == saved.flags | {LATER_DIRECT_FLAG, PORT.bit(LATER_PORT_FLAG)}
    eventually(lambda: probe.irqs(TARGET, VECTOR) == before + 2, "two interrupts after the move")


def hmp_ok(vm: Vm, command: str) -> None:
    output = vm.qmp.hmp(command, timeout=120.0)
    assert output.strip() == "", f"{command}: {output}"


@contextmanager
def destination_of(source: Vm, log_dir: Path) -> Iterator[Vm]:
    """A second QEMU with the source's options, waiting for its state."""
    with Vm(
        log_dir, source.options, accel=source.accel, name=f"{source.name}-dst", incoming=True
    ) as destination:
        yield destination


@contextmanager
def move_by_savevm(vm: Vm, tmp_path: Path) -> Iterator[Vm]:
    probe = Probe(vm.guest)
    hmp_ok(vm, "savevm hvsd-snapshot")
    # What was saved is then undone, so that only the load can bring it back.
    probe.sief(TARGET, SINT, clear=True)
    HostPorts(vm.qmp).clear()
    probe.sint(TARGET, SINT, VECTOR, masked=True)
    probe.sim(TARGET, MSG_SINT, clear=True)
    assert sief_flags(vm) == frozenset()
    assert HostPorts(vm.qmp).table().ports == {}
    hmp_ok(vm, "loadvm hvsd-snapshot")
    vm.reconnect()
    yield vm
    hmp_ok(vm, "delvm hvsd-snapshot")


@contextmanager
def move_through_file(vm: Vm, tmp_path: Path) -> Iterator[Vm]:
    state = tmp_path / "vm.state"
    save_to_file(vm, state)
    vm.stop()
    with destination_of(vm, tmp_path / "destination") as destination:
        load_from_file(destination, state)
        yield destination


@contextmanager
def move_live(vm: Vm, tmp_path: Path) -> Iterator[Vm]:
    with destination_of(vm, tmp_path / "destination") as destination:
        migrate_live(vm, destination)
        assert vm.qmp.status() == "postmigrate"
        yield destination


WAYS: dict[str, Callable[[Vm, Path], AbstractContextManager[Vm]]] = {
    "savevm-loadvm": move_by_savevm,
    "file": move_through_file,
    "live": move_live,
}


@pytest.mark.parametrize("way", WAYS)
def test_synic_flags_and_ports_survive_the_move(fresh_vm: Vm, tmp_path: Path, way: str) -> None:
    saved = arrange(fresh_vm)
    with WAYS[way](fresh_vm, tmp_path) as moved:
        assert_carried(moved, saved)


# --- synthetic timers and the reference clock across the move ---------------

DIRECT_VECTOR = 0xE7
PERIOD = 10 * REF_TIME_HZ // 1000  # 10 ms in reference time units


def linux_stimer_interrupts(vm: Vm) -> int:
    return guest_timers.linux_stimer_interrupts(vm.guest, vm.options.cpus)


def ref_minus_uptime(vm: Vm) -> float:
    """The reference counter less the guest's uptime (read through the TSC
    page clocksource), in seconds: constant while both read one clock."""
    ref = Probe(vm.guest).rdmsr(Msr.TIME_REF_COUNT, cpu=TARGET).value / REF_TIME_HZ
    return ref - float(vm.guest.run("cat /proc/uptime", check=True).out.split()[0])


@contextmanager
def reload_snapshot(vm: Vm, tmp_path: Path) -> Iterator[Vm]:
    hmp_ok(vm, "savevm hvsd-timers")
    hmp_ok(vm, "loadvm hvsd-timers")
    vm.reconnect()
    yield vm
    hmp_ok(vm, "delvm hvsd-timers")


TIMER_WAYS: dict[str, Callable[[Vm, Path], AbstractContextManager[Vm]]] = {
    "savevm-loadvm": reload_snapshot,
    "file": move_through_file,
    "live": move_live,
}


@pytest.mark.vm_options(cpu=STIMER_CPU)
@pytest.mark.parametrize("way", TIMER_WAYS)
def test_timers_and_reference_clock_go_on_after_the_move(
    fresh_vm: Vm, tmp_path: Path, way: str
) -> None:
    """Linux uses a synthetic timer as its clockevent on every CPU: a move that
    leaves the timers unarmed stops its ticks, and the guest with them."""
    probe = Probe(fresh_vm.guest)
    assert (
        fresh_vm.guest.run(
            "cat /sys/devices/system/clockevents/clockevent0/current_device", check=True
        ).out.strip()
        == "Hyper-V clockevent"
    )
    assert not probe.wrmsr(stimer_count_msr(1), PERIOD, cpu=TARGET).gp
    periodic = STIMER_ENABLE | STIMER_PERIODIC | STIMER_DIRECT | stimer_vector(DIRECT_VECTOR)
    assert not probe.wrmsr(stimer_config_msr(1), periodic, cpu=TARGET).gp
    eventually(lambda: probe.irqs(TARGET, DIRECT_VECTOR) > 5, "the probe's periodic timer")
    clock_before = ref_minus_uptime(fresh_vm)
    with TIMER_WAYS[way](fresh_vm, tmp_path) as moved:
        probe = Probe(moved.guest)
        assert probe.rdmsr(stimer_config_msr(1), cpu=TARGET).value == periodic
        ticks = linux_stimer_interrupts(moved)
        # sleep ends only on a timer interrupt
        assert moved.guest.run("sleep 1", timeout=60).rc == 0
        eventually(lambda: linux_stimer_interrupts(moved) > ticks + 10, "Linux's timer ticks")
        fired = probe.irqs(TARGET, DIRECT_VECTOR)
        eventually(
            lambda: probe.irqs(TARGET, DIRECT_VECTOR) > fired + 10, "the periodic timer again"
        )
        assert abs(ref_minus_uptime(moved) - clock_before) < 0.5
        assert not probe.wrmsr(stimer_config_msr(1), 0, cpu=TARGET).gp


# --- the other enlightenments across the move --------------------------------

ENLIGHTENED_CPU = STIMER_CPU + ",hv-vapic,hv-runtime,hv-reset,hv-frequencies"
ASSIST_PAGE = 0x1F00_0000 | 1  # a guest page, enabled; TCG only keeps the MSR
GUEST_TPR = 0x10  # blocks nothing Linux uses: its vectors start at 0x20


def busy(vm: Vm, cpu: int) -> None:
    """CPU time for the VP's runtime to count."""
    vm.guest.run(f"taskset -c {cpu} sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'")


@pytest.mark.vm_options(cpu=ENLIGHTENED_CPU)
@pytest.mark.parametrize("way", TIMER_WAYS)
def test_assist_page_apic_msrs_runtime_and_reset_after_the_move(
    fresh_vm: Vm, tmp_path: Path, way: str
) -> None:
    probe = Probe(fresh_vm.guest)
    assert not probe.wrmsr(Msr.APIC_ASSIST_PAGE, ASSIST_PAGE, cpu=TARGET).gp
    assert not probe.wrmsr(Msr.TPR, GUEST_TPR, cpu=TARGET).gp
    busy(fresh_vm, TARGET)
    runtime = probe.rdmsr(Msr.VP_RUNTIME, cpu=TARGET).value
    assert runtime > 0
    with TIMER_WAYS[way](fresh_vm, tmp_path) as moved:
        probe = Probe(moved.guest)
        assert probe.rdmsr(Msr.APIC_ASSIST_PAGE, cpu=TARGET).value == ASSIST_PAGE
        assert probe.rdmsr(Msr.TPR, cpu=TARGET).value == GUEST_TPR
        # The VP's runtime goes on from where it was, in a new QEMU too
        after = probe.rdmsr(Msr.VP_RUNTIME, cpu=TARGET).value
        assert after >= runtime
        busy(moved, TARGET)
        assert probe.rdmsr(Msr.VP_RUNTIME, cpu=TARGET).value > after
        assert not probe.rdmsr(Msr.RESET, cpu=TARGET).gp
        assert not probe.wrmsr(Msr.TPR, 0, cpu=TARGET).gp
