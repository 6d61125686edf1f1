"""Racing vCPUs (issue 12, "Racing vCPUs"): every vCPU but the target signals
one flag of the target at once, round after round, by either call; between
batches of rounds the target masks its SINT or turns SCONTROL off, and then
every call must fail and nothing be set or delivered.

A batch is one `hvprobe race` run: the module releases the callers together
each round, each makes its calls back to back, the target meanwhile sets and
clears the flag's neighbour bit in the same word, and after the round the
first caller clears the flag and waits for its interrupt. In an enabled
batch every round must then show exactly one clear-to-set transition (the
flag found set), one interrupt, and, for SignalEventDirect, exactly one
NewlySignaled=1 answer: a lost signal shows as a missing flag or interrupt,
a doubled one as a second NewlySignaled or an
extra interrupt.

A round of an enabled batch with two or more callers is a contested
transition: several callers race on one clear flag, and exactly one of them
may set it. With one call per caller a round (make stress), every call
takes part in such a race; with more, the later calls of a round find the
flag already set, which is the cheap case, not a race."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from orchestrator.contract import HvStatus
from orchestrator.expect import direct_reaches_qemu, stock_kvm_direct_status
from orchestrator.hvdefs import Msr
from orchestrator.ports import HostPorts, Port
from orchestrator.probe import HypercallArgs, Probe, RaceResult
from orchestrator.signal_direct import direct_call
from orchestrator.signal_event import event_call
from orchestrator.synic_setup import synic_on
from orchestrator.vm import Vm

SINT, VECTOR, FLAG = 2, 0xE2, 33
CONNECTION = 0x20
CallKind = Literal["direct", "port"]
# What the target does to its SynIC before a batch.
TargetState = Literal["enabled", "sint-masked", "scontrol-off"]
# The states batches cycle through: every other batch is disabled.
STATE_CYCLE: tuple[TargetState, ...] = ("enabled", "sint-masked", "enabled", "scontrol-off")


@dataclass(frozen=True)
class Batch:
    """One race run and what it should have shown."""

    kind: CallKind
    state: TargetState
    rounds: int
    callers: int
    calls_per_round: int
    result: RaceResult
    # A stock KVM answers SignalEventDirect in the kernel (orchestrator/expect.py):
    # then every call of the batch is refused with this status, whatever the state.
    kernel_answer: HvStatus | None = None

    @property
    def enabled(self) -> bool:
        return self.state == "enabled"

    @property
    def signals_due(self) -> bool:
        """Whether each round must set the flag and interrupt once."""
        return self.enabled and self.kernel_answer is None

    @property
    def refusal(self) -> HvStatus | None:
        """The status every call must fail with; None: every call succeeds."""
        if self.kernel_answer is not None:
            return self.kernel_answer
        return None if self.enabled else HvStatus.INVALID_SYNIC_STATE

    @property
    def transitions(self) -> int:
        """Rounds after which the flag was found set: clear-to-set transitions."""
        return self.rounds - self.result.flag_missing

    @property
    def contested(self) -> int:
        """Rounds in which several callers raced on one clear flag and it came
        out set once, with one interrupt (and, for SignalEventDirect, one
        NewlySignaled=1): the rounds that were due, less those that lost or
        doubled the signal."""
        if not self.signals_due or self.callers < 2:
            return 0
        return max(0, self.rounds - self.lost - self.doubled)

    @property
    def lost(self) -> int:
        """Signals due but not seen: rounds without the flag or its interrupt."""
        if not self.signals_due:
            return 0
        r = self.result
        return max(r.flag_missing, r.irq_timeouts, self.rounds - r.irqs)

    @property
    def doubled(self) -> int:
        """Signals seen twice: extra NewlySignaled answers or interrupts."""
        extra_irqs = max(0, self.result.irqs - self.transitions)
        extra_newly = self.result.bad_rounds if self.kind == "direct" and self.signals_due else 0
        return max(extra_irqs, extra_newly)

    def problems(self) -> list[str]:
        """How this batch differs from what its state requires; empty if not."""
        r = self.result
        found: list[str] = []
        if r.calls != self.rounds * self.callers * self.calls_per_round:
            found.append(
                f"{r.calls} calls, not {self.rounds} rounds x {self.callers} callers x "
                f"{self.calls_per_round}"
            )
        refusal = self.refusal
        if refusal is None:
            if (r.errors, r.first_error) != (0, 0):
                found.append(f"{r.errors} calls failed, first with {r.first_error:#x}")
            if self.kind == "direct" and (r.newly, r.bad_rounds) != (self.rounds, 0):
                found.append(f"NewlySignaled=1 {r.newly} times in {self.rounds} rounds")
        else:
            if (r.errors, r.first_error) != (r.calls, refusal):
                found.append(
                    f"{r.errors} of {r.calls} calls refused, first with {r.first_error:#x}, "
                    f"not all with {refusal:#x}"
                )
            if r.newly or self.transitions or r.irqs:
                found.append(f"{self.transitions} flags and {r.irqs} interrupts, none due")
        if self.lost:
            found.append(f"{self.lost} signals lost")
        if self.doubled:
            found.append(f"{self.doubled} signals doubled")
        if r.neighbour_lost:
            found.append(f"the neighbour bit changed under the target {r.neighbour_lost} times")
        return found


@dataclass(frozen=True)
class StressReport:
    cpus: int
    batches: tuple[Batch, ...]
    qemu_status: str

    @property
    def signals(self) -> int:
        return sum(b.result.calls for b in self.batches)

    @property
    def newly(self) -> int:
        return sum(b.result.newly for b in self.batches)

    @property
    def transitions(self) -> int:
        return sum(b.transitions for b in self.batches)

    @property
    def contested(self) -> int:
        return sum(b.contested for b in self.batches)

    @property
    def irqs(self) -> int:
        return sum(b.result.irqs for b in self.batches)

    @property
    def lost(self) -> int:
        return sum(b.lost for b in self.batches)

    @property
    def doubled(self) -> int:
        return sum(b.doubled for b in self.batches)

    def problems(self) -> list[str]:
        found = [
            f"batch {i} ({b.kind}, {b.state}): {problem}"
            for i, b in enumerate(self.batches)
            for problem in b.problems()
        ]
        if self.qemu_status != "running":
            found.append(f"QEMU is {self.qemu_status!r} after the run")
        return found


def _call(kind: CallKind, target: int) -> HypercallArgs:
    if kind == "direct":
        return direct_call(target, SINT, FLAG)
    return event_call(CONNECTION, 0)


@contextmanager
def _target_state(probe: Probe, target: int, state: TargetState) -> Iterator[None]:
    """The target's SynIC as `state` says for one batch, enabled again after."""
    if state == "sint-masked":
        probe.sint(target, SINT, VECTOR, masked=True)
    elif state == "scontrol-off":
        probe.wrmsr(Msr.SCONTROL, 0, cpu=target)
    try:
        yield
    finally:
        if state == "sint-masked":
            probe.sint(target, SINT, VECTOR)
        elif state == "scontrol-off":
            probe.wrmsr(Msr.SCONTROL, 1, cpu=target)


@contextmanager
def stress_target(vm: Vm, probe: Probe, target: int) -> Iterator[None]:
    """The target's SynIC and SINT, and a port to its flag for SignalEvent."""
    ports = HostPorts(vm.qmp)
    with synic_on(probe, target, {SINT: VECTOR}):
        ports.create(Port(0x10, vp=target, sint=SINT, base_flag=FLAG))
        ports.connect(CONNECTION, 0x10)
        try:
            yield
        finally:
            ports.clear()


def run_batches(
    vm: Vm,
    signals: int,
    rounds: int,
    calls_per_round: int = 1,
    kinds: tuple[CallKind, ...] = ("direct", "port"),
    progress: Callable[[int, int], None] = lambda done, total: None,
    transitions: int | None = None,
) -> StressReport:
    """Batches of `rounds` rounds, the kinds taking turns and the states
    cycling, until `signals` calls were made in enabled batches (or, with
    `transitions`, until that many contested transitions were seen) and
    every kind went through every state as often as any other."""
    probe = Probe(vm.guest, timeout=600.0)
    cpus = vm.options.cpus
    target = cpus - 1
    callers = tuple(range(target))
    batches: list[Batch] = []
    enabled_signals = contested = 0
    direct_in_qemu = vm.accel is None or direct_reaches_qemu(vm.accel)
    with stress_target(vm, probe, target):
        index = 0
        cycle = len(STATE_CYCLE) * len(kinds)

        def more() -> bool:
            if transitions is not None:
                # a stock KVM's refusals contest nothing: then count calls
                return contested < transitions if direct_in_qemu else enabled_signals < signals
            return enabled_signals < signals

        while more() or index % cycle:
            kind = kinds[(index // len(STATE_CYCLE)) % len(kinds)]
            state = STATE_CYCLE[index % len(STATE_CYCLE)]
            with _target_state(probe, target, state):
                result = probe.race(
                    _call(kind, target), cpus=callers, target=target, sint=SINT, flag=FLAG,
                    vector=VECTOR, rounds=rounds, newly_output=kind == "direct", neighbour=True,
                    calls_per_round=calls_per_round,
                )  # fmt: skip
            kernel_answer = None
            if kind == "direct" and not direct_in_qemu:
                kernel_answer = stock_kvm_direct_status(_call(kind, target).control)
            batch = Batch(kind, state, rounds, len(callers), calls_per_round, result, kernel_answer)
            batches.append(batch)
            if state == "enabled":
                enabled_signals += result.calls
            contested += batch.contested
            if transitions is not None and direct_in_qemu:
                progress(min(contested, transitions), transitions)
            else:
                progress(min(enabled_signals, signals), signals)
            index += 1
    return StressReport(cpus, tuple(batches), vm.qmp.status())


def report_lines(report: StressReport) -> list[str]:
    kernel = [b for b in report.batches if b.kernel_answer is not None]
    answered = (
        [
            f"  SignalEventDirect answered by the stock KVM: {sum(b.result.calls for b in kernel)} "
            f"calls, {sum(b.result.errors for b in kernel)} refused"
        ]
        if kernel
        else []
    )
    return [
        f"contested transitions: {report.contested}",
        f"{report.cpus} vCPUs ({report.cpus - 1} callers, 1 target): {len(report.batches)} "
        f"batches, {report.signals} calls",
        *answered,
        f"  NewlySignaled=1 answers (SignalEventDirect): {report.newly}",
        f"  clear-to-set transitions: {report.transitions}, interrupts: {report.irqs}",
        f"  lost: {report.lost}, doubled: {report.doubled}, QEMU: {report.qemu_status}",
    ]
