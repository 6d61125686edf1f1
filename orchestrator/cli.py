"""hv-signal-direct (or python -m orchestrator) boot | ssh | run CMD | demo |
fuzz | bench-signal | bench-boot | stress | kvm-leg | plot.

Options go before or after the verb. Exit status: 0 as expected, 1 a
result that contradicts the contract (fuzz), 2 a harness error (one line
naming the cause and the log), 130 or 143 when interrupted."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType

from orchestrator import bench_signal, plots, results, sanitize, stress
from orchestrator.accel import kvm_kind, kvm_leg
from orchestrator.artifacts import cache_dir
from orchestrator.bench import BootSample, measure_boot
from orchestrator.command import VmOptions
from orchestrator.demo import Demo
from orchestrator.errors import HarnessError
from orchestrator.fuzz import (
    TOP_OF_RAM_MEMORY_MB,
    Fuzzer,
    fuzz_vm_options,
    pairs_covered,
    summary,
    top_of_ram_pages,
)
from orchestrator.probe import Probe
from orchestrator.progress import Progress
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


EXIT_CONTRACT = 1  # a result the contract says is wrong
EXIT_HARNESS = 2  # the harness could not do what was asked


def _options(args: argparse.Namespace) -> VmOptions:
    """The Hyper-V guest the tests use, or with --plain one without enlightenments."""
    if args.plain:
        return VmOptions(cpus=args.cpus, memory_mb=args.memory)
    return VmOptions.hyperv(cpus=args.cpus, memory_mb=args.memory)


def _print_json(args: argparse.Namespace, value: object) -> None:
    """To the real stdout: with --json everything else goes to stderr."""
    print(json.dumps(value, indent=2, default=str), file=args.stdout)


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
def booted(
    args: argparse.Namespace,
    kind: str,
    options: VmOptions | None = None,
    log_dir: Path | None = None,
) -> Iterator[Vm]:
    """A started VM, stopped however the block is left."""
    vm = Vm(log_dir or new_log_dir(kind), options or _options(args))
    with progress("boot"):
        vm.start()
    try:
        yield vm
    finally:
        vm.stop()


def cmd_boot(args: argparse.Namespace) -> int:
    # A second QMP monitor for the user: the harness keeps the first one
    with tempfile.TemporaryDirectory(prefix="hvsd-qmp-") as runtime:
        user_qmp = Path(runtime) / "qmp.sock"
        options = _options(args)
        options = dataclasses.replace(
            options,
            extra_args=(*options.extra_args, "-qmp", f"unix:{user_qmp},server=on,wait=off"),
        )
        with booted(args, "boot", options) as vm:
            _describe(vm)
            assert vm.image and vm.accel
            print(
                f"ssh: ssh -i {vm.image.ssh_key} -p {vm.ssh_port} "
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1"
            )
            if vm.accel.name == "nested-kvm":
                print("qmp: inside the host guest (nested-kvm); --accel tcg to attach qmp-shell")
            else:
                print(f"qmp: {user_qmp} (qmp-shell {user_qmp})")
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
        report = Demo(vm).run()
    if args.json:
        _print_json(args, dataclasses.asdict(report))
    else:
        for line in report.lines():
            print(line)
    print("shut down cleanly")
    return 0 if all(row.ok for row in report.errors) else EXIT_CONTRACT


def sanitizer_reports(log_dir: Path) -> int:
    """With the sanitized QEMU, once it has stopped: prints the line of its
    reports and returns their count."""
    if not sanitize.enabled():
        return 0
    reports = sanitize.find_reports([log_dir])
    print(reports.line(), flush=True)
    return reports.count


def cmd_fuzz(args: argparse.Namespace) -> int:
    # vCPU 1's SynIC pages at the top of RAM need RAM above 4 GiB
    memory = max(args.memory, TOP_OF_RAM_MEMORY_MB)
    log_dir = new_log_dir("fuzz")
    try:
        with booted(args, "fuzz", fuzz_vm_options(memory), log_dir) as vm:
            _describe(vm)
            identity = results.vm_identity(vm)
            fuzzer = Fuzzer(vm, Probe(vm.guest), top_of_ram=top_of_ram_pages(memory))
            outcomes = fuzzer.fuzz(args.seed, args.cases, progress=Progress("cases"))
    except BaseException:
        sanitizer_reports(log_dir)  # ASan stops QEMU at its first report
        raise
    failed = [o for o in outcomes if o.problem]
    data = {
        "seed": args.seed,
        "cases": len(outcomes),
        "failed": len(failed),
        "rows": dict(Counter(o.case.row_id for o in outcomes)),
        "pairs": sorted(f"{a}>{b}" for a, b in pairs_covered([o.case for o in outcomes])),
        "failures": [
            {"row": o.case.row_id, "case": o.case.label, "problem": o.problem} for o in failed
        ],
    }
    if args.json:
        _print_json(args, data)
    else:
        for line in summary(outcomes):
            print(line)
        print(f"seed {args.seed}: {len(outcomes)} cases, {len(failed)} not as the contract says")
    params = {"seed": args.seed, "cases": args.cases, "memory_mb": memory}
    print(results.save(log_dir, "fuzz", params, identity, data).line())
    if sanitizer_reports(log_dir):
        return EXIT_HARNESS
    return EXIT_CONTRACT if failed else 0


def cmd_bench_signal(args: argparse.Namespace) -> int:
    options = VmOptions.hyperv(cpus=2, memory_mb=args.memory, cpu=bench_signal.BENCH_CPU)
    log_dir = new_log_dir("bench-signal")
    with booted(args, "bench-signal", options, log_dir) as vm:
        _describe(vm)
        identity = results.vm_identity(vm)
        costs = bench_signal.measure(vm, args.calls, args.runs, progress=Progress("timings"))
    data = [{**dataclasses.asdict(cost), "median_ns": cost.median} for cost in costs]
    if args.json:
        _print_json(args, data)
    else:
        print(
            f"{args.calls} calls per run, median of {args.runs} runs (newly set: median of "
            f"single calls), from vCPU 0 to VP 1:"
        )
        for line in bench_signal.report(costs):
            print(line)
    params = {"calls": args.calls, "runs": args.runs}
    print(results.save(log_dir, "bench-signal", params, identity, data).line())
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
    data = [{**dataclasses.asdict(sample), "ratio": sample.ratio} for sample in samples]
    if args.json:
        _print_json(args, data)
    else:
        to_init = [s.to_init for s in samples]
        to_ssh = [s.to_ssh for s in samples]
        ratios = [s.ratio for s in samples]
        print(f"accelerator: {samples[0].accel}, {args.cpus} vCPUs, {args.memory} MiB")
        print(f"kernel to init: min {min(to_init):.2f}s median {statistics.median(to_init):.2f}s")
        print(f"boot to SSH:    min {min(to_ssh):.2f}s median {statistics.median(to_ssh):.2f}s")
        print(f"ratio SSH/init: min {min(ratios):.2f} median {statistics.median(ratios):.2f}")
    params = {"runs": args.runs, "cpus": args.cpus, "memory_mb": args.memory}
    identity = {"accel": samples[0].accel.name, "qemu": None}
    saved = results.save(new_log_dir("bench-boot"), "bench-boot", params, identity, data)
    print(saved.line())
    return 0


def cmd_stress(args: argparse.Namespace) -> int:
    """One VM per vCPU count; exit 1 if any lost or doubled a signal."""
    reports: list[stress.StressReport] = []
    for cpus in args.vcpu_counts:
        options = VmOptions.hyperv(cpus=cpus, memory_mb=args.memory, boot_timeout=300.0)
        with booted(args, f"stress-{cpus}", options) as vm:
            _describe(vm)
            identity = results.vm_identity(vm)
            reports.append(
                stress.run_batches(
                    vm,
                    args.signals,
                    args.rounds,
                    args.calls_per_round,
                    progress=Progress("contested transitions" if args.transitions else "signals"),
                    transitions=args.transitions,
                )
            )
        for line in stress.report_lines(reports[-1]):
            print(line)
    problems = [problem for report in reports for problem in report.problems()]
    for problem in problems:
        print(f"not as the contract says: {problem}")
    data = [
        {
            "cpus": r.cpus,
            "signals": r.signals,
            "newly_signaled": r.newly,
            "transitions": r.transitions,
            "contested_transitions": r.contested,
            "irqs": r.irqs,
            "lost": r.lost,
            "doubled": r.doubled,
            "qemu": r.qemu_status,
            "problems": r.problems(),
        }
        for r in reports
    ]
    if args.json:
        _print_json(args, data)
    params = {
        "vcpu_counts": args.vcpu_counts,
        "signals": args.signals,
        "transitions": args.transitions,
        "rounds": args.rounds,
        "calls_per_round": args.calls_per_round,
    }
    print(results.save(new_log_dir("stress"), "stress", params, identity, data).line())
    return EXIT_CONTRACT if problems else 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Redraws saved results; several of one verb (e.g. per accelerator) in one drawing."""
    payloads = [results.load(Path(path)) for path in args.files]
    out = (
        Path(args.out)
        if args.out
        else Path(args.files[0]).with_name(f"{payloads[0]['verb']}-plot.svg")
    )
    plots.draw(payloads, out)
    print(f"plot: {out}")
    return 0


def cmd_kvm_leg(args: argparse.Namespace) -> int:
    """stdout: the accelerator name (for make); stderr: why."""
    leg = kvm_leg()
    print(f"KVM leg: {leg}", file=sys.stderr)
    print(leg.name)
    return 0


DEFAULTS: dict[str, object] = {
    "cpus": 2,
    "memory": 512,
    "accel": None,
    "qemu": None,
    "json": False,
    "plain": False,
}
JSON_VERBS = ("demo", "fuzz", "bench-signal", "bench-boot", "stress")


def _common() -> argparse.ArgumentParser:
    """Options every verb takes, before or after it (defaults applied after parsing)."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--cpus", type=int, help="vCPUs (default 2)")
    common.add_argument("--memory", type=int, help="MiB (default 512)")
    common.add_argument("--accel", choices=("tcg", "kvm", "nested-kvm"), help="as ACCEL=")
    common.add_argument("--qemu", metavar="PATH", help="this qemu-system-x86_64, as QEMU=")
    common.add_argument(
        "--json", action="store_true", help=f"JSON results ({', '.join(JSON_VERBS)})"
    )
    common.add_argument(
        "--plain", action="store_true", help="boot/ssh/run: a guest without Hyper-V enlightenments"
    )
    return common


def _version() -> str:
    try:
        ours = version("hv-signal-direct")
    except PackageNotFoundError:  # not installed: running from the tree
        ours = "(not installed)"
    manifest = cache_dir() / "qemu.json"
    try:
        qemu = json.loads(manifest.read_text())
        built = f"{qemu['version']}, {qemu['series_length']} patches ({qemu['series_hash']})"
    except (OSError, ValueError, KeyError):
        built = "no QEMU built yet (make qemu)"
    return f"hv-signal-direct {ours}; {built}"


def parser() -> argparse.ArgumentParser:
    common = _common()
    top = argparse.ArgumentParser(
        prog="hv-signal-direct",
        description="Boot and drive guests under the patched QEMU.",
        parents=[common],
    )
    top.add_argument("--version", action="version", version=_version())
    sub = top.add_subparsers(dest="verb", required=True)

    def verb(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help, parents=[common])
        command.set_defaults(fn=fn)
        return command

    verb("boot", cmd_boot, "boot a guest and keep it running; prints how to ssh and attach QMP")
    verb("ssh", cmd_ssh, "boot a guest and open a shell")
    run = verb("run", cmd_run, "boot a guest, run a command, shut down")
    run.add_argument("--timeout", type=float, default=300.0)
    # Everything from the first word of the command on is the command's
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    verb("demo", cmd_demo, "the demonstration")
    fuzz = verb("fuzz", cmd_fuzz, "random calls checked against orchestrator/contract.toml")
    fuzz.add_argument("--seed", type=int, default=1)
    fuzz.add_argument("--cases", type=int, default=400)
    signal_bench = verb("bench-signal", cmd_bench_signal, "per-call cost of the signalling paths")
    signal_bench.add_argument("--calls", type=int, default=2000)
    signal_bench.add_argument("--runs", type=int, default=3)
    racing = verb("stress", cmd_stress, "racing vCPUs signalling one flag: lost or doubled signals")
    racing.add_argument(
        "--vcpu-counts",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[4, 8],
        help="one VM per count, e.g. 4,8",
    )
    racing.add_argument("--signals", type=int, default=1_000_000, help="calls per vCPU count")
    racing.add_argument(
        "--transitions",
        type=int,
        help="run until this many contested transitions per vCPU count, instead of --signals",
    )
    racing.add_argument("--rounds", type=int, default=1000, help="rounds per batch")
    racing.add_argument(
        "--calls-per-round", type=int, default=50, help="each caller's calls in a round"
    )
    verb("kvm-leg", cmd_kvm_leg, "print the KVM leg's ACCEL: kvm or nested-kvm")
    redraw = verb("plot", cmd_plot, "redraw saved results.json files, one panel per file")
    redraw.add_argument("files", nargs="+", metavar="RESULTS.json")
    redraw.add_argument("--out", metavar="SVG", help="default: beside the first file")
    bench = verb("bench-boot", cmd_bench_boot, "boot-to-SSH against kernel-to-init")
    bench.add_argument("--runs", type=int, default=5)
    return top


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    top = parser()
    args = top.parse_args(argv)
    for name, default in DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.verb == "run" and not args.command:
        top.error("run needs a command")
    if args.json and args.verb not in JSON_VERBS:
        top.error(f"--json is for {', '.join(JSON_VERBS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # The accelerator and QEMU are read from the environment by every layer below
    if args.accel:
        os.environ["ACCEL"] = args.accel
    if args.qemu:
        os.environ["QEMU"] = args.qemu
    args.stdout = sys.stdout
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        with redirect_stdout(sys.stderr if args.json else sys.stdout):
            return fn(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    except OSError as exc:
        # A full or read-only cache (logs included), most often
        where = exc.filename or f"the cache, {cache_dir()}"
        print(f"error: {exc.strerror or exc} writing {where}", file=sys.stderr)
        return EXIT_HARNESS
    except KeyboardInterrupt:
        print("interrupted; guest stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.stdout.flush()


def entry() -> None:
    """The hv-signal-direct console script."""
    sys.exit(main())
