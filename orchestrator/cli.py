"""python -m orchestrator boot | ssh | run CMD | demo | bench-boot"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from orchestrator import bench_signal
from orchestrator.accel import kvm_kind, kvm_leg
from orchestrator.artifacts import cache_dir
from orchestrator.bench import BootSample, measure_boot
from orchestrator.command import VmOptions
from orchestrator.demo import Demo
from orchestrator.errors import HarnessError
from orchestrator.fuzz import Fuzzer, summary
from orchestrator.probe import Probe
from orchestrator.vm import Vm


class Terminated(SystemExit):
    """SIGTERM, raised where the program stands so that cleanup runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)


@contextmanager
def progress(label: str) -> Iterator[None]:
    print(f"{label} ...", flush=True)
    start = time.monotonic()
    yield
    print(f"{label}: done ({time.monotonic() - start:.1f}s)", flush=True)


def new_log_dir(kind: str) -> Path:
    root = cache_dir() / "logs"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))


def _options(args: argparse.Namespace) -> VmOptions:
    return VmOptions(cpus=args.cpus, memory_mb=args.memory)


def _describe(vm: Vm) -> None:
    assert vm.accel and vm.qemu and vm.image
    modules = f" ({kvm_kind()} KVM modules)" if vm.accel.is_kvm else ""
    print(f"accelerator: {vm.accel}{modules}")
    print(
        f"qemu: {vm.qmp.version()} ({vm.qemu.binary}), base {vm.qemu.base}, "
        f"series {vm.qemu.series_length} patches ({vm.qemu.series_hash or '-'})"
    )
    print(f"guest: kernel {vm.image.kernel_release}, image {vm.image.key}")
    print(f"boot to SSH: {vm.boot_seconds:.2f}s ({vm.options.cpus} vCPUs, -cpu {vm.options.cpu})")
    print(f"logs: {vm.logs.dir}")


@contextmanager
def booted(args: argparse.Namespace, kind: str, options: VmOptions | None = None) -> Iterator[Vm]:
    """A started VM, stopped however the block is left."""
    vm = Vm(new_log_dir(kind), options or _options(args))
    with progress("boot"):
        vm.start()
    try:
        yield vm
    finally:
        vm.stop()


def cmd_boot(args: argparse.Namespace) -> int:
    with booted(args, "boot") as vm:
        _describe(vm)
        assert vm.image
        print(
            f"ssh: ssh -i {vm.image.ssh_key} -p {vm.ssh_port} "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1"
        )
        print("running; Ctrl-C stops the guest", flush=True)
        while True:
            vm.guest.run("true", timeout=30)
            time.sleep(5)


def cmd_run(args: argparse.Namespace) -> int:
    with booted(args, "run") as vm:
        rc, out, err = vm.guest.run(" ".join(args.command), timeout=args.timeout)
        sys.stdout.write(out)
        sys.stderr.write(err)
        return rc


def cmd_ssh(args: argparse.Namespace) -> int:
    with booted(args, "ssh") as vm:
        assert vm.image
        known_hosts = vm.logs.dir / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{vm.ssh_port} {vm.image.host_key_pub.read_text()}")
        try:
            return subprocess.call(
                [
                    "ssh",
                    "-i",
                    str(vm.image.ssh_key),
                    "-p",
                    str(vm.ssh_port),
                    "-o",
                    f"UserKnownHostsFile={known_hosts}",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "root@127.0.0.1",
                ]
            )
        except FileNotFoundError:
            raise HarnessError(
                "the ssh client is not installed (apt-get install openssh-client)"
            ) from None


def cmd_demo(args: argparse.Namespace) -> int:
    with booted(args, "demo", VmOptions.hyperv(cpus=args.cpus, memory_mb=args.memory)) as vm:
        _describe(vm)
        Demo(vm).run()
    print("shut down cleanly")
    return 0


def cmd_fuzz(args: argparse.Namespace) -> int:
    options = VmOptions.hyperv(cpus=2, memory_mb=args.memory)
    with booted(args, "fuzz", options) as vm:
        _describe(vm)
        outcomes = Fuzzer(vm, Probe(vm.guest)).fuzz(args.seed, args.cases)
    for line in summary(outcomes):
        print(line)
    failed = sum(1 for o in outcomes if o.problem)
    print(f"seed {args.seed}: {len(outcomes)} cases, {failed} not as the contract says")
    return 1 if failed else 0


def cmd_bench_signal(args: argparse.Namespace) -> int:
    with booted(args, "bench-signal", VmOptions.hyperv(cpus=2, memory_mb=args.memory)) as vm:
        _describe(vm)
        costs = bench_signal.measure(vm, args.calls, args.runs)
    print(
        f"{args.calls} calls per run, median of {args.runs} runs (newly set: median of "
        f"single calls), from vCPU 0 to VP 1:"
    )
    for line in bench_signal.report(costs):
        print(line)
    return 0


def cmd_bench_boot(args: argparse.Namespace) -> int:
    samples: list[BootSample] = []
    for run in range(1, args.runs + 1):
        sample = measure_boot(new_log_dir("bench"), _options(args))
        samples.append(sample)
        print(
            f"run {run}/{args.runs}: kernel to init {sample.to_init:.2f}s, "
            f"boot to SSH {sample.to_ssh:.2f}s, ratio {sample.ratio:.2f}",
            flush=True,
        )
    to_init = [s.to_init for s in samples]
    to_ssh = [s.to_ssh for s in samples]
    ratios = [s.ratio for s in samples]
    print(f"accelerator: {samples[0].accel}, {args.cpus} vCPUs, {args.memory} MiB")
    print(f"kernel to init: min {min(to_init):.2f}s median {statistics.median(to_init):.2f}s")
    print(f"boot to SSH:    min {min(to_ssh):.2f}s median {statistics.median(to_ssh):.2f}s")
    print(f"ratio SSH/init: min {min(ratios):.2f} median {statistics.median(ratios):.2f}")
    return 0


def cmd_kvm_leg(args: argparse.Namespace) -> int:
    """stdout: the accelerator name (for make); stderr: why."""
    leg = kvm_leg()
    print(f"KVM leg: {leg}", file=sys.stderr)
    print(leg.name)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m orchestrator", description="Boot and drive guests under the patched QEMU."
    )
    top.add_argument("--cpus", type=int, default=2)
    top.add_argument("--memory", type=int, default=512, help="MiB")
    sub = top.add_subparsers(dest="verb", required=True)
    sub.add_parser("boot", help="boot a guest and keep it running").set_defaults(fn=cmd_boot)
    sub.add_parser("ssh", help="boot a guest and open a shell").set_defaults(fn=cmd_ssh)
    run = sub.add_parser("run", help="boot a guest, run a command, shut down")
    run.add_argument("--timeout", type=float, default=300.0)
    run.add_argument("command", nargs="+")
    run.set_defaults(fn=cmd_run)
    sub.add_parser("demo", help="the demonstration").set_defaults(fn=cmd_demo)
    fuzz = sub.add_parser("fuzz", help="random calls checked against docs/contract.toml")
    fuzz.add_argument("--seed", type=int, default=1)
    fuzz.add_argument("--cases", type=int, default=400)
    fuzz.set_defaults(fn=cmd_fuzz)
    signal_bench = sub.add_parser("bench-signal", help="per-call cost of the signalling paths")
    signal_bench.add_argument("--calls", type=int, default=2000)
    signal_bench.add_argument("--runs", type=int, default=3)
    signal_bench.set_defaults(fn=cmd_bench_signal)
    leg = sub.add_parser("kvm-leg", help="print the KVM leg's ACCEL: kvm or nested-kvm")
    leg.set_defaults(fn=cmd_kvm_leg)
    bench = sub.add_parser("bench-boot", help="boot-to-SSH against kernel-to-init")
    bench.add_argument("--runs", type=int, default=5)
    bench.set_defaults(fn=cmd_bench_boot)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; guest stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.stdout.flush()
