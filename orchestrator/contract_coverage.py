"""Which contract rows a test run showed from inside a guest, read from the
tests that ran and passed rather than from what orchestrator/contract.toml claims.

A test shows a row when its parameter id starts with the row id (`D5-vp-2`,
or `C1+D3`, where C1 decides) or when it carries `@pytest.mark.contract_rows`.
A row's `tested` file is judged only when every test collected from it ran
and passed: a run narrowed with -k or -m, or with skips (the KVM leg on a
stock kernel), says so instead of failing.

Whatever the selection, each run also says which rows its own tests showed
(the KVM legs run a selection by marker, so no file of theirs runs in full):
a row with a test in the run is shown when one of them passed, left out when
all of them were skipped (a stock KVM's own answer, say), and fails the run
when its tests ran and none passed.

With pytest-xdist the workers collect and the controller only sees reports:
each test's rows travel in its report (user property `contract_rows`), and
since the controller cannot see what -k or -m deselected, such a run judges
no file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.contract import Row, load

ROW_IN_ID = re.compile(r"^([A-Z]\d+)(?=[-+]|$)")


def rows_shown(item: pytest.Item) -> frozenset[str]:
    rows: set[str] = set()
    for marker in item.iter_markers("contract_rows"):
        rows.update(str(arg) for arg in marker.args)
    callspec = getattr(item, "callspec", None)
    if callspec is not None and (match := ROW_IN_ID.match(callspec.id)):
        rows.add(match[1])
    return frozenset(rows)


def test_file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def narrowed_files(args: Iterable[str], invocation_dir: Path, rootdir: Path) -> list[str]:
    """The test files (as in node ids) that the command line names with a
    test, `file::test`, rather than whole."""
    files = []
    for arg in args:
        if "::" not in arg:
            continue
        path = (invocation_dir / arg.split("::", 1)[0]).resolve()
        try:
            files.append(path.relative_to(rootdir.resolve()).as_posix())
        except ValueError:
            continue
    return files


@dataclass
class Coverage:
    shown: dict[str, set[str]] = field(default_factory=dict)  # file -> rows its passes showed
    incomplete: set[str] = field(default_factory=set)  # files not every test of which passed
    ran: set[str] = field(default_factory=set)  # files some test of which ran
    # row -> outcomes ("passed", "skipped", "failed") of the tests that show it
    outcomes: dict[str, set[str]] = field(default_factory=dict)

    def outcome(self, rows: Iterable[str], what: str) -> None:
        for row in rows:
            self.outcomes.setdefault(row, set()).add(what)

    def selection(self) -> tuple[list[str], list[str], list[str]]:
        """(shown, left out as skipped, failed) rows of the tests in this run."""
        shown = sorted(row for row, seen in self.outcomes.items() if "passed" in seen)
        skipped = sorted(row for row, seen in self.outcomes.items() if seen == {"skipped"})
        failed = sorted(
            row for row, seen in self.outcomes.items() if "passed" not in seen and "failed" in seen
        )
        return shown, skipped, failed

    def passed(self, nodeid: str, rows: Iterable[str]) -> None:
        self.shown.setdefault(test_file(nodeid), set()).update(rows)

    def did_not_pass(self, nodeid: str) -> None:
        self.incomplete.add(test_file(nodeid))

    def missing(self, rows: Iterable[Row]) -> list[Row]:
        """Rows whose file ran in full without any passing test showing them."""
        return [
            row
            for row in rows
            if row.has_guest_test
            and row.tested not in self.incomplete
            and row.tested in self.shown
            and row.id not in self.shown[row.tested]
        ]

    def unjudged(self, rows: Iterable[Row]) -> list[Row]:
        return [
            row
            for row in rows
            if row.has_guest_test
            and (row.tested in self.incomplete or row.tested not in self.shown)
        ]


ROWS_PROPERTY = "contract_rows"


def _is_xdist_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


class ContractCoveragePlugin:
    """Registered by orchestrator.plugin; one per pytest run."""

    def __init__(self) -> None:
        self.coverage = Coverage()
        self.narrowed_by_selection = False

    def pytest_configure(self, config: pytest.Config) -> None:
        config.addinivalue_line(
            "markers", "contract_rows(*ids): the contract rows this test shows passing"
        )
        if _is_xdist_controller(config):
            self.narrowed_by_selection = bool(config.option.keyword or config.option.markexpr)
        # A file named with some of its tests (file::test) does not run in full
        for nodeid in narrowed_files(config.args, config.invocation_params.dir, config.rootpath):
            self.coverage.did_not_pass(nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        for item in items:
            item.user_properties.append((ROWS_PROPERTY, " ".join(sorted(rows_shown(item)))))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.coverage.did_not_pass(item.nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.coverage.ran.add(test_file(report.nodeid))
        row_ids = str(dict(report.user_properties).get(ROWS_PROPERTY, "")).split()
        if report.failed:
            self.coverage.outcome(row_ids, "failed")
        elif report.skipped:
            self.coverage.outcome(row_ids, "skipped")
        elif report.when == "call":
            self.coverage.outcome(row_ids, "passed")
        if report.failed or report.skipped or self.narrowed_by_selection:
            self.coverage.did_not_pass(report.nodeid)
        elif report.when == "call":
            rows = dict(report.user_properties).get(ROWS_PROPERTY, "")
            self.coverage.passed(report.nodeid, str(rows).split())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        failed_rows = self.coverage.selection()[2]
        unshown = self.coverage.missing(load()) or failed_rows
        if unshown and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        rows = load()
        missing, unjudged = self.coverage.missing(rows), self.coverage.unjudged(rows)
        judged = [row for row in rows if row.has_guest_test and row not in unjudged]
        if not any(row.tested in self.coverage.ran for row in rows):
            return  # no test of the contract's files ran
        in_run, skipped, failed = self.coverage.selection()
        terminalreporter.write_line(
            f"contract coverage of this selection: {len(in_run)} rows shown"
            + (f" ({' '.join(in_run)})" if in_run else "")
            + (f"; left out, every test skipped: {' '.join(skipped)}" if skipped else "")
            + (f"; FAILED, no test passed: {' '.join(failed)}" if failed else ""),
            red=bool(failed),
        )
        shown = len(judged) - len(missing)
        terminalreporter.write_line(
            f"contract coverage: {shown} of {len(judged)} rows shown by tests that ran and passed"
            + (f"; not judged (tests of their file did not all run): "
               f"{' '.join(row.id for row in unjudged)}" if unjudged else "")
        )  # fmt: skip
        for row in missing:
            terminalreporter.write_line(
                f"contract coverage: FAILED {row.id} ({row.status.name}) is claimed by "
                f"{row.tested}, but no test there that ran shows it",
                red=True,
            )
