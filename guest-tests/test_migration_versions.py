"""An upgrade is a migration: from the QEMU users run today (the same base
without the series, `make qemu-stock`) to ours, and back.

Under TCG, with the command line existing users have (hv-* flags, no
x-hv-tcg=on: Hyper-V under TCG stays off, as before the series), on the base's
newest q35 machine type and an older one, live and through a file: after each
move the guest runs, its clock goes on, a timer-driven sleep ends, and a
command over SSH answers.

Under KVM (the KVM leg), a guest using its SynIC moves both ways; a move to
the stock QEMU of a guest with an event port is refused, cleanly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import guest_timers
from orchestrator.command import HYPERV_TESTDEV, VmOptions
from orchestrator.contract import HvStatus
from orchestrator.errors import HarnessError
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
from orchestrator.ports import HostPorts, Port
from orchestrator.post_message import message_call
from orchestrator.probe import Probe
from orchestrator.signal_event import event_call
from orchestrator.synic_pages import SimMessage, slot_flags
from orchestrator.testdev import HypervTestDev
from orchestrator.vm import Vm

pytestmark = [
    pytest.mark.vm,
    pytest.mark.accel("tcg", reason="the QEMUs to move between run on this host under TCG"),
]

USERS_CPU = "max,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-stimer,hv-vapic"
MACHINES = ("pc-q35-10.2", "pc-q35-9.2")


def uptime(vm: Vm) -> float:
    return float(vm.guest.run("cat /proc/uptime", check=True).out.split()[0])


def assert_alive(vm: Vm, uptime_before: float) -> float:
    """The guest runs on: QMP says so, SSH answers, a sleep (a timer) ends and
    the guest's clock has moved on from before the move."""
    assert vm.qmp.status() == "running"
    assert vm.guest.run("echo moved", timeout=60, check=True).out.strip() == "moved"
    started = time.monotonic()
    assert vm.guest.run("sleep 1", timeout=60).rc == 0
    assert time.monotonic() - started >= 1.0
    now = uptime(vm)
    assert now >= uptime_before + 1.0, (uptime_before, now)
    return now


@contextmanager
def started(log_dir: Path, options: VmOptions, stock: bool, incoming: bool) -> Iterator[Vm]:
    name = "stock" if stock else "patched"
    with Vm(log_dir / name, options, name=name, incoming=incoming, stock_qemu=stock) as vm:
        yield vm


@contextmanager
def moved(source: Vm, tmp_path: Path, way: str, to_stock: bool, step: int) -> Iterator[Vm]:
    """`source`'s guest in a QEMU of the other kind; `source` is stopped."""
    log_dir = tmp_path / f"step{step}"
    state = tmp_path / f"step{step}.state"
    if way == "file":
        save_to_file(source, state)
        source.stop()
    with started(log_dir, source.options, to_stock, incoming=True) as destination:
        if way == "live":
            migrate_live(source, destination)
            source.stop()
        else:
            load_from_file(destination, state)
        yield destination


@pytest.mark.parametrize("way", ["live", "file"])
@pytest.mark.parametrize("machine", MACHINES)
def test_stock_to_patched_and_back(tmp_path: Path, machine: str, way: str) -> None:
    options = VmOptions(cpu=USERS_CPU, machine=machine)
    with started(tmp_path / "step0", options, stock=True, incoming=False) as stock:
        assert stock.qemu is not None and stock.qemu.series_length == 0
        before = uptime(stock)
        with moved(stock, tmp_path, way, to_stock=False, step=1) as patched:
            assert patched.qemu is not None and patched.qemu.series_length > 0
            before = assert_alive(patched, before)
            with moved(patched, tmp_path, way, to_stock=True, step=2) as back:
                assert_alive(back, before)


# --- under KVM, where every production user runs ------------------------------
#
# The series adds state there: the SINTs QEMU tracks through the MSR filter,
# the per-SINT event routes, and the hyperv-ports section. A guest using its
# SynIC moves from the stock QEMU to ours and from ours to the stock one, in
# one KVM host under nested KVM (stock kernel: the KVM leg). hv-stimer-direct
# beside the users' flags: Linux then ticks on a synthetic timer.

KVM_USERS_CPU = "max,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-stimer,hv-stimer-direct,hv-vapic"
CALLER, TARGET = 0, 1
# hyperv-testdev's event connection sets the flag numbered as the connection
EVT_SINT, EVT_VECTOR, EVT_CONN = 2, 0xE2, 9
MSG_SINT, MSG_VECTOR, MSG_CONN, MSG_TYPE = 3, 0xE3, 7, 0x41
MSG_PAYLOAD = b"carried across"
TIMER, TIMER_VECTOR = 1, 0xE7
PERIOD = 10 * REF_TIME_HZ // 1000  # 10 ms
TIMER_CONFIG = STIMER_ENABLE | STIMER_PERIODIC | STIMER_DIRECT | stimer_vector(TIMER_VECTOR)
# What only our QEMU can hold: a port, migrated in its own section
PORT = Port(port_id=0x10, vp=TARGET, sint=EVT_SINT, base_flag=100, flag_count=8)


@dataclass(frozen=True)
class SynicInUse:
    sints: dict[int, int]
    flags: frozenset[int]
    message: SimMessage


def use_the_synic(vm: Vm) -> SynicInUse:
    """A SINT programmed, a flag set by SignalEvent through hyperv-testdev's
    connection (with its interrupt), a message left pending in the SIM, and a
    periodic timer firing: what a Hyper-V guest has going when it moves."""
    probe = Probe(vm.guest)
    probe.synic_setup(TARGET)
    probe.sint(TARGET, EVT_SINT, EVT_VECTOR)
    device = HypervTestDev(probe)
    device.evt_conn_create(TARGET, EVT_SINT, EVT_CONN)
    before = probe.irqs(TARGET, EVT_VECTOR)
    assert probe.hypercall_with(event_call(EVT_CONN, cpu=CALLER)).status == HvStatus.SUCCESS
    eventually(lambda: probe.irqs(TARGET, EVT_VECTOR) == before + 1, "SignalEvent's interrupt")
    assert slot_flags(probe.sief(TARGET, EVT_SINT)) == {EVT_CONN}

    probe.sint(TARGET, MSG_SINT, MSG_VECTOR)
    device.msg_conn_create(TARGET, MSG_SINT, MSG_CONN)
    posted = probe.hypercall_with(message_call(MSG_CONN, MSG_TYPE, MSG_PAYLOAD, cpu=CALLER))
    assert posted.status == HvStatus.SUCCESS
    message = eventually(
        lambda: (m := SimMessage.from_slot(probe.sim(TARGET, MSG_SINT))).message_type and m,
        "the message in the SIM slot",
    )
    assert message.payload[: len(MSG_PAYLOAD)] == MSG_PAYLOAD

    assert not probe.wrmsr(stimer_count_msr(TIMER), PERIOD, cpu=TARGET).gp
    assert not probe.wrmsr(stimer_config_msr(TIMER), TIMER_CONFIG, cpu=TARGET).gp
    eventually(lambda: probe.irqs(TARGET, TIMER_VECTOR) > 5, "the periodic timer")
    sints = {s: probe.rdmsr(Msr.SINT0 + s, cpu=TARGET).value for s in (EVT_SINT, MSG_SINT)}
    return SynicInUse(sints, frozenset({EVT_CONN}), message)


def assert_still_in_use(vm: Vm, saved: SynicInUse, moved: bool) -> None:
    """`moved`: `vm` is the destination QEMU, not the source it was."""
    probe = Probe(vm.guest)
    assert vm.qmp.status() == "running"
    assert {s: probe.rdmsr(Msr.SINT0 + s, cpu=TARGET).value for s in saved.sints} == saved.sints
    assert slot_flags(probe.sief(TARGET, EVT_SINT)) == saved.flags
    assert SimMessage.from_slot(probe.sim(TARGET, MSG_SINT)) == saved.message
    # Timers: the probe's, and Linux's clockevent (a sleep ends on it)
    assert probe.rdmsr(stimer_config_msr(TIMER), cpu=TARGET).value == TIMER_CONFIG
    fired = probe.irqs(TARGET, TIMER_VECTOR)
    eventually(lambda: probe.irqs(TARGET, TIMER_VECTOR) > fired + 10, "the periodic timer")
    ticks = guest_timers.linux_stimer_interrupts(vm.guest, vm.options.cpus)
    assert vm.guest.run("sleep 1", timeout=60).rc == 0
    eventually(
        lambda: guest_timers.linux_stimer_interrupts(vm.guest, vm.options.cpus) > ticks + 10,
        "Linux's timer ticks",
    )
    # SignalEvent through the device's connection sets the flag and interrupts.
    # hyperv-testdev keeps no migration state, in either QEMU: the guest makes
    # its connection again on the destination, as a device's own load would.
    if moved:
        HypervTestDev(probe).evt_conn_create(TARGET, EVT_SINT, EVT_CONN)
    probe.sief(TARGET, EVT_SINT, clear=True)
    before = probe.irqs(TARGET, EVT_VECTOR)
    assert probe.hypercall_with(event_call(EVT_CONN, cpu=CALLER)).status == HvStatus.SUCCESS
    eventually(lambda: probe.irqs(TARGET, EVT_VECTOR) == before + 1, "SignalEvent's interrupt")
    assert slot_flags(probe.sief(TARGET, EVT_SINT)) == saved.flags


@contextmanager
def destination_beside(source: Vm, log_dir: Path, stock: bool) -> Iterator[Vm]:
    """A QEMU waiting for `source`'s state: in its KVM host under nested KVM."""
    name = "stock" if stock else "patched"
    with Vm(
        log_dir,
        source.options,
        accel=source.accel,
        name=f"{name}-dst",
        incoming=True,
        stock_qemu=stock,
        cohost=source,
    ) as destination:
        yield destination


KVM_MOVES = {
    "stock-to-patched": (True, False, "pc-q35-9.2"),
    "patched-to-stock": (False, True, "pc-q35-10.2"),
}


@pytest.mark.kvm_leg
@pytest.mark.accel("kvm", "nested-kvm", reason="the state the series adds under KVM")
@pytest.mark.parametrize("move", KVM_MOVES)
def test_a_guest_using_its_synic_moves_across_versions_under_kvm(tmp_path: Path, move: str) -> None:
    from_stock, to_stock, machine = KVM_MOVES[move]
    options = VmOptions(cpu=KVM_USERS_CPU, machine=machine, extra_args=HYPERV_TESTDEV)
    with Vm(
        tmp_path / "source", options, name="source", stock_qemu=from_stock, peer_stock_qemu=to_stock
    ) as source:
        saved = use_the_synic(source)
        if to_stock:
            # A port only our QEMU can hold: the stock one refuses the stream,
            # with its own message, and the source runs on
            HostPorts(source.qmp).create(PORT)
            with (
                destination_beside(source, tmp_path / "refusing", stock=True) as refusing,
                pytest.raises(HarnessError, match="hyperv-ports") as refused,
            ):
                migrate_live(source, refusing)
            assert "\n" not in str(refused.value)
            assert source.qmp.status() == "running"
            assert_still_in_use(source, saved, moved=False)
            HostPorts(source.qmp).clear()
        with destination_beside(source, tmp_path / "destination", to_stock) as destination:
            migrate_live(source, destination)
            assert source.qmp.status() == "postmigrate"
            assert_still_in_use(destination, saved, moved=True)
