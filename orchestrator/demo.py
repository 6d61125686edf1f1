"""The demonstration: HvCallSignalEventDirect from vCPU 0 to vCPU 1, then
HvCallSignalEvent through an event port with a non-zero base flag, each step
shown from inside the guest and from the host, then the contract's error rows.

Works against any QEMU: without the series, the calls show what that QEMU
does instead (#UD under TCG, INVALID_HYPERCALL_CODE from a stock KVM)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

from orchestrator.contract import HvStatus, Row, load
from orchestrator.error_case import ErrorCase, msr_set
from orchestrator.expect import expected_direct_status
from orchestrator.hvdefs import FAST, SINT_MASKED, Call, Msr
from orchestrator.ports import HostPorts, Port
from orchestrator.probe import HypercallArgs, HypercallResult, Probe
from orchestrator.qmp import QmpCommandError
from orchestrator.signal_direct import direct_call, direct_input, newly_signaled
from orchestrator.signal_event import event_call
from orchestrator.synic import HostSynic
from orchestrator.synic_pages import slot_flags
from orchestrator.synic_setup import synic_on
from orchestrator.vm import Vm

CALLER, TARGET, SINT, VECTOR, FLAG = 0, 1, 2, 0xE2, 42
# SignalEvent: connection CONNECTION -> PORT, whose flag EVENT_FLAG is SIEF bit 105
PORT = Port(port_id=0x10, vp=TARGET, sint=SINT, base_flag=100, flag_count=8)
CONNECTION, EVENT_FLAG = 0x20, 5


def describe(result: HypercallResult) -> str:
    if result.ud:
        return "#UD (no Hyper-V hypercalls)"
    if result.status is None:
        return f"trap {result.trap}"
    try:
        return HvStatus(result.status).name
    except ValueError:
        return f"status {result.status:#x}"


@dataclass(frozen=True)
class Step:
    label: str
    status: str
    newly: str
    guest_flag: str
    host_flag: str
    interrupts: int


def sint_masked(probe: Probe) -> AbstractContextManager[None]:
    return msr_set(Msr.SINT0 + SINT, SINT_MASKED | VECTOR, TARGET)(probe)


ERROR_CASES: tuple[ErrorCase[Probe], ...] = (
    ErrorCase(
        "C1",
        "rep count 1 on a simple call",
        direct_call(TARGET, SINT, FLAG, control=Call.SIGNAL_EVENT_DIRECT | 1 << 32),
    ),
    ErrorCase("C3", "input buffer misaligned by 4", direct_call(TARGET, SINT, FLAG, in_offset=4)),
    ErrorCase(
        "C4",
        "fast form",
        direct_call(TARGET, SINT, FLAG, control=Call.SIGNAL_EVENT_DIRECT | FAST, fast=True),
    ),
    ErrorCase(
        "D1",
        "TargetPartition 0",
        direct_call(TARGET, SINT, FLAG, input=direct_input(TARGET, SINT, FLAG, partition=0)),
    ),
    ErrorCase(
        "D2",
        "TargetVtl 1",
        direct_call(TARGET, SINT, FLAG, input=direct_input(TARGET, SINT, FLAG, vtl=1)),
    ),
    ErrorCase("D3", "TargetSint 16", direct_call(TARGET, 16, FLAG)),
    ErrorCase("D4", "FlagNumber 2048", direct_call(TARGET, SINT, 2048)),
    ErrorCase("D5", "TargetVp 7 (2 vCPUs)", direct_call(7, SINT, FLAG)),
    ErrorCase("D6", "target SINT masked", direct_call(TARGET, SINT, FLAG), sint_masked),
    ErrorCase("E1", "ConnectionId bit 24", event_call(CONNECTION | 1 << 24)),
    ErrorCase("E2", "ConnectionId 0x77 (none)", event_call(0x77)),
    ErrorCase(
        "E4",
        f"FlagNumber {PORT.flag_count} (count {PORT.flag_count})",
        event_call(CONNECTION, PORT.flag_count),
    ),
    ErrorCase("E6", "port's SINT masked", event_call(CONNECTION), sint_masked),
)


@dataclass(frozen=True)
class ErrorRowResult:
    row_id: str
    example: str
    contract: str  # the status the contract (or a stock KVM) gives
    got: str  # what this QEMU answered

    @property
    def ok(self) -> bool:
        return self.got == self.contract


@dataclass(frozen=True)
class PortStory:
    port: Port
    connection: int
    flag: int
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class DemoReport:
    """What the demonstration showed; `lines()` tells it."""

    sief_gpa: int | None
    direct: tuple[Step, ...]
    # SignalEvent through PORT; None with the reason where this QEMU has no ports
    port: PortStory | None
    no_ports: str | None
    errors: tuple[ErrorRowResult, ...]

    def lines(self) -> list[str]:
        sief = "none" if self.sief_gpa is None else f"{self.sief_gpa:#x}"
        lines = [
            f"SynIC on vCPU {TARGET}: SIEF page at {sief} (per x-query-synic), "
            f"SINT{SINT} -> vector {VECTOR:#x}",
            f"HvCallSignalEventDirect(partition SELF, VP {TARGET}, VTL 0, SINT {SINT}, "
            f"flag {FLAG}) from vCPU {CALLER}:",
            *_steps_table(self.direct),
        ]
        if self.port is not None:
            port, bit = self.port.port, self.port.port.bit(self.port.flag)
            lines += [
                "",
                f"Event port {port.port_id:#x}: VP {port.vp}, SINT {port.sint}, base flag "
                f"{port.base_flag}, {port.flag_count} flags; connection "
                f"{self.port.connection:#x} -> it (x-hv-port-create, x-hv-connection-set)",
                f"HvCallSignalEvent(connection {self.port.connection:#x}, flag {self.port.flag}) "
                f"from vCPU {CALLER} sets SIEF bit {port.base_flag} + {self.port.flag} = {bit}:",
                *_steps_table(self.port.steps),
            ]
        else:
            lines += ["", f"No event ports in this QEMU ({self.no_ports}): SignalEvent skipped."]
        lines += [
            "",
            "The contract's error rows (orchestrator/contract.toml), one example each:",
            *_table(
                ("row", "example", "contract", "this QEMU", ""),
                [
                    (e.row_id, e.example, e.contract, e.got, "ok" if e.ok else "DIFFERS")
                    for e in self.errors
                ],
            ),
        ]
        return lines


def _steps_table(steps: tuple[Step, ...]) -> list[str]:
    header = (
        "step",
        "status",
        "NewlySignaled",
        "flag (guest)",
        "flag (host, QMP)",
        f"interrupts on vCPU {TARGET}",
    )
    rows = [
        (s.label, s.status, s.newly, s.guest_flag, s.host_flag, f"+{s.interrupts}") for s in steps
    ]
    return _table(header, rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for line in [header, tuple("-" * w for w in widths), *rows]:
        cells = (str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


class Demo:
    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.probe = Probe(vm.guest)

    def views(self, bit: int) -> tuple[str, str, int]:
        """SIEF bit `bit` as the guest sees it, as the host finds it (x-query-synic
        and guest memory, without the guest's word), and the target's interrupts."""
        guest = bit in slot_flags(self.probe.sief(TARGET, SINT))
        host = bit in HostSynic(self.vm.qmp).sief(TARGET)[SINT]
        return (
            ("set" if guest else "clear"),
            ("set" if host else "clear"),
            self.probe.irqs(TARGET, VECTOR),
        )

    def step(self, label: str, args: HypercallArgs, bit: int = FLAG) -> Step:
        before = self.probe.irqs(TARGET, VECTOR)
        result = self.probe.hypercall_with(args)
        newly = newly_signaled(result) if args.out_len else None
        guest, host, after = self.views(bit)
        return Step(
            label,
            describe(result),
            "-" if newly is None else str(newly),
            guest,
            host,
            after - before,
        )

    def run(self) -> DemoReport:
        with synic_on(self.probe, TARGET, {SINT: VECTOR}):
            sief_gpa = HostSynic(self.vm.qmp).state()[TARGET].sief_gpa
            call = direct_call(TARGET, SINT, FLAG, cpu=CALLER)
            direct = [self.step("first call", call), self.step("second call (already set)", call)]
            self.probe.sief(TARGET, SINT, clear=True)
            direct.append(self.step("third call (guest cleared the flag)", call))
            ports = HostPorts(self.vm.qmp)
            try:
                ports.create(PORT)
                ports.connect(CONNECTION, PORT.port_id)
            except QmpCommandError as exc:
                port, no_ports = None, exc.desc
            else:
                no_ports = None
            try:
                if no_ports is None:
                    port = self.signal_event_through_the_port()
                errors = self.error_rows(load())
            finally:
                if no_ports is None:
                    ports.clear()
        return DemoReport(sief_gpa, tuple(direct), port, no_ports, errors)

    def signal_event_through_the_port(self) -> PortStory:
        bit = PORT.bit(EVENT_FLAG)
        signal = event_call(CONNECTION, EVENT_FLAG, cpu=CALLER)
        steps = (
            self.step("first signal", signal, bit),
            self.step("second signal (already set)", signal, bit),
        )
        self.probe.sief(TARGET, SINT, clear=True)
        return PortStory(PORT, CONNECTION, EVENT_FLAG, steps)

    def error_rows(self, contract: tuple[Row, ...]) -> tuple[ErrorRowResult, ...]:
        expected = {row.id: row for row in contract}
        results = []
        for case in ERROR_CASES:
            with case.around(self.probe):
                got = describe(self.probe.hypercall_with(case.args))
            want = expected[case.row_id].status.name
            if self.vm.accel is not None and case.args.control & 0xFFFF == Call.SIGNAL_EVENT_DIRECT:
                # A stock KVM answers 0x00C0 in the kernel (orchestrator/expect.py).
                status = expected_direct_status(
                    self.vm.accel, expected[case.row_id].status, case.args.control
                )
                want = HvStatus(status).name
            results.append(ErrorRowResult(case.row_id, case.label, want, got))
        return tuple(results)
