"""HvCallSignalEvent (0x005D) through event ports, row by row of
orchestrator/contract.toml (E1..E7, and C1..C3 as they apply to this call), from
inside a guest (the probe) and from the host (SIEF pages and the port table
over QMP).

Ports and connections are made by the host (x-hv-port-*), or by the guest
through hyperv-testdev. Every error case asserts its status and that nothing
changed on either vCPU: SIEF slot (guest and host view) and interrupts.
Every success asserts the bit base + FlagNumber on the port's target VP in
both views, exactly one interrupt there on a newly set flag, none elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pytest

from orchestrator.command import HYPERV_CPU
from orchestrator.contract import HvStatus, load, ordered_pairs, row
from orchestrator.error_case import ErrorCase, State, msr_set, unchanged
from orchestrator.hvdefs import PRIVILEGE_SIGNAL_EVENTS, SINT_MASKED, Msr
from orchestrator.polling import eventually
from orchestrator.ports import HostPorts, Port
from orchestrator.probe import HypercallArgs, HypercallResult, Probe
from orchestrator.qmp import QmpCommandError
from orchestrator.sief_watch import SiefWatch, Snapshot
from orchestrator.signal_event import CALL_CODE, event_call
from orchestrator.synic_pages import slot_flags
from orchestrator.testdev import HypervTestDev
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

TARGET, OTHER, SINT, VECTOR = 1, 0, 2, 0xE2
CPUS = (TARGET, OTHER)  # the order of Snapshot's tuples
CONN = 0x20
PORT = Port(port_id=0x10, vp=TARGET, sint=SINT, base_flag=100, flag_count=8)
DEVICE_CONN = 0x21  # < 256: hyperv-testdev's byte; it sets flag DEVICE_CONN
ROWS = load()


def status(row_id: str) -> HvStatus:
    return row(row_id, ROWS).status


@dataclass(frozen=True)
class Env:
    vm: Vm
    watch: SiefWatch
    testdev: HypervTestDev

    @property
    def probe(self) -> Probe:
        return self.watch.probe

    def signal(self, args: HypercallArgs) -> HypercallResult:
        result = self.probe.hypercall_with(args)
        assert not result.ud and result.reps_completed == 0, result
        return result


@pytest.fixture(scope="module")
def env(hv_vm: Vm) -> Iterator[Env]:
    probe = Probe(hv_vm.guest)
    watch = SiefWatch(hv_vm, probe, SINT, VECTOR, cpus=CPUS)
    for cpu in CPUS:
        watch.setup(cpu)
    yield Env(hv_vm, watch, HypervTestDev(probe))
    watch.teardown()
    HostPorts(hv_vm.qmp).clear()


@pytest.fixture
def clean(env: Env) -> Iterator[Env]:
    for cpu in CPUS:
        env.watch.clear(cpu)
    yield env
    HostPorts(env.vm.qmp).clear()


def flags_on(env: Env, cpu: int) -> frozenset[int]:
    """The flags in SINT's slot on `cpu`, guest view, checked against the host's."""
    guest_view = slot_flags(env.probe.sief(cpu, SINT))
    assert env.watch.host_page(cpu)[SINT] == guest_view, "guest and host disagree"
    return guest_view


def irqs_plus(before: Snapshot, cpu: int) -> tuple[int, ...]:
    """`before`'s interrupt counts with one more on `cpu`."""
    return tuple(n + (c == cpu) for c, n in zip(CPUS, before.irqs, strict=True))


# --- error rows: (row, label, what to arrange first, the call) ---

Arrange = State[Env]


def connected(port: Port = PORT, connection: int = CONN) -> Arrange:
    @contextmanager
    def arrange(env: Env) -> Iterator[None]:
        HostPorts(env.vm.qmp).create(port)
        HostPorts(env.vm.qmp).connect(connection, port.port_id)
        yield

    return arrange


def then(first: Arrange, step: Callable[[Env], None]) -> Arrange:
    @contextmanager
    def arrange(env: Env) -> Iterator[None]:
        with first(env):
            step(env)
            yield

    return arrange


nothing: Arrange = unchanged


def target_msr(msr: int, value: int) -> Arrange:
    """`msr` of the target VP set to `value`, for around the call alone: the
    snapshots on either side need the SynIC as set up."""
    on_probe = msr_set(msr, value, TARGET)
    return lambda env: on_probe(env.probe)


@contextmanager
def device_connection(env: Env) -> Iterator[None]:
    env.testdev.evt_conn_create(TARGET, SINT, DEVICE_CONN)
    try:
        yield
    finally:
        env.testdev.evt_conn_destroy(DEVICE_CONN)


Case = ErrorCase[Env]

ERROR_CASES: list[Case] = [
    Case(
        "C1",
        "reserved-control-bit-27",
        event_call(CONN, control=CALL_CODE | 1 << 27),
        arrange=connected(),
    ),
    Case("C1", "rep-count", event_call(CONN, control=CALL_CODE | 1 << 32), arrange=connected()),
    *[
        Case("C3", f"input-misaligned-{n}", event_call(CONN, in_offset=n), arrange=connected())
        for n in (1, 4, 7)
    ],
    Case("C3", "input-in-mmio", event_call(CONN, in_gpa=0xFEC00000), arrange=connected()),
    Case("C3", "input-beyond-ram", event_call(CONN, in_gpa=0x1000_0000_0000), arrange=connected()),
    *[
        Case(row_id, f"{label}-{form}", args, arrange=connected())
        for form, fast in (("memory", False), ("fast", True))
        for row_id, label, args in (
            ("E1", "connection-bit-24", event_call(CONN | 1 << 24, fast=fast)),
            ("E1", "connection-bit-31", event_call(CONN | 1 << 31, fast=fast)),
            ("E1", "rsvdz-bit-0", event_call(CONN, fast=fast, reserved=1)),
            ("E1", "rsvdz-bit-15", event_call(CONN, 1, fast=fast, reserved=0x8000)),
        )
    ],
    Case("E2", "never-connected", event_call(0x77)),
    Case("E2", "port-id-is-no-connection", event_call(PORT.port_id), arrange=connected()),
    Case(
        "E2",
        "disconnected",
        event_call(CONN),
        arrange=then(connected(), lambda env: HostPorts(env.vm.qmp).disconnect(CONN)),
    ),
    Case(
        "E3",
        "port-deleted",
        event_call(CONN),
        arrange=then(connected(), lambda env: HostPorts(env.vm.qmp).delete(PORT.port_id)),
    ),
    Case("E3", "message-port", event_call(CONN), arrange=connected(replace(PORT, type="message"))),
    Case("E3", "monitor-port", event_call(CONN), arrange=connected(replace(PORT, type="monitor"))),
    Case("E4", "flag-count", event_call(CONN, PORT.flag_count), arrange=connected()),
    Case("E4", "flag-65535", event_call(CONN, 0xFFFF), arrange=connected()),
    Case(
        "E4", "flag-count-fast", event_call(CONN, PORT.flag_count, fast=True), arrange=connected()
    ),
    Case(
        "E4", "count-1-flag-1", event_call(CONN, 1), arrange=connected(replace(PORT, flag_count=1))
    ),
    Case("E4", "device-owned-flag-1", event_call(DEVICE_CONN, 1), arrange=device_connection),
    Case("E5", "vp-2", event_call(CONN), arrange=connected(replace(PORT, vp=2))),
    Case("E5", "vp-any", event_call(CONN), arrange=connected(replace(PORT, vp=0xFFFFFFFF))),
    Case(
        "E6",
        "scontrol-disabled",
        event_call(CONN),
        target_msr(Msr.SCONTROL, 0),
        arrange=connected(),
    ),
    Case("E6", "siefp-disabled", event_call(CONN), target_msr(Msr.SIEFP, 0), arrange=connected()),
    Case(
        "E6",
        "sint-masked",
        event_call(CONN),
        target_msr(Msr.SINT0 + SINT, SINT_MASKED | VECTOR),
        arrange=connected(),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in ERROR_CASES])
def test_error_row(clean: Env, case: Case) -> None:
    with case.arrange(clean):
        before = clean.watch.snapshot()
        with case.around(clean):
            result = clean.signal(case.args)
        assert result.status == status(case.row_id), f"{case.row_id}: got {result.status!r}"
        assert clean.watch.snapshot() == before, f"{case.row_id} changed a SIEF slot or interrupted"


def test_every_signal_event_row_has_cases_here() -> None:
    covered = {case.row_id for case in ERROR_CASES} | {"C2", "E7"}
    wanted = {r.id for r in ROWS if r.call == "SignalEvent" and r.has_guest_test}
    assert wanted == {f"E{n}" for n in range(1, 8)}
    assert wanted <= covered


# --- two rules broken at once: the row checked first decides ---


@dataclass(frozen=True)
class Fault:
    """One way to break one row's rule, made to combine with another."""

    row_id: str
    control_bits: int = 0
    in_offset: int | None = None
    connection_bits: int = 0  # OR'ed into the connection id
    unconnected: bool = False  # signal an id no connection has
    flag_beyond_count: bool = False
    port: dict[str, object] = field(default_factory=dict)  # Port changes
    around: Arrange = nothing


# One fault per row a call can break here (C2 needs a VM of its own, C4 is
# for calls with output), in the contract's order.
FAULTS = (
    Fault("C1", control_bits=1 << 32),
    Fault("C3", in_offset=4),
    Fault("E1", connection_bits=1 << 24),
    Fault("E2", unconnected=True),
    Fault("E3", port={"type": "message"}),
    Fault("E4", flag_beyond_count=True),
    Fault("E5", port={"vp": 2}),
    Fault("E6", around=target_msr(Msr.SINT0 + SINT, SINT_MASKED | VECTOR)),
)
# E6 is the state of the port's VP, which E5 makes one that does not exist.
INCOMPATIBLE = {("E5", "E6")}
FAULT_PAIRS = ordered_pairs(FAULTS, INCOMPATIBLE, ROWS)


def both(first: Fault, second: Fault) -> tuple[Arrange, HypercallArgs, Arrange]:
    port = replace(PORT, **first.port, **second.port)  # type: ignore[arg-type]
    connection = 0x77 if first.unconnected or second.unconnected else CONN
    connection |= first.connection_bits | second.connection_bits
    flag = port.flag_count if first.flag_beyond_count or second.flag_beyond_count else 0
    overrides: dict[str, object] = {"control": CALL_CODE | first.control_bits | second.control_bits}
    in_offset = first.in_offset if first.in_offset is not None else second.in_offset
    if in_offset is not None:
        overrides["in_offset"] = in_offset

    @contextmanager
    def around(env: Env) -> Iterator[None]:
        with first.around(env), second.around(env):
            yield

    return connected(port), event_call(connection, flag, **overrides), around


@pytest.mark.parametrize(
    ("first", "second"),
    [pytest.param(a, b, id=f"{a.row_id}+{b.row_id}") for a, b in FAULT_PAIRS],
)
def test_two_broken_rules_answer_the_first(clean: Env, first: Fault, second: Fault) -> None:
    arrange, args, around = both(first, second)
    with arrange(clean):
        before = clean.watch.snapshot()
        with around(clean):
            result = clean.signal(args)
        assert result.status == status(first.row_id), (
            f"{first.row_id}+{second.row_id}: got {result.status!r}"
        )
        assert clean.watch.snapshot() == before, "an error changed a SIEF slot or interrupted"


# --- E7: success ---


def signalled(env: Env, args: HypercallArgs) -> None:
    assert env.signal(args).status == HvStatus.SUCCESS


SUCCESS_CASES = [
    pytest.param(Port(0x10, TARGET, SINT, 0, 1), 0, TARGET, False, id="base-0-count-1"),
    pytest.param(Port(0x10, TARGET, SINT, 100, 8), 0, TARGET, False, id="base-100-flag-0"),
    pytest.param(Port(0x10, TARGET, SINT, 100, 8), 7, TARGET, False, id="base-100-flag-7"),
    pytest.param(Port(0x10, TARGET, SINT, 100, 8), 5, TARGET, True, id="base-100-flag-5-fast"),
    pytest.param(Port(0x10, TARGET, SINT, 2047, 1), 0, TARGET, False, id="base-2047"),
    pytest.param(Port(0x10, TARGET, SINT, 0, 2048), 2047, TARGET, False, id="count-2048"),
    pytest.param(Port(0x10, TARGET, SINT, 5, 2043), 2042, TARGET, True, id="count-2048-minus-base"),
    pytest.param(Port(0x10, TARGET, SINT, 64, 8), 3, OTHER, False, id="cross-vcpu-to-1"),
    pytest.param(Port(0x10, OTHER, SINT, 300, 4), 1, TARGET, True, id="cross-vcpu-to-0"),
]


@pytest.mark.contract_rows("E7")
@pytest.mark.parametrize(("port", "flag", "caller", "fast"), SUCCESS_CASES)
def test_flag_base_plus_number_is_set_once_with_one_interrupt(
    clean: Env, port: Port, flag: int, caller: int, fast: bool
) -> None:
    HostPorts(clean.vm.qmp).create(port)
    HostPorts(clean.vm.qmp).connect(CONN, port.port_id)
    others = {cpu: flags_on(clean, cpu) for cpu in CPUS if cpu != port.vp}
    before = clean.watch.snapshot()

    signalled(clean, event_call(CONN, flag, fast=fast, cpu=caller))
    assert flags_on(clean, port.vp) == {port.bit(flag)}
    assert {cpu: flags_on(clean, cpu) for cpu in others} == others
    after = clean.watch.snapshot()
    assert after.irqs == irqs_plus(before, port.vp)
    assert after.other_irqs == before.other_irqs, "an interrupt on another SINT's vector"
    assert after.host_pages == after.guest_pages

    # Already set: success, no second interrupt, nothing else changed.
    signalled(clean, event_call(CONN, flag, fast=fast, cpu=caller))
    assert clean.watch.snapshot() == after


RACE_ROUNDS = 200


@pytest.mark.parametrize("vp", [TARGET, OTHER], ids=["to-vp1", "to-vp0"])
def test_racing_signals_on_one_port_flag_set_it_once_per_round(clean: Env, vp: int) -> None:
    """Both vCPUs signal the same connection at once (a barrier in the probe
    module releases them), one of them the port's own VP. SignalEvent has no
    output, so the count is of effects: the flag set after every round, and
    exactly one interrupt per round, none lost and none doubled."""
    port = HostPorts(clean.vm.qmp).create(Port(0x13, vp, SINT, base_flag=40, flag_count=4))
    HostPorts(clean.vm.qmp).connect(CONN, port.port_id)
    result = clean.probe.race(
        event_call(CONN, 2), cpus=CPUS, target=vp, sint=SINT, flag=port.bit(2),
        vector=VECTOR, rounds=RACE_ROUNDS,
    )  # fmt: skip
    assert (result.errors, result.first_error) == (0, 0), result
    assert result.calls == 2 * RACE_ROUNDS
    assert (result.irqs, result.irq_timeouts) == (RACE_ROUNDS, 0), result
    assert result.flag_missing == 0, result
    assert flags_on(clean, vp) == set()


def test_racing_port_signal_leaves_the_neighbour_bit_alone(clean: Env) -> None:
    """SignalEvent through a port sets its flag as SignalEventDirect does:
    atomically, so the target's own set-and-clear of the neighbouring bit,
    in the same word and at the same time, is never undone."""
    port = HostPorts(clean.vm.qmp).create(Port(0x13, TARGET, SINT, base_flag=40, flag_count=4))
    HostPorts(clean.vm.qmp).connect(CONN, port.port_id)
    result = clean.probe.race(
        event_call(CONN, 2), cpus=(OTHER,), target=TARGET, sint=SINT, flag=port.bit(2),
        vector=VECTOR, rounds=RACE_ROUNDS, neighbour=True,
    )  # fmt: skip
    assert (result.errors, result.first_error) == (0, 0), result
    assert result.neighbour_toggles >= RACE_ROUNDS, "the target toggled in every round"
    assert result.neighbour_lost == 0, result
    assert (result.irqs, result.irq_timeouts, result.flag_missing) == (RACE_ROUNDS, 0, 0), result
    assert flags_on(clean, TARGET) == set()


def test_polling_sint_gets_the_flag_without_an_interrupt(clean: Env) -> None:
    HostPorts(clean.vm.qmp).create(PORT)
    HostPorts(clean.vm.qmp).connect(CONN, PORT.port_id)
    clean.probe.sint(TARGET, SINT, VECTOR, polling=True)
    try:
        before = clean.watch.snapshot()
        signalled(clean, event_call(CONN, 2))
        assert flags_on(clean, TARGET) == {PORT.bit(2)}
        assert clean.watch.snapshot().irqs == before.irqs
    finally:
        clean.probe.sint(TARGET, SINT, VECTOR)


def test_repointed_connection_signals_its_new_port(clean: Env) -> None:
    first = HostPorts(clean.vm.qmp).create(Port(0x11, TARGET, SINT, base_flag=10, flag_count=1))
    second = HostPorts(clean.vm.qmp).create(Port(0x12, OTHER, SINT, base_flag=20, flag_count=4))
    HostPorts(clean.vm.qmp).connect(CONN, first.port_id)
    assert clean.signal(event_call(CONN, 3)).status == status("E4")  # first has one flag

    signalled(clean, event_call(CONN, 0))
    assert flags_on(clean, TARGET) == {10}

    HostPorts(clean.vm.qmp).connect(CONN, second.port_id)
    assert HostPorts(clean.vm.qmp).table().connections[CONN] == second.port_id
    before = clean.watch.snapshot()
    signalled(clean, event_call(CONN, 3))
    assert flags_on(clean, OTHER) == {23}
    assert flags_on(clean, TARGET) == {10}, "the old port's VP saw nothing more"
    assert clean.watch.snapshot().irqs == irqs_plus(before, OTHER)


def test_port_deleted_while_connections_remain(clean: Env) -> None:
    ports = HostPorts(clean.vm.qmp)
    ports.create(PORT)
    for connection in (CONN, CONN + 1):
        ports.connect(connection, PORT.port_id)
    ports.delete(PORT.port_id)
    table = ports.table()
    assert PORT.port_id not in table.ports
    assert table.connections[CONN] == table.connections[CONN + 1] == PORT.port_id

    before = clean.watch.snapshot()
    for connection in (CONN, CONN + 1):
        assert clean.signal(event_call(connection)).status == status("E3")
    assert clean.watch.snapshot() == before

    # A port created again under that id serves the remaining connections.
    ports.create(replace(PORT, base_flag=500))
    signalled(clean, event_call(CONN, 1))
    signalled(clean, event_call(CONN + 1, 2))
    assert flags_on(clean, TARGET) == {501, 502}


def test_device_owned_connection_is_still_notified(clean: Env) -> None:
    with device_connection(clean):
        assert HostPorts(clean.vm.qmp).table().connections[DEVICE_CONN] is None
        HostPorts(clean.vm.qmp).create(PORT)
        with pytest.raises(QmpCommandError, match="owned by a device"):
            HostPorts(clean.vm.qmp).connect(DEVICE_CONN, PORT.port_id)
        before = clean.watch.snapshot()
        signalled(clean, event_call(DEVICE_CONN, 0))
        # The device sets the flag from QEMU's main loop, after the call.
        eventually(lambda: DEVICE_CONN in flags_on(clean, TARGET), "the device's flag")
        assert flags_on(clean, TARGET) == {DEVICE_CONN}
        eventually(
            lambda: clean.watch.snapshot().irqs == irqs_plus(before, TARGET), "one interrupt"
        )
    assert DEVICE_CONN not in HostPorts(clean.vm.qmp).table().connections


def test_device_connection_with_several_flags_is_told_the_flag_number(clean: Env) -> None:
    connection, count = 0x22, 4
    clean.testdev.evt_conn_create_flags(TARGET, SINT, connection, count)
    try:
        assert HostPorts(clean.vm.qmp).table().connections[connection] is None
        before = clean.watch.snapshot()
        signalled(clean, event_call(connection, 3))
        # The device sets flag connection + FlagNumber, in the calling vCPU's thread.
        assert flags_on(clean, TARGET) == {connection + 3}
        assert clean.watch.snapshot().irqs == irqs_plus(before, TARGET)

        after = clean.watch.snapshot()
        assert clean.signal(event_call(connection, count, fast=True)).status == status("E4")
        assert clean.watch.snapshot() == after
    finally:
        clean.testdev.evt_conn_destroy(connection)
    assert clean.signal(event_call(connection)).status == status("E2")


def test_guest_made_port_through_hyperv_testdev(clean: Env) -> None:
    port = Port(0x30, TARGET, SINT, base_flag=40, flag_count=4)
    connection = 0x31
    clean.testdev.port_create(port)
    clean.testdev.conn_set_port(connection, port.port_id)
    table = HostPorts(clean.vm.qmp).table()
    assert table.ports[port.port_id] == port
    assert table.connections[connection] == port.port_id

    before = clean.watch.snapshot()
    signalled(clean, event_call(connection, 3))
    assert flags_on(clean, TARGET) == {43}
    assert clean.watch.snapshot().irqs == irqs_plus(before, TARGET)
    assert clean.signal(event_call(connection, 4)).status == status("E4")

    clean.testdev.port_delete(port.port_id)
    assert clean.signal(event_call(connection, 0)).status == status("E3")
    clean.testdev.conn_delete(connection)
    assert clean.signal(event_call(connection, 0)).status == status("E2")
    assert HostPorts(clean.vm.qmp).table().connections.get(connection) is None


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("x-hv-port-create", {"port-id": 1, "vp-index": 0, "sint": 16}, "SINT 16"),
        ("x-hv-port-create", {"port-id": 1 << 24, "vp-index": 0, "sint": 0}, "24 bits"),
        (
            "x-hv-port-create",
            {"port-id": 1, "vp-index": 0, "sint": 0, "base-flag": 2000, "flag-count": 49},
            "2048",
        ),
        ("x-hv-port-create", {"port-id": 1, "vp-index": 0, "sint": 0, "flag-count": 0}, "range"),
        ("x-hv-port-create", {"port-id": PORT.port_id, "vp-index": 0, "sint": 0}, "exists"),
        ("x-hv-port-delete", {"port-id": 0x99}, "no port"),
        ("x-hv-connection-set", {"connection-id": 1, "port-id": 0x99}, "no port"),
        ("x-hv-connection-set", {"connection-id": 1 << 24, "port-id": PORT.port_id}, "24 bits"),
        ("x-hv-connection-delete", {"connection-id": 0x99}, "no connection"),
    ],
    ids=[
        "sint-16",
        "port-id-25-bits",
        "flags-past-2048",
        "flag-count-0",
        "duplicate-port",
        "delete-unknown-port",
        "connect-unknown-port",
        "connection-id-25-bits",
        "delete-unknown-connection",
    ],
)
def test_bad_port_commands_are_qmp_errors(
    clean: Env, command: str, args: dict[str, object], message: str
) -> None:
    HostPorts(clean.vm.qmp).create(PORT)
    before = HostPorts(clean.vm.qmp).table()
    with pytest.raises(QmpCommandError, match=message):
        clean.vm.qmp.execute(command, args)
    assert HostPorts(clean.vm.qmp).table() == before
    assert clean.vm.qmp.status() == "running"


@pytest.mark.kvm_leg  # C2 under KVM: the privilege comes from the guest's CPUID
@pytest.mark.hyperv
@pytest.mark.contract_rows("C2")
@pytest.mark.vm_options(cpu=HYPERV_CPU + ",x-hv-signal-events=off")
def test_c2_signal_event_without_the_privilege(fresh_vm: Vm) -> None:
    probe = Probe(fresh_vm.guest)
    assert not probe.cpuid(0x40000003).ebx & PRIVILEGE_SIGNAL_EVENTS
    watch = SiefWatch(fresh_vm, probe, SINT, VECTOR, cpus=(TARGET,))
    watch.setup(TARGET)
    HostPorts(fresh_vm.qmp).create(PORT)
    HostPorts(fresh_vm.qmp).connect(CONN, PORT.port_id)

    before = watch.snapshot()
    for fast in (False, True):
        assert probe.hypercall_with(event_call(CONN, 1, fast=fast)).status == status("C2")
    assert watch.snapshot() == before
    # C1 comes first.
    args = event_call(CONN, control=CALL_CODE | 1 << 27)
    assert probe.hypercall_with(args).status == status("C1")


@pytest.mark.hyperv
def test_ports_survive_a_reset(fresh_vm: Vm) -> None:
    HostPorts(fresh_vm.qmp).create(PORT)
    HostPorts(fresh_vm.qmp).connect(CONN, PORT.port_id)
    before = HostPorts(fresh_vm.qmp).table()
    fresh_vm.qmp.reset()
    assert HostPorts(fresh_vm.qmp).table() == before
