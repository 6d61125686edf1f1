"""QEMU and guest failures: one clear error, and nothing left running."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.artifacts import cache_dir
from orchestrator.command import VmOptions
from orchestrator.errors import HarnessError
from orchestrator.tests.procs import processes_mentioning
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

# Read before pytester moves HOME for the inner sessions.
CACHE = cache_dir()


def test_qemu_exiting_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    vm = Vm(tmp_path / "vm", VmOptions(extra_args=("-no-such-option",)))
    with pytest.raises(HarnessError) as err:
        vm.start()
    message = str(err.value)
    assert message.startswith("QEMU exited with status 1 before the guest was ready: ")
    assert "-no-such-option" in message
    assert message.endswith(f"see {tmp_path / 'vm' / 'qemu.log'}")
    assert processes_mentioning(str(tmp_path)) == []


def test_guest_that_never_answers_ssh_times_out_on_time(tmp_path: Path) -> None:
    # -S: QEMU (and QMP) come up, but the CPUs never run, so SSH never answers.
    vm = Vm(tmp_path / "vm", VmOptions(extra_args=("-S",), boot_timeout=6))
    start = time.monotonic()
    with pytest.raises(
        HarnessError, match=r"guest did not answer SSH on 127\.0\.0\.1:\d+ within 6s"
    ):
        vm.start()
    elapsed = time.monotonic() - start
    assert 6 <= elapsed < 6 + 15, elapsed  # honoured: not early, not open-ended
    assert processes_mentioning(str(tmp_path)) == []


def test_qemu_is_stopped_after_a_failing_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytester gives the inner session a HOME of its own; keep our cache.
    monkeypatch.setenv("HVSD_CACHE", str(CACHE))
    pidfile = pytester.path / "qemu.pid"
    pytester.makepyfile(
        f"""
        from pathlib import Path

        def test_fails_with_a_vm(fresh_vm):
            Path({str(pidfile)!r}).write_text(str(fresh_vm.pid))
            assert fresh_vm.guest.run("true").rc == 0
            raise AssertionError("this test fails on purpose")
        """
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-p", "orchestrator.plugin", "-p", "no:cacheprovider", f"--junitxml={junit}", timeout=300
    )
    result.assert_outcomes(failed=1)
    pid = int(pidfile.read_text())
    assert pid > 0
    assert processes_mentioning(str(pytester.path)) == []
    # The failing test still got its own log directory with the VM's files.
    test_dirs = list((pytester.path / "test-logs").glob("*test_fails_with_a_vm*"))
    assert len(test_dirs) == 1
    assert "-qmp" in (test_dirs[0] / "fresh-vm" / "cmdline.txt").read_text()
    assert "$ true" in (test_dirs[0] / "fresh-vm" / "commands.log").read_text()
    # and the junit report names it, for a CI job's reader
    assert f'<property name="logs" value="{test_dirs[0]}"' in junit.read_text()


def user_qmp_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("hvsd-qmp-*"))


def test_sigterm_to_the_cli_stops_qemu(tmp_path: Path) -> None:
    dirs_before = user_qmp_dirs()
    cli = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "boot"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log_dir = ""
        assert cli.stdout is not None
        for line in cli.stdout:
            if line.startswith("logs: "):
                log_dir = line.split(" ", 1)[1].strip()
            if line.startswith("running;"):
                break
        assert log_dir, "the CLI never said where its logs are"
        assert processes_mentioning(log_dir), "QEMU should be running now"
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=30) == 128 + signal.SIGTERM
        assert processes_mentioning(log_dir) == []
        assert user_qmp_dirs() == dirs_before, "boot left its QMP socket's directory"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
