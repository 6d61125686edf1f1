"""The one shape of an error-row example, for the demo's table and the tests:
the contract row that must answer it, a label, the call, and the SynIC or
port state it needs.

State is a context manager factory over whatever the user of the case works
with (a Probe for the demo and the direct-call tests, the port tests' Env),
so that each case puts back what it changed, however the call ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Generic, TypeVar

from orchestrator.errors import HarnessError
from orchestrator.probe import HypercallArgs, Probe

Context = TypeVar("Context")
State = Callable[[Context], AbstractContextManager[None]]


def unchanged(_context: object) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass(frozen=True)
class ErrorCase(Generic[Context]):
    row_id: str
    label: str
    args: HypercallArgs
    # Around the call alone: the snapshots on either side see the SynIC as set up
    around: State[Context] = unchanged
    # Before the first snapshot, kept until after the last (ports, connections)
    arrange: State[Context] = unchanged

    @property
    def id(self) -> str:
        """The test id: row and label."""
        return f"{self.row_id}-{self.label}"


def msr_set(msr: int, value: int, cpu: int) -> State[Probe]:
    """`msr` of `cpu` set to `value` (it must not #GP), then put back."""

    @contextmanager
    def around(probe: Probe) -> Iterator[None]:
        saved = probe.rdmsr(msr, cpu=cpu).value
        if probe.wrmsr(msr, value, cpu=cpu).gp:
            raise HarnessError(f"writing {value:#x} to MSR {msr:#x} on vCPU {cpu} raised #GP")
        try:
            yield
        finally:
            probe.wrmsr(msr, saved, cpu=cpu)

    return around
