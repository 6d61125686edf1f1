"""Expected failures end in one line naming the cause (and the log), exit 2
(1 is kept for results that contradict the contract)."""

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_missing_build_is_one_line_naming_the_make_target(tmp_path: Path) -> None:
    done = run_cli("run", "true", env={"HVSD_CACHE": str(tmp_path), "QEMU": ""})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path}/qemu.json not found: run 'make qemu' first"
    ]


def test_missing_qemu_binary_is_named(tmp_path: Path) -> None:
    done = run_cli("run", "true", env={"QEMU": str(tmp_path / "no-such-qemu")})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: QEMU binary {tmp_path}/no-such-qemu (from $QEMU) not found"
    ]


def test_bad_accelerator_is_one_line(tmp_path: Path) -> None:
    done = run_cli("run", "true", env={"ACCEL": "whpx"})
    assert done.returncode == 2
    expected = "error: ACCEL=whpx is not one of: tcg, kvm, nested-kvm"
    assert done.stderr.strip().splitlines() == [expected]
