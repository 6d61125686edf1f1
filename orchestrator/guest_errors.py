"""Which lines QEMU may log with -d guest_errors while the tests run.

The tests break the contract's rules on purpose, and QEMU's Hyper-V code
logs each such call with LOG_GUEST_ERROR (docs/SEMANTICS.md: "Unexpected
guest input is logged with LOG_GUEST_ERROR, not printed"). Those lines are
expected. Any other line is not: another device complaining, a message our
code does not have (a new error path, or a changed one, which should be
looked at), or anything that speaks of an assert or abort.

The list is what a full `make test` logged (every session guest, every
guest a test booted): the messages of hw/hyperv/hyperv.c and
target/i386/tcg/system/hyperv.c (the series' qemu_log_mask(LOG_GUEST_ERROR,
...) calls), each of them at least once, and nothing else: not one line from
hyperv-testdev (the tests do not misuse it), the boot or another device.
`why` names the contract row (docs/SEMANTICS.md) that provokes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HEX = "0x[0-9a-f]+"
NUM = "[0-9]+"


@dataclass(frozen=True)
class ExpectedLine:
    pattern: str  # a whole line, as a regular expression
    why: str

    def matches(self, line: str) -> bool:
        return re.fullmatch(self.pattern, line) is not None


EXPECTED = (
    ExpectedLine(f"hyperv: hypercall control {HEX} sets reserved or nested bits", "C1"),
    ExpectedLine(f"hyperv: simple hypercall {HEX} with reps or a variable header", "C1"),
    ExpectedLine(f"hyperv: hypercall {HEX} without the privilege it needs", "C2"),
    ExpectedLine(f"hyperv: SignalEventDirect buffers in {HEX} out {HEX} misplaced", "C3"),
    ExpectedLine(f"hyperv: SignalEvent input at {HEX} misplaced", "C3"),
    ExpectedLine("hyperv: fast SignalEventDirect", "C4"),
    ExpectedLine(f"hyperv: SignalEventDirect to partition {HEX}", "D1"),
    ExpectedLine(f"hyperv: SignalEventDirect with vtl {NUM} sint {NUM} flag {NUM}", "D2..D4"),
    ExpectedLine(f"hyperv: event for VP {HEX}, which does not exist", "D5, E5"),
    ExpectedLine(f"hyperv: SignalEvent input {HEX} sets reserved bits", "E1"),
    ExpectedLine(f"hyperv: SignalEvent on unknown connection {HEX}", "E2"),
    ExpectedLine(f"hyperv: SignalEvent connection {HEX} has no event port", "E3"),
    ExpectedLine(f"hyperv: SignalEvent flag {NUM} past the {NUM} of port {HEX}", "E4"),
    ExpectedLine(f"hyperv: SignalEvent flag {NUM} past the {NUM} of connection {HEX}", "E4"),
    # docs/hyperv-tcg.md: a SINT vector below 16 is refused with #GP, which
    # test_hyperv_tcg's reserved-vector test writes.
    ExpectedLine(f"hyperv: SINT{NUM} vector {NUM} is reserved", "SINT vector < 16"),
)

# Never expected, whatever else the line says.
TROUBLE = re.compile(r"assert|abort", re.IGNORECASE)


def is_expected(line: str) -> bool:
    return not TROUBLE.search(line) and any(e.matches(line) for e in EXPECTED)


def unexpected(lines: Iterable[str]) -> list[str]:
    """The lines of a guest_errors log that EXPECTED does not explain."""
    return [line for line in lines if line.strip() and not is_expected(line.rstrip("\n"))]


def log_size(log: Path) -> int:
    """Where the log ends now (0 if QEMU writes none: a nested KVM guest)."""
    return log.stat().st_size if log.exists() else 0


def unexpected_since(log: Path, offset: int) -> list[str]:
    """The unexpected lines QEMU wrote to `log` past `offset`."""
    if not log.exists():
        return []
    with log.open("rb") as text:
        text.seek(offset)
        return unexpected(text.read().decode(errors="replace").splitlines())
