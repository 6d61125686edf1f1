"""`make check-series` builds every patch in a worktree and build directories
of its own: interrupted mid-way, it leaves the harness's tree, binary and
`make qemu`'s answer as they were.

Hermetic: a three-commit "QEMU" git tree (QEMU_SRC), a two-series stack of
its own (HVSD_PATCH_DIR), and a ninja that writes a binary naming the tree's
state, so no real QEMU is built."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
BUILD_QEMU = PROJECT / "scripts" / "build-qemu.sh"

CONFIGURE = """#!/bin/sh
# writes what the fake ninja and `make run-tcg-tests-x86_64-softmmu` need
src=$(cd "$(dirname "$0")" && pwd)
echo "$src" > build.ninja
printf 'run-tcg-tests-x86_64-softmmu:\\n\\t@true\\n' > Makefile
"""
CHECKPATCH = """#!/usr/bin/perl
print "total: 0 errors, 0 warnings\\n";
"""
# ninja -C BUILD TARGET...: the "binary" is a QEMU that starts and quits,
# and says which state of the tree it was built from; other targets (qtests)
# pass. While the file SLOW exists, builds in the checks' tree are slow, so
# the test can interrupt one. (The build scripts run ninja with a fixed
# environment, so the switch is a file.)
NINJA = """#!/bin/sh
[ "$1" = -C ] || exit 2
build=$2
shift 2
src=$(cat "$build/build.ninja")
case $build in */check/build) [ -e SLOW ] && sleep 60 ;; esac
mkdir -p "$build/qemu-bundle/usr/share/qemu"
touch "$build/qemu-bundle/usr/share/qemu/trace-events-all"
for target in "$@"; do
    mkdir -p "$build/$(dirname "$target")"
    {
        echo '#!/bin/sh'
        echo "# built from: $(cat "$src/state")"
        echo 'cat >/dev/null'
    } > "$build/$target"
    chmod +x "$build/$target"
done
echo "[1/1] Linking target $*"
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def make_fake_qemu(root: Path) -> Path:
    src = root / "qemu.git"
    (src / "scripts").mkdir(parents=True)
    (src / "configure").write_text(CONFIGURE)
    (src / "configure").chmod(0o755)
    (src / "scripts" / "checkpatch.pl").write_text(CHECKPATCH)
    (src / "state").write_text("base\n")
    git(src, "init", "-q")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "base")
    return src


def make_stack(root: Path, src: Path) -> Path:
    """Two series of one patch each, made as commits in a scratch clone."""
    patches = root / "patches"
    scratch = root / "scratch"
    git(root, "clone", "-q", str(src), str(scratch))
    for series in ("first", "second"):
        (scratch / "state").write_text(f"{series}\n")
        git(scratch, "commit", "-q", "-a", "-m", f"state: {series}")
        (patches / series).mkdir(parents=True)
        name = git(scratch, "format-patch", "-1", "-o", str(patches / series)).strip()
        (patches / series / "series").write_text(Path(name).name + "\n")
    (patches / "SERIES").write_text("first\nsecond\n")
    (patches / "base-command-lines").write_text("-accel tcg\n")
    (patches / "BASE").write_text((PROJECT / "qemu-patches" / "BASE").read_text())
    return patches


def tool_dir(root: Path) -> Path:
    tools = root / "bin"
    tools.mkdir()
    (tools / "ninja").write_text(NINJA.replace("SLOW", str(root / "slow")))
    (tools / "ninja").chmod(0o755)
    return tools


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    if subprocess.run(["which", "dpkg-source", "apt-get"], capture_output=True).returncode:
        pytest.fail("build-qemu.sh needs dpkg-source and apt-get (make setup installs them)")
    src = make_fake_qemu(tmp_path)
    patches = make_stack(tmp_path, src)
    tools = tool_dir(tmp_path)
    return {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "HVSD_CACHE": str(tmp_path / "cache"),
        "HVSD_PATCH_DIR": str(patches),
        "QEMU_SRC": str(src),
        "PYTHON": sys.executable,
        "SERIES": "",
    }


def build_qemu(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(BUILD_QEMU), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def harness_binary(env: dict[str, str]) -> Path:
    roots = list((Path(env["HVSD_CACHE"]) / "qemu").glob("user-*"))
    assert len(roots) == 1, roots
    return roots[0] / "build" / "qemu-system-x86_64"


def test_an_interrupted_check_series_leaves_the_harness_qemu_alone(env: dict[str, str]) -> None:
    built = build_qemu(env, "build")
    assert built.returncode == 0, built.stdout + built.stderr
    binary = harness_binary(env)
    assert "built from: second" in binary.read_text()
    before = digest(binary)
    tree = binary.parent.parent / "src"
    head = git(tree, "rev-parse", "HEAD")

    # Stopped while it builds the first patch in its own tree
    (Path(env["HVSD_CACHE"]).parent / "slow").touch()
    checking = subprocess.Popen(
        ["bash", str(BUILD_QEMU), "check"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert checking.stdout is not None
    seen = []
    deadline = time.monotonic() + 240
    for line in checking.stdout:
        seen.append(line)
        # (a step's line ends when the step does: the next one has begun)
        if "qemu: configure build ..." in line or time.monotonic() > deadline:
            break
    time.sleep(2)  # into the build of the first series' last patch
    os.killpg(checking.pid, signal.SIGKILL)
    checking.wait(timeout=30)
    (Path(env["HVSD_CACHE"]).parent / "slow").unlink()
    assert any("qemu: configure build ..." in line for line in seen), "".join(seen)
    check_tree = binary.parent.parent / "check" / "src"
    assert "first" in (check_tree / "state").read_text()  # stopped mid-way

    again = build_qemu(env, "build")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "up to date" in again.stdout
    assert digest(binary) == before
    assert git(tree, "rev-parse", "HEAD") == head
    assert git(tree, "status", "--porcelain") == ""


def test_check_series_starts_the_base_command_lines_at_every_patch(env: dict[str, str]) -> None:
    checked = build_qemu(env, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for n in (1, 2):
        assert f"the base's command lines start at patch {n}/2 ... done" in checked.stdout
    for series in ("first", "second"):
        assert f"build up to {series}, and its qtests ... done" in checked.stdout
