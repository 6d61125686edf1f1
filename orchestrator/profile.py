"""The VM configuration a run is made for: the machine type and CPU model
that `make test MACHINE=... CPU_MODEL=...` chooses (HVSD_MACHINE,
HVSD_CPU_MODEL), applied to every test guest's options. Machine layer: it
knows QEMU's command line, not Hyper-V.

Tests keep writing `q35` and `max,...`: those are the defaults, and a
profile replaces only them. A test that names a versioned machine type
(pc-q35-9.2) or another CPU model keeps what it named."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from orchestrator.command import VmOptions
from orchestrator.errors import HarnessError

DEFAULT_MACHINE, DEFAULT_CPU_MODEL = "q35", "max"
MACHINES = ("q35", "pc")
# Named models users run Windows guests on, one per vendor (which picks
# VMMCALL or VMCALL for the hypercall page); any other name QEMU knows is
# taken too.
KNOWN_CPU_MODELS = ("max", "EPYC", "Skylake-Server")


@dataclass(frozen=True)
class VmProfile:
    machine: str = DEFAULT_MACHINE
    cpu_model: str = DEFAULT_CPU_MODEL

    @classmethod
    def from_environment(cls) -> VmProfile:
        machine = os.environ.get("HVSD_MACHINE") or DEFAULT_MACHINE
        cpu_model = os.environ.get("HVSD_CPU_MODEL") or DEFAULT_CPU_MODEL
        if machine not in MACHINES:
            raise HarnessError(f"MACHINE={machine} is not one of: {', '.join(MACHINES)}")
        if not cpu_model.replace("-", "").replace(".", "").replace("_", "").isalnum():
            raise HarnessError(f"CPU_MODEL={cpu_model!r} is not a CPU model name")
        return cls(machine, cpu_model)

    @property
    def is_default(self) -> bool:
        return self == VmProfile()

    def apply(self, options: VmOptions) -> VmOptions:
        """`options` for this profile: the default machine type and CPU model
        replaced, anything a test named itself kept."""
        machine = self.machine if options.machine == DEFAULT_MACHINE else options.machine
        model, sep, flags = options.cpu.partition(",")
        cpu = f"{self.cpu_model}{sep}{flags}" if model == DEFAULT_CPU_MODEL else options.cpu
        return dataclasses.replace(options, machine=machine, cpu=cpu)

    def describe(self) -> str:
        return f"machine {self.machine}, CPU model {self.cpu_model}"
