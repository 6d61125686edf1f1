"""Faults around a running test (issue 12, "Harness faults"): QEMU killed, a
guest panic, the SSH connection dropped, SIGINT or SIGTERM to pytest, a full
cache disk. Each ends in one line naming the cause and the log, and leaves
no QEMU, socket or temporary directory behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.artifacts import cache_dir
from orchestrator.command import VmOptions
from orchestrator.errors import HarnessError
from orchestrator.probe import Probe
from orchestrator.tests.procs import processes_mentioning
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

# Read before pytester moves HOME for the inner sessions.
CACHE = cache_dir()


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Vm]:
    booted = Vm(tmp_path / "vm", VmOptions.hyperv())
    booted.start()
    runtime = booted.runtime
    assert runtime is not None and runtime.is_dir()
    try:
        yield booted
    finally:
        booted.stop()
    assert processes_mentioning(str(tmp_path)) == []
    assert not runtime.exists(), "the VM's QMP socket directory is left"


@pytest.fixture
def private_env() -> Iterator[dict[str, str]]:
    """An environment whose temporary files go to a directory of this test's,
    so that what a child leaves there is its own. Short, under /tmp: a QMP
    socket's path must fit in 108 bytes, which pytest's own temporary
    directories (deeper under pytest-xdist) can exceed."""
    tmp = Path(tempfile.mkdtemp(prefix="hvsd-t-", dir="/tmp"))
    yield {**os.environ, "TMPDIR": str(tmp)}
    shutil.rmtree(tmp, ignore_errors=True)


def one_line(error: HarnessError) -> str:
    message = str(error)
    assert "\n" not in message
    return message


def test_qemu_killed_during_a_test_is_named(vm: Vm) -> None:
    probe = Probe(vm.guest)
    assert probe.info().abi > 0
    assert vm.pid is not None
    os.kill(vm.pid, signal.SIGKILL)
    with pytest.raises(HarnessError) as err:
        probe.info()
    message = one_line(err.value)
    assert message.startswith("QEMU was killed by SIGKILL while the guest was in use"), message
    assert message.endswith(f"see {vm.logs.qemu}")


@pytest.mark.long(seconds=13)
def test_guest_panic_is_named(vm: Vm) -> None:
    vm.guest.run("(sleep 1; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &", check=True)
    time.sleep(3)
    with pytest.raises(HarnessError) as err:
        vm.guest.run("true")
    message = one_line(err.value)
    assert message.startswith("guest kernel panicked: "), message
    assert "sysrq triggered crash" in message
    assert message.endswith(f"see {vm.logs.serial}")


def test_dropped_ssh_connection_is_named_and_a_new_one_works(vm: Vm) -> None:
    probe = Probe(vm.guest)
    probe.info()
    # The guest's sshd processes serving this connection go; sshd itself stays.
    vm.guest.run("(sleep 1; pkill -KILL -f 'sshd: root') >/dev/null 2>&1 &", check=True)
    time.sleep(3)
    with pytest.raises(HarnessError) as err:
        probe.info()
    message = one_line(err.value)
    assert message.startswith("SSH failed"), message
    assert message.endswith(f"see {vm.logs.commands}")
    vm.reconnect()
    assert probe.info().abi > 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_pytest_stops_its_guests(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    private_env: dict[str, str],
    signum: signal.Signals,
) -> None:
    monkeypatch.setenv("HVSD_CACHE", str(CACHE))
    ready = pytester.path / "ready"
    pytester.makepyfile(
        f"""
        import time
        from pathlib import Path

        def test_waits_with_a_vm(fresh_vm):
            Path({str(ready)!r}).write_text(str(fresh_vm.pid))
            time.sleep(600)
        """
    )
    env = {**private_env, "HVSD_CACHE": str(CACHE)}
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "orchestrator.plugin", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists() and inner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if not ready.exists():
            inner.kill()
            pytest.fail(f"the inner test never got its VM: {inner.communicate()[0]}")
        assert processes_mentioning(str(pytester.path)), "its QEMU should be running"
        # As a terminal's Ctrl-C would: the whole process group of pytest
        os.killpg(inner.pid, signum)
        output, _ = inner.communicate(timeout=60)
    finally:
        if inner.poll() is None:
            os.killpg(inner.pid, signal.SIGKILL)
            inner.wait()
    assert inner.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output
    assert processes_mentioning(str(pytester.path)) == []
    assert list(Path(env["TMPDIR"]).glob("hvsd-*")) == [], "a QMP socket directory is left"


def test_a_full_cache_disk_is_named(tmp_path: Path, private_env: dict[str, str]) -> None:
    """The CLI with its cache on a full file system: one line naming the
    cause (exit 2), nothing left running."""
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    try:
        for manifest in ("qemu.json", "image.json"):
            (full / manifest).write_bytes((CACHE / manifest).read_bytes())
        # Fill it: what is left cannot hold a log line.
        with (full / "filler").open("wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(bytes(4096))
            except OSError:
                pass
        env = {**private_env, "HVSD_CACHE": str(full)}
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last == f"error: No space left on device writing the cache, {full}", last
        assert processes_mentioning(str(full)) == []
        assert list(Path(env["TMPDIR"]).iterdir()) == [], "temporary files are left"
    finally:
        subprocess.run(["umount", str(full)], check=True)
