"""Choosing the accelerator: KVM only where it would actually serve the tests."""

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


@dataclass(frozen=True)
class Accel:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


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
    """ACCEL=tcg|kvm forces a choice; otherwise KVM only if probe_kvm says yes."""
    requested = requested if requested is not None else os.environ.get("ACCEL", "")
    if requested:
        if requested not in ("tcg", "kvm"):
            raise HarnessError(f"ACCEL={requested} is not one of: tcg, kvm")
        return Accel(requested, "forced by ACCEL")
    usable, why = probe_kvm()
    if usable:
        return Accel("kvm", why)
    return Accel("tcg", why)
