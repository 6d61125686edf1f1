import json
import os
from pathlib import Path

import pytest

from orchestrator import sanitize
from orchestrator.artifacts import find_qemu
from orchestrator.errors import HarnessError

# What a sanitized QEMU's asan.<pid> held after make fuzz SANITIZE=1, no report
WARNINGS = """\
==2669==WARNING: ASan doesn't fully support makecontext/swapcontext functions and may \
produce false positives in some cases!
==2669==WARNING: ASan is ignoring requested __asan_handle_no_return: stack type: default \
top: 0x7ffe09dd7000; bottom 0x7f6828b9b000; size: 0x0095e123c000 (643727343616)
False positive error reports may follow
For details see https://github.com/google/sanitizers/issues/189
"""


ASAN = """\
=================================================================
==4242==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x602000000018
READ of size 8 at 0x602000000018 thread T3
    #0 0x55d0c0 in hyperv_sint_route_set_sint ../hw/hyperv/hyperv.c:123
SUMMARY: AddressSanitizer: heap-buffer-overflow ../hw/hyperv/hyperv.c:123
==4242==ABORTING
"""
UBSAN = """\
../hw/hyperv/hyperv.c:200:17: runtime error: shift exponent 64 is too large
    #0 0x55d0c0 in set_flag ../hw/hyperv/hyperv.c:200
../target/i386/kvm/hyperv.c:90:5: runtime error: load of misaligned address
    #0 0x55d0c1 in hcall ../target/i386/kvm/hyperv.c:90
"""


def vm_dir(root: Path, name: str, sanitized: bool = True) -> Path:
    """A VM's log directory as the harness leaves it, without reports."""
    path = root / name
    path.mkdir(parents=True)
    for log in ("serial.log", "qemu.log", "qmp.log", "guest-errors.log", "cmdline.txt"):
        (path / log).write_text("qemu: starting\n")
    # what the guest prints is not QEMU's
    (path / "serial.log").write_text("t.c:1:2: runtime error: in the guest's own program\n")
    if sanitized:
        sanitize.prepare(path)
    return path


def test_no_reports_is_zero(tmp_path: Path) -> None:
    vm_dir(tmp_path, "session-hv-vm")
    reports = sanitize.find_reports([tmp_path, tmp_path / "absent"])
    assert reports == sanitize.Reports(0, ())
    assert reports.line() == "sanitizer reports: 0 (files: none)"


def test_each_report_in_each_file_counts(tmp_path: Path) -> None:
    session = vm_dir(tmp_path, "session-hv-vm")
    asan = session / "asan.4242"
    asan.write_text(WARNINGS + ASAN)
    fresh = vm_dir(tmp_path, "test_x/fresh-vm")
    (fresh / "qemu.log").write_text("qemu: starting\n" + UBSAN)
    reports = sanitize.find_reports([tmp_path])
    assert reports.count == 3
    assert reports.files == (asan, fresh / "qemu.log")
    assert reports.line() == f"sanitizer reports: 3 (files: {asan}, {fresh / 'qemu.log'})"


def test_copies_of_a_vm_log_and_unsanitized_vms_do_not_count(tmp_path: Path) -> None:
    (vm_dir(tmp_path, "session-vm") / "qemu.log").write_text(UBSAN)
    # the plugin's per-test slice of that log: no ENV_FILE beside it
    (vm_dir(tmp_path, "test_x/session-vm", sanitized=False) / "qemu.log").write_text(UBSAN)
    assert sanitize.find_reports([tmp_path]).count == 2


def test_the_warnings_of_qemus_coroutines_are_no_report(tmp_path: Path) -> None:
    (vm_dir(tmp_path, "vm") / "asan.2175").write_text(WARNINGS)
    assert sanitize.find_reports([tmp_path]).count == 0


def test_a_report_file_of_an_unknown_kind_still_counts(tmp_path: Path) -> None:
    (vm_dir(tmp_path, "vm") / "asan.1").write_text(WARNINGS + "==1==WARNING: other\n")
    assert sanitize.find_reports([tmp_path]).count == 1


def test_reports_older_than_the_run_are_not_counted(tmp_path: Path) -> None:
    old = vm_dir(tmp_path, "vm") / "asan.1"
    old.write_text(ASAN)
    os.utime(old, (1000.0, 1000.0))
    assert sanitize.find_reports([tmp_path], since=2000.0).count == 0
    assert sanitize.find_reports([tmp_path]).count == 1


def test_environment_sends_reports_to_the_vm_log_dir(tmp_path: Path) -> None:
    env = sanitize.prepare(tmp_path)
    assert f"log_path={tmp_path}/asan:" in env["ASAN_OPTIONS"]
    assert "detect_leaks=0" in env["ASAN_OPTIONS"]
    assert f"log_path={tmp_path}/asan:" in env["UBSAN_OPTIONS"]
    assert "halt_on_error=0" in env["UBSAN_OPTIONS"]
    assert "print_stacktrace=1" in env["UBSAN_OPTIONS"]
    written = (tmp_path / sanitize.ENV_FILE).read_text().splitlines()
    assert written == [f"{k}={v}" for k, v in env.items()]


class Session:
    def __init__(self, exitstatus: int) -> None:
        self.exitstatus = exitstatus


def test_plugin_fails_a_passing_session_with_reports(tmp_path: Path) -> None:
    plugin = sanitize.SanitizerPlugin(tmp_path)
    session = Session(pytest.ExitCode.OK)
    plugin.pytest_sessionfinish(session)  # type: ignore[arg-type]
    assert session.exitstatus == pytest.ExitCode.OK
    (vm_dir(tmp_path, "session-vm") / "qemu.log").write_text(UBSAN)
    plugin.pytest_sessionfinish(session)  # type: ignore[arg-type]
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert plugin.reports.count == 2


def manifest(cache: Path, name: str, binary: Path, sanitized: bool | None) -> None:
    data: dict[str, object] = {
        "binary": str(binary),
        "base": "Debian qemu",
        "series_hash": "abc",
        "series_length": 40,
        "version": "QEMU emulator version 10.2.2",
    }
    if sanitized is not None:
        data["sanitized"] = sanitized
    (cache / name).write_text(json.dumps(data))


def test_find_qemu_picks_the_sanitized_build_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    normal, asan = tmp_path / "build" / "qemu", tmp_path / "build-asan" / "qemu"
    for binary in (normal, asan):
        binary.parent.mkdir()
        binary.write_text("")
    manifest(tmp_path, "qemu.json", normal, None)  # as written before SANITIZE existed
    monkeypatch.setenv("HVSD_CACHE", str(tmp_path))
    monkeypatch.delenv("QEMU", raising=False)
    monkeypatch.delenv("HVSD_SANITIZE", raising=False)
    assert (find_qemu().binary, find_qemu().sanitized) == (normal, False)

    monkeypatch.setenv("HVSD_SANITIZE", "1")
    with pytest.raises(HarnessError, match=r"qemu-asan.json not found: run 'make qemu SANITIZE=1'"):
        find_qemu()
    manifest(tmp_path, "qemu-asan.json", asan, True)
    assert (find_qemu().binary, find_qemu().sanitized) == (asan, True)

    monkeypatch.setenv("QEMU", str(normal))  # a binary of one's own wins, unsanitized
    assert (find_qemu().binary, find_qemu().sanitized) == (normal, False)
    assert not sanitize.enabled()
