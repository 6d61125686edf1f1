"""Choosing the accelerator: TCG unless ACCEL says otherwise.

`nested-kvm` runs the test guest under KVM inside a TCG "KVM host" guest
(orchestrator/nested.py); `kvm` runs it under the host's own KVM. Neither is
ever chosen silently: `make test` is TCG, `make test-kvm` picks the KVM leg
with `kvm_leg()`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from orchestrator.errors import HarnessError

# KVM_CHECK_EXTENSION capabilities the SynIC tests need from a host kernel.
_KVM_HYPERV_CAPS = {
    "KVM_CAP_HYPERV": 44,
    "KVM_CAP_HYPERV_VP_INDEX": 107,
    "KVM_CAP_HYPERV_SYNIC2": 148,
}

# Runs in a child process so that a wedged /dev/kvm cannot hang the harness.
_PROBE = """
import fcntl, os, sys
fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
if fcntl.ioctl(fd, 0xAE00) != 12:
    print("KVM API version is not 12"); sys.exit(1)
for name, cap in %r.items():
    if fcntl.ioctl(fd, 0xAE03, cap) <= 0:
        print("host KVM lacks " + name); sys.exit(1)
os.close(fcntl.ioctl(fd, 0xAE01, 0))
print("host KVM offers the Hyper-V capabilities")
"""


ACCELS = ("tcg", "kvm", "nested-kvm")


@dataclass(frozen=True)
class Accel:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"

    @property
    def qemu_accel(self) -> str:
        """What the test guest's QEMU gets as -accel."""
        return "tcg" if self.name == "tcg" else "kvm"

    @property
    def nested(self) -> bool:
        return self.name == "nested-kvm"

    @property
    def is_kvm(self) -> bool:
        return self.name in ("kvm", "nested-kvm")


def probe_kvm(timeout: float = 5.0) -> tuple[bool, str]:
    """Whether /dev/kvm works and offers the Hyper-V capabilities, and why not."""
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE % _KVM_HYPERV_CAPS],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"/dev/kvm did not answer within {timeout:.0f}s"
    message = done.stdout.strip() or done.stderr.strip().splitlines()[-1:] or ["?"]
    text = message if isinstance(message, str) else message[0]
    return done.returncode == 0, text


def choose_accel(requested: str | None = None) -> Accel:
    """ACCEL=tcg|kvm|nested-kvm forces a choice; otherwise TCG, never KVM silently."""
    requested = requested if requested is not None else os.environ.get("ACCEL", "")
    if requested:
        if requested not in ACCELS:
            raise HarnessError(f"ACCEL={requested} is not one of: {', '.join(ACCELS)}")
        return Accel(requested, "forced by ACCEL")
    return Accel("tcg", "default; ACCEL=kvm or nested-kvm for the KVM leg")


def kvm_leg() -> Accel:
    """The accelerator of the KVM leg: the host's KVM if usable, else nested KVM."""
    usable, why = probe_kvm()
    if usable:
        return Accel("kvm", why)
    return Accel("nested-kvm", f"host KVM not usable: {why}")


KVM_KINDS = ("stock", "patched")


def kvm_kind() -> str:
    """KVM_MODULES=stock (the default) or patched: which KVM modules the KVM
    leg's host loads (patched: ours from `make kvm-modules`, which forward
    0x00C0). KVM, its name before, is still read when KVM_MODULES is unset."""
    kind = os.environ.get("KVM_MODULES")
    if kind is None and (old := os.environ.get("KVM")):
        print(f"note: KVM={old} is deprecated; use KVM_MODULES={old}", file=sys.stderr)
        kind = old
    kind = kind or "stock"
    if kind not in KVM_KINDS:
        raise HarnessError(f"KVM_MODULES={kind} is not one of: {', '.join(KVM_KINDS)}")
    return kind
