"""The booted guest, seen from inside (SSH) and from the host (QMP)."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import pytest

from orchestrator.ssh import Guest
from orchestrator.vm import Vm

pytestmark = pytest.mark.vm

# Writes a pattern into its own memory, prints that memory's guest physical
# address (from /proc/self/pagemap, readable with PFNs as root), and keeps
# the memory alive until killed. perl-base is in every Debian image.
HOLD_PATTERN = r"""
my $buf = $ARGV[0] x 512;
my $va = unpack("J", pack("p", $buf));
open(my $pagemap, "<", "/proc/self/pagemap") or die "pagemap: $!";
sysseek($pagemap, int($va / 4096) * 8, 0);
sysread($pagemap, my $entry, 8) == 8 or die "short pagemap read";
my $e = unpack("Q", $entry);
die "page not present" unless $e & (1 << 63);
my $pfn = $e & ((1 << 55) - 1);
die "no PFN (not root?)" unless $pfn;
printf("%d\n", $pfn * 4096 + $va % 4096);
close(STDOUT);
sleep(600);
"""


def test_guest_runs_the_image_kernel_on_the_configured_cpus(vm: Vm) -> None:
    assert vm.image is not None
    assert vm.guest.run("uname -r", check=True).out.strip() == vm.image.kernel_release
    assert vm.guest.run("nproc", check=True).out.strip() == str(vm.options.cpus)


def test_run_returns_status_and_both_streams(guest: Guest) -> None:
    rc, out, err = guest.run("echo to-out; echo to-err >&2; exit 3")
    assert (rc, out, err) == (3, "to-out\n", "to-err\n")


def test_files_go_in_and_come_back_unchanged(guest: Guest, tmp_path: Path) -> None:
    payload = secrets.token_bytes(300_000)
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    guest.put(local, "/tmp/payload.bin")
    inside = guest.run("sha256sum /tmp/payload.bin", check=True).out.split()[0]
    assert inside == hashlib.sha256(payload).hexdigest()
    back = tmp_path / "back.bin"
    guest.get("/tmp/payload.bin", back)
    assert back.read_bytes() == payload


def test_qmp_sees_the_qemu_that_was_built(vm: Vm) -> None:
    assert vm.qmp.status() == "running"
    assert vm.qemu is not None
    if vm.qemu.version:  # empty for a $QEMU override
        assert vm.qemu.version.endswith(vm.qmp.version())


def test_host_reads_the_bytes_the_guest_wrote(vm: Vm) -> None:
    token = secrets.token_hex(8)  # 16 characters; the buffer is 8 KiB of them
    vm.guest.put_text(HOLD_PATTERN, "/tmp/hold.pl")
    started = vm.guest.run(
        f"perl /tmp/hold.pl {token} >/tmp/hold.addr 2>/tmp/hold.err </dev/null & "
        "for i in $(seq 100); do [ -s /tmp/hold.addr ] && break; sleep 0.1; done; "
        "cat /tmp/hold.addr /tmp/hold.err",
        check=True,
    )
    try:
        address = int(started.out.split()[0])
        to_page_end = 4096 - address % 4096
        seen = vm.qmp.read_phys(address, to_page_end)
        expected = (token * 512).encode()[:to_page_end]
        assert seen == expected
    finally:
        vm.guest.run("pkill -f /tmp/hold.pl || true")


@pytest.mark.long(seconds=14)
def test_system_reset_over_qmp_reboots_the_guest(fresh_vm: Vm) -> None:
    first = fresh_vm.guest.run("cat /proc/sys/kernel/random/boot_id", check=True).out
    fresh_vm.guest.run("echo before-reset > /root/marker && sync", check=True)
    fresh_vm.reboot()
    second = fresh_vm.guest.run("cat /proc/sys/kernel/random/boot_id", check=True).out
    assert first != second
    assert fresh_vm.qmp.status() == "running"
    # The root disk is a snapshot of the image, so a file written before the
    # reset survives it (same QEMU process), while uptime starts again.
    assert fresh_vm.guest.run("cat /root/marker").out == "before-reset\n"
    uptime = float(fresh_vm.guest.run("cut -d' ' -f1 /proc/uptime", check=True).out)
    assert uptime < 60
