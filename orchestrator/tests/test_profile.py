"""MACHINE= and CPU_MODEL= replace the defaults, and nothing a test named."""

from __future__ import annotations

import pytest

from orchestrator.command import HYPERV_CPU, VmOptions
from orchestrator.errors import HarnessError
from orchestrator.profile import VmProfile


def test_the_default_profile_changes_nothing() -> None:
    options = VmOptions.hyperv()
    assert VmProfile().apply(options) == options


def test_a_profile_replaces_the_default_machine_and_model_only() -> None:
    profile = VmProfile(machine="pc", cpu_model="EPYC")
    applied = profile.apply(VmOptions(cpu=HYPERV_CPU))
    assert applied.machine == "pc"
    assert applied.cpu == "EPYC" + HYPERV_CPU.removeprefix("max")
    assert profile.apply(VmOptions(cpu="max")).cpu == "EPYC"
    # What a test named itself stays: a versioned machine, another model,
    # and a model that only starts like max.
    named = VmOptions(cpu="Skylake-Server,hv-relaxed", machine="pc-q35-9.2")
    assert profile.apply(named) == named
    assert profile.apply(VmOptions(cpu="maxwell")).cpu == "maxwell"
    # Applying twice is applying once (a migration destination takes its
    # source's options).
    assert profile.apply(applied) == applied


def test_the_profile_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HVSD_MACHINE", "pc")
    monkeypatch.setenv("HVSD_CPU_MODEL", "Skylake-Server")
    assert VmProfile.from_environment() == VmProfile("pc", "Skylake-Server")
    monkeypatch.setenv("HVSD_MACHINE", "isapc")
    with pytest.raises(HarnessError, match="MACHINE=isapc is not one of: q35, pc"):
        VmProfile.from_environment()
    monkeypatch.setenv("HVSD_MACHINE", "q35")
    monkeypatch.setenv("HVSD_CPU_MODEL", "max,hv-relaxed")
    with pytest.raises(HarnessError, match="not a CPU model name"):
        VmProfile.from_environment()
