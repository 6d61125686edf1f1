"""Per-call cost of the signalling hypercalls, measured inside the guest.

The probe runs each path's instruction back to back in the guest kernel
(`hypercall --repeat`, timed by the module around the instructions alone),
set against a call QEMU rejects at once (an unknown call code), which pays
the same trap and exit: the difference is what the path itself costs. The
flags are already set after the first call, so those figures are of the
lookup and the atomic test, not of interrupt delivery.

The "newly set" rows are the cost of a call that sets a clear flag and so
asserts the SINT (under KVM, through the SINT's route): the flag is cleared,
then two calls are timed back to back, the first newly setting it, and the
already-set cost measured before is taken off. Each sample is one pair.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orchestrator.command import HYPERV_CPU
from orchestrator.errors import HarnessError
from orchestrator.ports import HostPorts, Port
from orchestrator.probe import HypercallArgs, Probe
from orchestrator.signal_direct import direct_call, fast_direct_call
from orchestrator.signal_event import event_call
from orchestrator.synic_setup import synic_on
from orchestrator.testdev import HypervTestDev
from orchestrator.vm import Vm

CALLER, TARGET, SINT, VECTOR = 0, 1, 2, 0xE2
PORT = Port(0x10, vp=TARGET, sint=SINT, base_flag=100, flag_count=8)
CONNECTION, DEVICE_CONNECTION = 0x20, 0x21
UNKNOWN_CALL = 0x0FFF
# The guest's vCPU: the tests' Hyper-V one, with XMM fast output for the
# fast form of SignalEventDirect.
BENCH_CPU = HYPERV_CPU + ",hv-xmm-input"

PATHS: tuple[tuple[str, HypercallArgs], ...] = (
    ("unknown call code, memory (baseline)", HypercallArgs(UNKNOWN_CALL, cpu=CALLER)),
    (
        "unknown call code, fast (baseline)",
        HypercallArgs(UNKNOWN_CALL, cpu=CALLER, fast=True, input=bytes(16)),
    ),
    ("SignalEventDirect, memory", direct_call(TARGET, SINT, 5, cpu=CALLER)),
    ("SignalEventDirect, fast", fast_direct_call(TARGET, SINT, 5, cpu=CALLER)),
    ("SignalEvent, event port, fast", event_call(CONNECTION, 5, fast=True, cpu=CALLER)),
    ("SignalEvent, event port, memory", event_call(CONNECTION, 5, cpu=CALLER)),
    ("SignalEvent, device connection, fast", event_call(DEVICE_CONNECTION, fast=True, cpu=CALLER)),
    ("SignalEvent, device connection, memory", event_call(DEVICE_CONNECTION, cpu=CALLER)),
)


# The paths that are also timed setting a clear flag: (label, the already-set
# label whose cost is taken off, the call).
NEWLY_SET: tuple[tuple[str, str, HypercallArgs], ...] = (
    (
        "SignalEventDirect, memory, newly set",
        "SignalEventDirect, memory",
        direct_call(TARGET, SINT, 5, cpu=CALLER),
    ),
    (
        "SignalEvent, event port, memory, newly set",
        "SignalEvent, event port, memory",
        event_call(CONNECTION, 5, cpu=CALLER),
    ),
)


@dataclass(frozen=True)
class PathCost:
    label: str
    fast: bool
    status: int
    ns_per_call: tuple[float, ...]  # one per run

    @property
    def median(self) -> float:
        return statistics.median(self.ns_per_call)


@contextmanager
def signal_targets(vm: Vm, probe: Probe) -> Iterator[None]:
    """The target's SynIC, the port and its connection, hyperv-testdev's connection."""
    testdev = HypervTestDev(probe)
    ports = HostPorts(vm.qmp)
    with synic_on(probe, TARGET, {SINT: VECTOR}):
        ports.create(PORT)
        ports.connect(CONNECTION, PORT.port_id)
        testdev.evt_conn_create(TARGET, SINT, DEVICE_CONNECTION)
        try:
            yield
        finally:
            testdev.evt_conn_destroy(DEVICE_CONNECTION)
            ports.clear()


def timed_calls(probe: Probe, args: HypercallArgs, calls: int) -> tuple[int, int]:
    """(status, ns) of `calls` back-to-back calls, timed by the module."""
    reply = probe.call("hypercall", *args.argv(), "--repeat", calls)
    if reply.get("status") is None or "elapsed_ns" not in reply:
        raise HarnessError(f"hypercall --repeat gave no timing: {reply}", probe.guest.commands_log)
    return int(reply["status"]), int(reply["elapsed_ns"])


def time_path(probe: Probe, args: HypercallArgs, calls: int) -> tuple[int, float]:
    """(status, ns per call) of `calls` repetitions after one warm-up call."""
    probe.call("hypercall", *args.argv())
    status, elapsed_ns = timed_calls(probe, args, calls)
    return status, elapsed_ns / calls


def time_newly_set(probe: Probe, args: HypercallArgs, already_set_ns: float) -> tuple[int, float]:
    """(status, ns) of one call that finds its flag clear: the flag is cleared,
    a pair of calls is timed, and one already-set call's cost taken off."""
    probe.sief(TARGET, SINT, clear=True)
    status, elapsed_ns = timed_calls(probe, args, 2)
    return status, elapsed_ns - already_set_ns


def measure(
    vm: Vm,
    calls: int,
    runs: int,
    newly_set_samples: int = 20,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[PathCost]:
    probe = Probe(vm.guest)
    samples: dict[str, list[float]] = {label: [] for label, _ in PATHS}
    samples.update({label: [] for label, _, _ in NEWLY_SET})
    statuses: dict[str, int] = {}
    total = runs * len(PATHS) + len(NEWLY_SET)
    with signal_targets(vm, probe):
        for _ in range(runs):
            for label, args in PATHS:
                statuses[label], ns = time_path(probe, args, calls)
                samples[label].append(ns)
                progress(sum(map(len, samples.values())), total)
        for label, already_set, args in NEWLY_SET:
            already_set_ns = statistics.median(samples[already_set])
            for _ in range(newly_set_samples):
                statuses[label], ns = time_newly_set(probe, args, already_set_ns)
                samples[label].append(ns)
            progress(runs * len(PATHS) + 1 + NEWLY_SET.index((label, already_set, args)), total)
    fast = {label: args.fast for label, args in PATHS}
    fast.update({label: args.fast for label, _, args in NEWLY_SET})
    return [
        PathCost(label, fast[label], statuses[label], tuple(samples[label])) for label in samples
    ]


def report(costs: list[PathCost]) -> list[str]:
    """A line per path: its ratio to, and cost above, the baseline of its form
    (the fast form's probe also loads and reads back six XMM registers)."""
    baselines = {cost.fast: cost.median for cost in costs if cost.label.endswith("(baseline)")}
    lines = [f"{'path':42} {'status':>6} {'ns/call':>9} {'ratio':>6} {'above baseline':>15}"]
    for cost in costs:
        baseline = baselines[cost.fast]
        lines.append(
            f"{cost.label:42} {cost.status:#6x} {cost.median:9.0f} "
            f"{cost.median / baseline:6.2f} {cost.median - baseline:13.0f}ns"
        )
    return lines
