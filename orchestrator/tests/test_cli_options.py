"""The command line's conventions: options before or after the verb, JSON
only where there are results, a version, and the Hyper-V guest by default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator.cli import EXIT_CONTRACT, EXIT_HARNESS, _options, parse
from orchestrator.command import HYPERV_CPU


def test_options_go_before_or_after_the_verb() -> None:
    before = parse(["--cpus", "4", "--memory", "1024", "run", "uname", "-a"])
    after = parse(["run", "--cpus", "4", "--memory", "1024", "uname", "-a"])
    for args in (before, after):
        assert (args.cpus, args.memory, args.command) == (4, 1024, ["uname", "-a"])


def test_defaults_apply_when_an_option_is_given_nowhere() -> None:
    args = parse(["boot"])
    assert (args.cpus, args.memory, args.accel, args.qemu, args.json, args.plain) == (
        2, 512, None, None, False, False,
    )  # fmt: skip


def test_boot_ssh_run_default_to_the_hyperv_guest_and_plain_asks_for_none() -> None:
    assert _options(parse(["boot"])).cpu == HYPERV_CPU
    assert _options(parse(["run", "true"])).cpu == HYPERV_CPU
    assert _options(parse(["ssh", "--plain"])).cpu == "max"


def test_json_is_for_verbs_with_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["fuzz", "--json"]).json
    assert parse(["--json", "bench-signal"]).json
    with pytest.raises(SystemExit) as exited:
        parse(["boot", "--json"])
    assert exited.value.code == 2
    assert "--json is for demo, fuzz, bench-signal, bench-boot" in capsys.readouterr().err


def test_accel_is_checked_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["run", "--accel", "whpx", "true"])
    assert "invalid choice: 'whpx'" in capsys.readouterr().err


def test_version_names_the_package_and_the_built_qemu() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.startswith("hv-signal-direct ")


def test_a_contract_mismatch_and_a_harness_error_exit_differently() -> None:
    assert (EXIT_CONTRACT, EXIT_HARNESS) == (1, 2)


def test_a_bad_qemu_option_is_one_line_and_exit_2(tmp_path: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--qemu", "/nonexistent/qemu", "true"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_HARNESS
    assert done.stderr.strip().splitlines() == [
        "error: QEMU binary /nonexistent/qemu (from $QEMU) not found"
    ]
