"""The one way a SynIC is arranged on a vCPU for a test, the demo, the
fuzzer, the benchmark or the stress run: the probe's pages on, the SINTs
asked for unmasked, and everything undone on the way out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from orchestrator.probe import PagePlacement, Probe, SynicState


@dataclass(frozen=True)
class SintSetup:
    vector: int
    auto_eoi: bool = False
    polling: bool = False


@contextmanager
def synic_on(
    probe: Probe,
    cpu: int,
    sints: Mapping[int, SintSetup | int],
    *,
    scontrol: bool = True,
    at: PagePlacement | None = None,
) -> Iterator[SynicState]:
    """`cpu`'s SynIC with its SIEF and SIM pages (where the probe allocates
    them, or `at`), and each SINT of `sints` (a vector, or a SintSetup)
    unmasked; on exit those SINTs are masked and the SynIC is off. The
    SINTs' slots are cleared first: QEMU keeps its overlay pages' contents
    across a SynIC disable, as a migration needs, so an earlier user's flags
    or messages may still be there."""
    state = probe.synic_setup(cpu, scontrol=scontrol, at=at)
    unmasked: list[tuple[int, int]] = []
    try:
        for sint, setup in sints.items():
            wanted = setup if isinstance(setup, SintSetup) else SintSetup(setup)
            probe.sief(cpu, sint, clear=True)
            probe.sim(cpu, sint, clear=True)
            probe.sint(cpu, sint, wanted.vector, auto_eoi=wanted.auto_eoi, polling=wanted.polling)
            unmasked.append((sint, wanted.vector))
        yield state
    finally:
        for sint, vector in unmasked:
            probe.sint(cpu, sint, vector, masked=True)
        probe.synic_teardown(cpu)
