"""Loads the patched KVM modules (kvm-modules.json) in a TCG guest whose CPU
(-cpu max) has SVM, and runs the patched hyperv_features selftest there.
With --stock, the image's own modules instead: the same selftest then
expects HV_STATUS_INVALID_HYPERCALL_CODE for 0x00C0 and skips the exit test.
Exits with the selftest's status."""

import argparse
import json
import os
import sys
from pathlib import Path

from orchestrator.accel import choose_accel
from orchestrator.command import VmOptions
from orchestrator.vm import Vm


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stock", action="store_true")
    parser.add_argument("--log-dir", default="test-logs/kvm-modules-smoke")
    args = parser.parse_args()
    cache = Path(os.environ.get("HVSD_CACHE", Path.home() / ".cache/hv-signal-direct"))
    manifest = json.loads((cache / "kvm-modules.json").read_text())
    options = VmOptions(cpu="max", memory_mb=1024, boot_timeout=300)
    with Vm(Path(args.log_dir), options, accel=choose_accel("tcg")) as vm:
        guest = vm.guest

        def run(command: str, timeout: float = 600) -> int:
            rc, out, err = guest.run(command, timeout=timeout)
            print(f"$ {command}\n{out}{err}[exit {rc}]", flush=True)
            return rc

        guest.put(Path(manifest["selftests"]["hyperv_features"]), "/tmp/hyperv_features")
        if args.stock:
            load = "busybox modprobe kvm_amd"
        else:
            for name in ("kvm", "kvm-amd"):
                guest.put(Path(manifest["modules"][name]), f"/tmp/{name}.ko")
            load = (
                "busybox insmod /lib/modules/$(uname -r)/kernel/virt/lib/irqbypass.ko"
                " && busybox insmod /tmp/kvm.ko && busybox insmod /tmp/kvm-amd.ko"
            )
        if run(f"{load} && grep kvm /proc/modules && ls -l /dev/kvm") != 0:
            print("error: the KVM modules did not load", file=sys.stderr)
            return 1
        return run("chmod +x /tmp/hyperv_features && cd /tmp && ./hyperv_features", timeout=900)


if __name__ == "__main__":
    sys.exit(main())
