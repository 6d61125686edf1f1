"""Fixtures the guest-test modules share: the probe in the session Hyper-V
guest, and hyperv-testdev driven through it."""

from __future__ import annotations

import pytest

from orchestrator.probe import Probe
from orchestrator.testdev import HypervTestDev
from orchestrator.vm import Vm


@pytest.fixture(scope="module")
def probe(hv_vm: Vm) -> Probe:
    return Probe(hv_vm.guest)


@pytest.fixture(scope="module")
def testdev(probe: Probe) -> HypervTestDev:
    return HypervTestDev(probe)
