"""A prefix of the QEMU stack (make ... SERIES=a,b): its own manifest, and a
TCG run on a build without Hyper-V under TCG stops with one line."""

import json
from pathlib import Path

import pytest

from orchestrator import artifacts, plugin
from orchestrator.errors import HarnessError


def write_manifest(cache: Path, name: str, binary: Path, series: str) -> None:
    if not binary.exists():
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    manifest = {
        "binary": str(binary),
        "base": "test",
        "series": series,
        "series_hash": "0",
        "series_length": 1,
        "version": "QEMU emulator version 10.2.2",
    }
    (cache / name).write_text(json.dumps(manifest))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HVSD_CACHE", str(tmp_path))
    monkeypatch.delenv("QEMU", raising=False)
    monkeypatch.delenv("HVSD_SANITIZE", raising=False)
    return tmp_path


def test_the_stack_is_read_from_qemu_patches() -> None:
    assert artifacts.stack() == ("fixes", "signal-event-direct", "hyperv-tcg")


def test_a_prefix_reads_its_own_manifest(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_manifest(cache, "qemu.json", cache / "full", "fixes,signal-event-direct,hyperv-tcg")
    write_manifest(
        cache, "qemu-series-signal-event-direct.json", cache / "prefix", "fixes,signal-event-direct"
    )
    monkeypatch.setenv("HVSD_SERIES", "fixes,signal-event-direct")
    build = artifacts.find_qemu()
    assert build.binary == cache / "prefix"
    assert build.series == ("fixes", "signal-event-direct")


def test_the_whole_stack_named_is_the_usual_build(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_manifest(cache, "qemu.json", cache / "full", "fixes,signal-event-direct,hyperv-tcg")
    monkeypatch.setenv("HVSD_SERIES", "fixes,signal-event-direct,hyperv-tcg")
    assert artifacts.find_qemu().binary == cache / "full"


def test_a_prefix_not_built_names_its_make_command(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HVSD_SERIES", "fixes")
    with pytest.raises(HarnessError, match=r"run 'make qemu SERIES=fixes' first"):
        artifacts.find_qemu()


def test_what_is_not_a_prefix_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HVSD_SERIES", "signal-event-direct")
    with pytest.raises(HarnessError, match="not a prefix of the stack"):
        artifacts.find_qemu()


def fake_qemu(path: Path, properties: str) -> Path:
    """A QEMU that lists these CPU properties for -device max-x86_64-cpu,help."""
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' {properties}\n")
    path.chmod(0o755)
    return path


def test_a_tcg_run_without_hyperv_under_tcg_stops_with_one_line(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_qemu(cache / "prefix", "'  hv-relaxed=<bool>'")
    write_manifest(
        cache, "qemu-series-signal-event-direct.json", binary, "fixes,signal-event-direct"
    )
    monkeypatch.setenv("HVSD_SERIES", "fixes,signal-event-direct")
    monkeypatch.setenv("ACCEL", "tcg")
    with pytest.raises(pytest.UsageError) as stopped:
        plugin._stop_without_hyperv_under_tcg()
    message = str(stopped.value)
    assert "\n" not in message
    assert "has no Hyper-V under TCG" in message
    assert "SERIES=fixes,signal-event-direct" in message


def test_a_tcg_run_with_hyperv_under_tcg_goes_on(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_qemu(cache / "full", "'  x-hv-tcg=<bool>'")
    write_manifest(cache, "qemu.json", binary, "fixes,signal-event-direct,hyperv-tcg")
    monkeypatch.delenv("HVSD_SERIES", raising=False)
    monkeypatch.setenv("ACCEL", "tcg")
    plugin._stop_without_hyperv_under_tcg()  # returns


def test_a_kvm_run_is_not_stopped(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = fake_qemu(cache / "prefix", "'  hv-relaxed=<bool>'")
    write_manifest(
        cache, "qemu-series-signal-event-direct.json", binary, "fixes,signal-event-direct"
    )
    monkeypatch.setenv("HVSD_SERIES", "fixes,signal-event-direct")
    monkeypatch.setenv("ACCEL", "nested-kvm")
    plugin._stop_without_hyperv_under_tcg()  # returns
