"""KVM's own Hyper-V selftests in the KVM host's kernel, stock against ours.

Boots a TCG guest (-cpu max: SVM) on the kernel the nested-kvm KVM host runs,
loads its stock kvm modules and runs every hyperv_* selftest that
`make kvm-modules` built from the patched tree, then unloads them, loads ours
(kvm-modules.json) and runs the same selftests again. With --stock, the stock
round alone.

Prints a table of each selftest's result per round (PASS, SKIP, or FAIL with
its exit status) and exits 1 when a selftest's result differs between the
rounds, or when hyperv_features (the one the series extends) does not pass
with ours. A selftest that fails with both is listed as such: under TCG's
emulated SVM some do, and that is not the series' doing."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator.accel import choose_accel
from orchestrator.artifacts import find_image
from orchestrator.command import VmOptions
from orchestrator.nested import kvm_host_image
from orchestrator.payload import patched_kvm_modules, patched_kvm_selftests, patched_kvm_vermagic
from orchestrator.ssh import Guest
from orchestrator.vm import Vm

KSFT_SKIP = 4
EXTENDED = "hyperv_features"
STOCK_LOAD = "busybox modprobe kvm_amd"
OURS_LOAD = (
    "busybox modprobe irqbypass && busybox insmod /tmp/ours/kvm.ko"
    " && busybox insmod /tmp/ours/kvm-amd.ko && grep -q O /sys/module/kvm/taint"
)
UNLOAD = "busybox rmmod kvm_amd && busybox rmmod kvm"


@dataclass(frozen=True)
class Outcome:
    rc: int

    def __str__(self) -> str:
        return {0: "PASS", KSFT_SKIP: "SKIP"}.get(self.rc, f"FAIL ({self.rc})")


def run(guest: Guest, command: str, timeout: float = 600) -> int:
    rc, out, err = guest.run(command, timeout=timeout)
    print(f"$ {command}\n{out}{err}[exit {rc}]", flush=True)
    return rc


def round_of(guest: Guest, load: str, tests: list[str]) -> dict[str, Outcome] | None:
    if run(guest, f"{load} && grep -E '^kvm' /proc/modules && ls -l /dev/kvm") != 0:
        return None
    results = {test: Outcome(run(guest, f"cd /tmp/selftests && ./{test}", 900)) for test in tests}
    run(guest, UNLOAD)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stock", action="store_true", help="the stock modules' round alone")
    parser.add_argument("--log-dir", default="test-logs/kvm-modules-smoke")
    args = parser.parse_args()
    selftests = patched_kvm_selftests()
    image = kvm_host_image(find_image(), patched_kvm_vermagic())
    options = VmOptions(cpu="max", memory_mb=1024, boot_timeout=300)
    with Vm(Path(args.log_dir), options, accel=choose_accel("tcg"), image=image) as vm:
        guest = vm.guest
        run(guest, "uname -r; mkdir -p /tmp/selftests /tmp/ours")
        for name, path in selftests.items():
            guest.put(path, f"/tmp/selftests/{name}")
        run(guest, "chmod +x /tmp/selftests/*")
        for name, path in patched_kvm_modules().items():
            guest.put(path, f"/tmp/ours/{name}.ko")
        tests = sorted(selftests)
        rounds = {"stock": round_of(guest, STOCK_LOAD, tests)}
        if not args.stock:
            rounds["ours"] = round_of(guest, OURS_LOAD, tests)
    for name, results in rounds.items():
        if results is None:
            print(
                f"error: the {name} KVM modules did not load; see {args.log_dir}", file=sys.stderr
            )
            return 1
    print(f"\n{'selftest':<30}" + "".join(f"{name:<12}" for name in rounds))
    differ = []
    for test in tests:
        outcomes = [results[test] for results in rounds.values() if results is not None]
        print(f"{test:<30}" + "".join(f"{outcome!s:<12}" for outcome in outcomes))
        if len({o.rc for o in outcomes}) > 1:
            differ.append(test)
    ours = rounds.get("ours")
    if differ:
        print(f"error: results differ between the rounds: {' '.join(differ)}", file=sys.stderr)
        return 1
    if ours is not None and ours[EXTENDED].rc != 0:
        print(f"error: {EXTENDED} does not pass with our modules", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
