"""The QEMU built with AddressSanitizer and UBSan (`make qemu SANITIZE=1`).

HVSD_SANITIZE=1 (what `make ... SANITIZE=1` exports) makes find_qemu pick it
(qemu-asan.json) unless $QEMU names a binary. Its QEMU writes ASan's reports
to `asan.<pid>` in its VM's log directory. UBSan's go to QEMU's stderr, that
is `qemu.log` there: GCC's UBSan runtime ignores log_path when ASan's is
loaded too. A pytest session (the plugin here) and `fuzz` count both at the
end, print one line, and fail when there are any."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPORT_PREFIX = "asan"  # log_path: the runtime appends .<pid>
# Written beside cmdline.txt in the log directory of each VM whose QEMU is
# sanitized; the per-test copies of its logs leave it out, so it marks where
# reports are counted once.
ENV_FILE = "sanitizer-env.txt"
QEMU_LOG = "qemu.log"
# The first line of each report: ASan's (and LSan's) "==PID==ERROR: ..." and
# UBSan's "file:line:col: runtime error: ...".
_REPORT_LINE = re.compile(r"^==\d+==ERROR: |: runtime error: ", re.MULTILINE)
# Warnings, not reports: ASan's at every start of a QEMU built with
# coroutine-ucontext, and the one (of four lines) for a stack switch it cannot
# follow (QEMU's coroutines; google/sanitizers issue 189).
_BENIGN_LINE = re.compile(
    r"==\d+==WARNING: ASan doesn't fully support makecontext/swapcontext functions"
    r" and may produce false positives in some cases!"
    r"|==\d+==WARNING: ASan is ignoring requested __asan_handle_no_return: .*"
    r"|False positive error reports may follow"
    r"|For details see https://github\.com/google/sanitizers/issues/189"
)


def enabled() -> bool:
    """Whether this run uses the sanitized QEMU: HVSD_SANITIZE=1, and no
    binary of one's own named by $QEMU (which find_qemu takes first)."""
    return os.environ.get("HVSD_SANITIZE") == "1" and not os.environ.get("QEMU")


def environment(log_dir: Path) -> dict[str, str]:
    """What the sanitized QEMU runs with: reports to files in `log_dir` (UBSan's
    only where its runtime honours log_path, see above); ASan stops QEMU at
    its first report (QEMU is not built to recover from one),
    UBSan goes on with a stack trace for each; no leak check, since QEMU
    leaves its memory to exit by design."""
    log_path = log_dir.resolve() / REPORT_PREFIX
    return {
        "ASAN_OPTIONS": f"log_path={log_path}:detect_leaks=0:print_summary=1",
        "UBSAN_OPTIONS": f"log_path={log_path}:halt_on_error=0:print_stacktrace=1",
    }


def prepare(log_dir: Path) -> dict[str, str]:
    """environment(), also written to the VM's log directory (ENV_FILE)."""
    env = environment(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / ENV_FILE).write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return env


@dataclass(frozen=True)
class Reports:
    count: int
    files: tuple[Path, ...]

    def line(self) -> str:
        names = ", ".join(str(f) for f in self.files) or "none"
        return f"sanitizer reports: {self.count} (files: {names})"


def count_reports(text: str) -> int:
    """The reports in a text."""
    return len(_REPORT_LINE.findall(text))


def unknown_lines(text: str) -> list[str]:
    """The lines of a report file that are neither blank nor the one known warning."""
    return [ln for ln in text.splitlines() if ln.strip() and not _BENIGN_LINE.fullmatch(ln)]


def _vm_reports(vm_dir: Path, since: float) -> dict[Path, int]:
    found = {}
    for path in [*vm_dir.glob(f"{REPORT_PREFIX}.*"), vm_dir / QEMU_LOG]:
        if not path.is_file() or path.stat().st_mtime < since:
            continue
        text = path.read_text(errors="replace")
        count = count_reports(text)
        if path.name != QEMU_LOG and not count and unknown_lines(text):
            count = 1  # the runtime wrote it for some reason, one not known here
        if count:
            found[path] = count
    return found


def find_reports(roots: Iterable[Path], since: float = 0.0) -> Reports:
    """The reports of the sanitized QEMUs whose log directories are under
    `roots`, in files modified at or after `since` (a time.time())."""
    found: dict[Path, int] = {}
    for root in roots:
        if root.is_dir():
            for marker in root.rglob(ENV_FILE):
                found.update(_vm_reports(marker.parent, since))
    files = tuple(sorted(found))
    return Reports(sum(found.values()), files)


class SanitizerPlugin:
    """Registered by orchestrator.plugin when HVSD_SANITIZE=1: the reports
    written under the session's log directory while it ran."""

    def __init__(self, log_root: Path) -> None:
        self.log_root = log_root
        self.started = time.time()
        self.reports = Reports(0, ())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Every QEMU has stopped: the session fixtures are torn down by now.
        self.reports = find_reports([self.log_root], self.started)
        if self.reports.count and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_line(self.reports.line(), red=bool(self.reports.count))
