"""orchestrator/contract.toml and docs/SEMANTICS.md say the same thing."""

import re
from pathlib import Path

from orchestrator.contract import HvStatus, load

ROOT = Path(__file__).resolve().parents[2]
SEMANTICS = ROOT / "docs" / "SEMANTICS.md"


def semantics_rows(path: Path) -> list[tuple[str, str]]:
    """(row id, status name) for every table row of SEMANTICS.md, in order."""
    rows = []
    for line in path.read_text().splitlines():
        match = re.match(r"\|\s*([CDE]\d)\s*\|.*\|\s*([A-Z_]+) \((0x[0-9A-F]+|\d+)\)\s*\|$", line)
        if match:
            rows.append((match[1], match[2]))
            assert HvStatus[match[2]] == int(match[3], 0), line
    return rows


def test_every_row_of_the_semantics_is_in_the_contract_in_order() -> None:
    contract = [(row.id, row.status.name) for row in load()]
    assert contract == semantics_rows(SEMANTICS)


def test_rows_without_a_guest_test_say_why() -> None:
    for row in load():
        assert row.has_guest_test or row.tested.startswith("not yet: "), row.id
