#!/usr/bin/env python3
"""make mutate: how many plausible QEMU bugs the guest tests catch.

Each file in qemu-patches/mutations/ is one bug: a `what:` line, a `kill:`
line (the pytest arguments of the tests that should catch it) and a diff
against the series' tip. Every mutant is built from the cached QEMU tree,
one at a time, and copied aside; the tree is restored before any test runs,
so a `make test` started meanwhile never gets a mutant for long. Then each
mutant runs its tests (QEMU=<mutant>): a failing test kills it. A mutant
that was killed has its tests run once more against the clean QEMU, so that
a test that fails anyway does not count as a kill.

Prints one row per mutation and `N of M mutations killed`; exits 1 if any
survived or could not be judged. MUTATIONS=01,04 runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The cache's location is the orchestrator's (make venv installs it)
from orchestrator.artifacts import cache_dir

PROJECT = Path(__file__).resolve().parent.parent
MUTATIONS_DIR = PROJECT / "qemu-patches" / "mutations"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    kill: tuple[str, ...]
    patch: Path


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    verdict: str  # killed | survived | error
    detail: str
    seconds: float


@dataclass(frozen=True)
class QemuTree:
    src: Path
    build: Path

    @property
    def binary(self) -> Path:
        return self.build / "qemu-system-x86_64"

    @property
    def marker(self) -> Path:
        # build-qemu.sh restores the tree if it finds this (an interrupted run)
        return self.src.parent / "mutating"


class MutateError(Exception):
    pass


def load_mutations(directory: Path, only: set[str]) -> list[Mutation]:
    mutations = []
    for patch in sorted(directory.glob("*.patch")):
        header: dict[str, str] = {}
        for line in patch.read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
        if "what" not in header or "kill" not in header:
            raise MutateError(f"{patch}: needs 'what:' and 'kill:' lines before the diff")
        name = patch.stem
        if only and not any(name.startswith(prefix) for prefix in only):
            continue
        mutations.append(Mutation(name, header["what"], tuple(shlex.split(header["kill"])), patch))
    if not mutations:
        raise MutateError(
            f"no mutations in {directory}" + (f" matching {sorted(only)}" if only else "")
        )
    return mutations


def find_tree() -> QemuTree:
    manifest = cache_dir() / "qemu.json"
    try:
        binary = Path(json.loads(manifest.read_text())["binary"])
    except (OSError, ValueError, KeyError) as exc:
        raise MutateError(f"no built QEMU ({manifest}: {exc}); run 'make qemu'") from None
    tree = QemuTree(src=binary.parent.parent / "src", build=binary.parent)
    if not (tree.src / ".git").exists():
        raise MutateError(f"{tree.src} is not the QEMU tree the binary was built from")
    return tree


def git(tree: QemuTree, *args: str, log: Path) -> None:
    with log.open("a") as out:
        subprocess.run(["git", "-C", str(tree.src), *args], stdout=out, stderr=out, check=True)


def ninja(tree: QemuTree, log: Path) -> None:
    with log.open("a") as out:
        subprocess.run(
            ["ninja", "-C", str(tree.build), "qemu-system-x86_64"],
            stdout=out,
            stderr=out,
            check=True,
        )


@contextmanager
def mutating(tree: QemuTree, log: Path) -> Iterator[None]:
    """The tree may hold a mutation inside; on the way out it is the series' tip again."""
    with log.open("a") as out:
        dirty = subprocess.run(
            ["git", "-C", str(tree.src), "diff", "--quiet", "HEAD"], stdout=out, stderr=out
        )
    if dirty.returncode != 0:
        raise MutateError(f"{tree.src} has local changes; run 'make qemu' to restore it")
    tree.marker.write_text(str(os.getpid()))
    try:
        yield
    finally:
        git(tree, "checkout", "-q", "-f", "HEAD", "--", ".", log=log)
        ninja(tree, log)
        tree.marker.unlink(missing_ok=True)


def build_mutants(
    tree: QemuTree, mutations: list[Mutation], out: Path, log: Path
) -> dict[str, Path]:
    binaries: dict[str, Path] = {}
    with mutating(tree, log):
        for mutation in mutations:
            print(f"mutate: build {mutation.name} ... ", end="", flush=True)
            started = time.monotonic()
            try:
                git(tree, "apply", str(mutation.patch), log=log)
            except subprocess.CalledProcessError:
                print(f"does not apply (see {log})")
                continue
            try:
                ninja(tree, log)
                binary = out / mutation.name / "qemu-system-x86_64"
                binary.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(tree.binary, binary)
                binaries[mutation.name] = binary
                print(f"done ({time.monotonic() - started:.0f}s)")
            except subprocess.CalledProcessError:
                print(f"does not build (see {log})")
            finally:
                git(tree, "apply", "-R", str(mutation.patch), log=log)
    return binaries


def failed_tests(junit: Path) -> list[str]:
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return []
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name", "?"))
    return failed


def run_tests(mutation: Mutation, qemu: Path, logs: Path) -> tuple[int, list[str]]:
    logs.mkdir(parents=True, exist_ok=True)
    junit = logs / "junit.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        *mutation.kill,
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        f"--hvsd-logs={logs}",
        f"--junitxml={junit}",
    ]
    with (logs / "pytest.log").open("w") as out:
        result = subprocess.run(
            command,
            cwd=PROJECT,
            env={**os.environ, "QEMU": str(qemu)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return result.returncode, failed_tests(junit)


def judge(mutation: Mutation, mutant: Path | None, clean: Path, logs: Path) -> Outcome:
    started = time.monotonic()
    if mutant is None:
        return Outcome(mutation, "error", "mutant not built", 0.0)
    rc, failed = run_tests(mutation, mutant, logs / mutation.name / "mutant")
    if rc == 0:
        return Outcome(mutation, "survived", "its tests passed", time.monotonic() - started)
    if rc != 1:
        return Outcome(
            mutation,
            "error",
            f"pytest exit {rc} (see {logs / mutation.name})",
            time.monotonic() - started,
        )
    clean_rc, clean_failed = run_tests(mutation, clean, logs / mutation.name / "clean")
    if clean_rc != 0:
        return Outcome(
            mutation,
            "error",
            f"its tests fail on the clean QEMU too: {', '.join(clean_failed)}",
            time.monotonic() - started,
        )
    return Outcome(
        mutation, "killed", ", ".join(failed) or "a test failed", time.monotonic() - started
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=PROJECT / "test-logs" / "mutate")
    args = parser.parse_args()
    only = {item for item in os.environ.get("MUTATIONS", "").split(",") if item}
    try:
        mutations = load_mutations(MUTATIONS_DIR, only)
        tree = find_tree()
        if args.logs.exists():
            shutil.rmtree(args.logs)
        args.logs.mkdir(parents=True)
        mutants = build_mutants(tree, mutations, cache_dir() / "mutants", args.logs / "build.log")
    except (MutateError, subprocess.CalledProcessError) as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    outcomes = []
    for mutation in mutations:
        print(f"mutate: test {mutation.name}: {' '.join(mutation.kill)} ... ", end="", flush=True)
        outcome = judge(mutation, mutants.get(mutation.name), tree.binary, args.logs)
        outcomes.append(outcome)
        print(f"{outcome.verdict} ({outcome.seconds:.0f}s)")
    print()
    print(f"{'mutation':34} {'verdict':9} killed by / why")
    for outcome in outcomes:
        print(f"{outcome.mutation.name:34} {outcome.verdict:9} {outcome.detail}")
    killed = sum(outcome.verdict == "killed" for outcome in outcomes)
    print(f"\n{killed} of {len(outcomes)} mutations killed (logs: {args.logs})")
    return 0 if killed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
