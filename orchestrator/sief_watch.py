"""What a signalling hypercall may change, seen from inside the guest (the
probe) and from the host (the SIEF pages over QMP): one SINT's SIEF slot on
each watched vCPU, and the interrupts with that SINT's vector."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.probe import Probe
from orchestrator.vm import Vm


@dataclass(frozen=True)
class Snapshot:
    """Per watched vCPU, in the order of SiefWatch.cpus that are set up."""

    guest_slots: tuple[bytes, ...]
    host_pages: tuple[dict[int, frozenset[int]], ...]
    irqs: tuple[int, ...]


class SiefWatch:
    def __init__(self, vm: Vm, probe: Probe, sint: int, vector: int, cpus: tuple[int, ...]) -> None:
        self.vm = vm
        self.probe = probe
        self.sint = sint
        self.vector = vector
        self.cpus = cpus
        self.sief_gpa: dict[int, int] = {}

    @property
    def ready(self) -> tuple[int, ...]:
        return tuple(cpu for cpu in self.cpus if cpu in self.sief_gpa)

    def setup(self, cpu: int) -> None:
        """SynIC, SIEF and SIM pages on, the SINT unmasked with the vector."""
        state = self.probe.synic_setup(cpu)
        self.sief_gpa[cpu] = state.sief_gpa
        self.probe.sint(cpu, self.sint, self.vector)

    def teardown(self) -> None:
        for cpu in self.ready:
            self.clear(cpu)
            self.probe.sint(cpu, self.sint, self.vector, masked=True)
            self.probe.synic_teardown(cpu)
        self.sief_gpa.clear()

    def host_page(self, cpu: int | None = None) -> dict[int, frozenset[int]]:
        """Found by the host itself (x-query-synic), checked against the guest's word."""
        cpu = self.cpus[0] if cpu is None else cpu
        page = self.vm.synic.sief(cpu)
        assert self.vm.synic.state()[cpu].sief_gpa == self.sief_gpa[cpu]
        return page

    def snapshot(self) -> Snapshot:
        cpus = self.ready
        replies = self.probe.batch(
            *(["sief", "--cpu", cpu, "--sint", self.sint] for cpu in cpus),
            *(["irqs", "--cpu", cpu, "--vector", self.vector] for cpu in cpus),
        )
        slots, counts = replies[: len(cpus)], replies[len(cpus) :]
        return Snapshot(
            guest_slots=tuple(bytes.fromhex(slot["bytes"]) for slot in slots),
            host_pages=tuple(self.host_page(cpu) for cpu in cpus),
            irqs=tuple(
                reply["irqs"][str(cpu)][str(self.vector)]
                for cpu, reply in zip(cpus, counts, strict=True)
            ),
        )

    def clear(self, cpu: int) -> None:
        """Zeroes all 16 SIEF slots of `cpu`."""
        self.probe.batch(*(["sief", "--cpu", cpu, "--sint", s, "--clear"] for s in range(16)))
