import pytest

from orchestrator import accel
from orchestrator.errors import HarnessError


def test_forced_accelerator_is_taken_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEL", "kvm")
    chosen = accel.choose_accel()
    assert (chosen.name, chosen.reason) == ("kvm", "forced by ACCEL")


def test_unknown_accelerator_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEL", "hvf")
    with pytest.raises(HarnessError, match="ACCEL=hvf is not one of: tcg, kvm, nested-kvm"):
        accel.choose_accel()


def test_without_accel_tcg_is_chosen_even_where_kvm_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ACCEL", raising=False)
    monkeypatch.setattr(accel, "probe_kvm", lambda timeout=5.0: (True, "host KVM works"))
    chosen = accel.choose_accel()
    assert chosen.name == "tcg"
    assert chosen.qemu_accel == "tcg"
    assert not chosen.is_kvm


def test_nested_kvm_is_forced_and_runs_the_guest_with_accel_kvm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACCEL", "nested-kvm")
    chosen = accel.choose_accel()
    assert str(chosen) == "nested-kvm (forced by ACCEL)"
    assert (chosen.qemu_accel, chosen.nested, chosen.is_kvm) == ("kvm", True, True)


@pytest.mark.parametrize(
    ("usable", "name"), [(True, "kvm"), (False, "nested-kvm")], ids=["host-kvm", "no-host-kvm"]
)
def test_the_kvm_leg_takes_host_kvm_only_where_it_is_usable(
    monkeypatch: pytest.MonkeyPatch, usable: bool, name: str
) -> None:
    monkeypatch.setattr(accel, "probe_kvm", lambda timeout=5.0: (usable, "why"))
    leg = accel.kvm_leg()
    assert leg.name == name
    assert leg.is_kvm


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
