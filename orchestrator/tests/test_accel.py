import pytest

from orchestrator import accel
from orchestrator.errors import HarnessError


def test_forced_accelerator_is_taken_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEL", "kvm")
    chosen = accel.choose_accel()
    assert (chosen.name, chosen.reason) == ("kvm", "forced by ACCEL")


def test_unknown_accelerator_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEL", "hvf")
    with pytest.raises(HarnessError, match="ACCEL=hvf is not one of: tcg, kvm"):
        accel.choose_accel()


def test_without_usable_kvm_tcg_is_chosen_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ACCEL", raising=False)
    monkeypatch.setattr(accel, "probe_kvm", lambda: (False, "host KVM lacks KVM_CAP_HYPERV"))
    chosen = accel.choose_accel()
    assert str(chosen) == "tcg (host KVM lacks KVM_CAP_HYPERV)"


def test_a_wedged_dev_kvm_falls_back_to_tcg_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accel.os.path, "exists", lambda path: True)
    monkeypatch.setattr(accel, "_PROBE", "import time; time.sleep(30) # %r")
    usable, why = accel.probe_kvm(timeout=1)
    assert not usable
    assert why == "/dev/kvm did not answer within 1s"


def test_probe_reports_the_missing_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel.os.path, "exists", lambda path: True)
    monkeypatch.setattr(accel, "_PROBE", "print('host KVM lacks KVM_CAP_HYPERV'); exit(1) # %r")
    assert accel.probe_kvm() == (False, "host KVM lacks KVM_CAP_HYPERV")
