"""What a signalling hypercall may change, seen from inside the guest (the
probe) and from the host (the SIEF pages over QMP): the whole SIEF page of
each watched vCPU in both views, the interrupts with the watched SINT's
vector, and those on every other vector the suites give SINTs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass

from orchestrator.probe import Probe
from orchestrator.synic import HostSynic
from orchestrator.synic_setup import synic_on
from orchestrator.vm import Vm

# The vectors the guest suites program into SINTs. Linux gives devices
# vectors from the bottom of the range and these to nothing, so a count that
# moves here is a SINT delivered where none was due.
SINT_VECTORS = range(0xE0, 0xF0)
SINTS = 16


def sief_page(flags: Mapping[int, Iterable[int]] | None = None) -> dict[int, frozenset[int]]:
    """A SIEF page as both views decode it: every SINT, with the flags set."""
    flags = flags or {}
    return {sint: frozenset(flags.get(sint, ())) for sint in range(SINTS)}


@dataclass(frozen=True)
class Snapshot:
    """Per watched vCPU, in the order of SiefWatch.cpus that are set up."""

    guest_pages: tuple[dict[int, frozenset[int]], ...]  # SINT -> flags set, as the guest reads them
    host_pages: tuple[dict[int, frozenset[int]], ...]
    irqs: tuple[int, ...]  # on the watched vector
    other_irqs: tuple[dict[int, int], ...]  # on the other SINT_VECTORS


class SiefWatch:
    def __init__(self, vm: Vm, probe: Probe, sint: int, vector: int, cpus: tuple[int, ...]) -> None:
        self.vm = vm
        self.probe = probe
        self.sint = sint
        self.vector = vector
        self.cpus = cpus
        self.sief_gpa: dict[int, int] = {}
        self._synics = ExitStack()

    @property
    def ready(self) -> tuple[int, ...]:
        return tuple(cpu for cpu in self.cpus if cpu in self.sief_gpa)

    def setup(self, cpu: int) -> None:
        """SynIC, SIEF and SIM pages on, the SINT unmasked with the vector."""
        state = self._synics.enter_context(synic_on(self.probe, cpu, {self.sint: self.vector}))
        self.sief_gpa[cpu] = state.sief_gpa

    def teardown(self) -> None:
        for cpu in self.ready:
            self.clear(cpu)
        self._synics.close()
        self.sief_gpa.clear()

    def host_page(self, cpu: int | None = None) -> dict[int, frozenset[int]]:
        """Found by the host itself (x-query-synic), checked against the guest's word."""
        cpu = self.cpus[0] if cpu is None else cpu
        page = HostSynic(self.vm.qmp).sief(cpu)
        assert HostSynic(self.vm.qmp).state()[cpu].sief_gpa == self.sief_gpa[cpu]
        return page

    def snapshot(self) -> Snapshot:
        cpus = self.ready
        replies = self.probe.batch(
            *(["sief", "--cpu", cpu] for cpu in cpus),
            *(["irqs", "--cpu", cpu] for cpu in cpus),
        )
        pages, counts = replies[: len(cpus)], replies[len(cpus) :]
        vectors = [
            {int(vector): int(n) for vector, n in reply["irqs"].get(str(cpu), {}).items()}
            for cpu, reply in zip(cpus, counts, strict=True)
        ]
        return Snapshot(
            guest_pages=tuple(
                sief_page({int(sint): slot["flags"] for sint, slot in page["slots"].items()})
                for page in pages
            ),
            host_pages=tuple(self.host_page(cpu) for cpu in cpus),
            irqs=tuple(by_vector.get(self.vector, 0) for by_vector in vectors),
            other_irqs=tuple(
                {v: by_vector.get(v, 0) for v in SINT_VECTORS if v != self.vector}
                for by_vector in vectors
            ),
        )

    def clear(self, cpu: int) -> None:
        """Zeroes all 16 SIEF slots of `cpu`."""
        self.probe.call("sief", "--cpu", cpu, "--clear")
