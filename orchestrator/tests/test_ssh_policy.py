import paramiko
import pytest

from orchestrator.ssh import HostKeyMismatch, _PinnedHostKey


def test_pinned_key_is_accepted_and_any_other_refused() -> None:
    good = paramiko.RSAKey.generate(1024)
    other = paramiko.RSAKey.generate(1024)
    policy = _PinnedHostKey(good)
    client = paramiko.SSHClient()
    policy.missing_host_key(client, "[127.0.0.1]:2222", good)
    with pytest.raises(HostKeyMismatch, match="offered a host key other than the image's"):
        policy.missing_host_key(client, "[127.0.0.1]:2222", other)
