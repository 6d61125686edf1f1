"""An upgrade is a migration: from the QEMU users run today (the same base
without the series, `make qemu-stock`) to ours, and back, under TCG, with the
command line existing users have (hv-* flags, no x-hv-tcg=on: Hyper-V under
TCG stays off, as before the series), on the base's newest q35 machine type
and an older one, live and through a file.

After each move the guest runs, its clock goes on, a timer-driven sleep
ends, and a command over SSH answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.command import VmOptions
from orchestrator.migration import load_from_file, migrate_live, save_to_file
from orchestrator.vm import Vm

pytestmark = [
    pytest.mark.vm,
    pytest.mark.accel("tcg", reason="the QEMUs to move between run on this host under TCG"),
]

USERS_CPU = "max,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-stimer,hv-vapic"
MACHINES = ("pc-q35-10.2", "pc-q35-9.2")


def uptime(vm: Vm) -> float:
    return float(vm.guest.run("cat /proc/uptime", check=True).out.split()[0])


def assert_alive(vm: Vm, uptime_before: float) -> float:
    """The guest runs on: QMP says so, SSH answers, a sleep (a timer) ends and
    the guest's clock has moved on from before the move."""
    assert vm.qmp.status() == "running"
    assert vm.guest.run("echo moved", timeout=60, check=True).out.strip() == "moved"
    started = time.monotonic()
    assert vm.guest.run("sleep 1", timeout=60).rc == 0
    assert time.monotonic() - started >= 1.0
    now = uptime(vm)
    assert now >= uptime_before + 1.0, (uptime_before, now)
    return now


@contextmanager
def started(log_dir: Path, options: VmOptions, stock: bool, incoming: bool) -> Iterator[Vm]:
    name = "stock" if stock else "patched"
    with Vm(log_dir / name, options, name=name, incoming=incoming, stock_qemu=stock) as vm:
        yield vm


@contextmanager
def moved(source: Vm, tmp_path: Path, way: str, to_stock: bool, step: int) -> Iterator[Vm]:
    """`source`'s guest in a QEMU of the other kind; `source` is stopped."""
    log_dir = tmp_path / f"step{step}"
    state = tmp_path / f"step{step}.state"
    if way == "file":
        save_to_file(source, state)
        source.stop()
    with started(log_dir, source.options, to_stock, incoming=True) as destination:
        if way == "live":
            migrate_live(source, destination)
            source.stop()
        else:
            load_from_file(destination, state)
        yield destination


@pytest.mark.parametrize("way", ["live", "file"])
@pytest.mark.parametrize("machine", MACHINES)
def test_stock_to_patched_and_back(tmp_path: Path, machine: str, way: str) -> None:
    options = VmOptions(cpu=USERS_CPU, machine=machine)
    with started(tmp_path / "step0", options, stock=True, incoming=False) as stock:
        assert stock.qemu is not None and stock.qemu.series_length == 0
        before = uptime(stock)
        with moved(stock, tmp_path, way, to_stock=False, step=1) as patched:
            assert patched.qemu is not None and patched.qemu.series_length > 0
            before = assert_alive(patched, before)
            with moved(patched, tmp_path, way, to_stock=True, step=2) as back:
                assert_alive(back, before)
