"""The guest over SSH (paramiko): commands, files, and a pinned host key."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from orchestrator.errors import HarnessError

# Failed attempts while the guest boots are expected; paramiko reports them on
# its transport logger, which goes here instead of to stderr.
PARAMIKO_LOG_CHANNEL = "hvsd.guest.ssh"
logging.getLogger(PARAMIKO_LOG_CHANNEL).addHandler(logging.NullHandler())


@dataclass(frozen=True)
class CommandResult:
    command: str
    rc: int
    out: str
    err: str
    seconds: float

    def __iter__(self):  # lets callers write `rc, out, err = guest.run(...)`
        return iter((self.rc, self.out, self.err))


class HostKeyMismatch(paramiko.SSHException):
    pass


class _PinnedHostKey(paramiko.MissingHostKeyPolicy):
    """Accepts exactly the host key generated for this image, nothing else."""

    def __init__(self, pinned: paramiko.PKey) -> None:
        self._pinned = pinned

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if key.get_name() != self._pinned.get_name() or key.asbytes() != self._pinned.asbytes():
            raise HostKeyMismatch(f"{hostname} offered a host key other than the image's")


def load_public_key(path: Path) -> paramiko.PKey:
    kind, blob = path.read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


class GuestServer:
    """A command left running in the guest that answers each line of its
    standard input with a line of standard output (`hvprobe serve`): one SSH
    channel for any number of requests. Requests are taken one at a time."""

    def __init__(
        self,
        client: paramiko.SSHClient,
        command: str,
        commands_log: Path,
        explain_failure: Callable[[], None] = lambda: None,
        open_timeout: float = 60.0,
    ) -> None:
        self.command = command
        self.commands_log = commands_log
        self._explain_failure = explain_failure
        # Without a timeout paramiko waits an hour for a hung guest's sshd.
        stdin, stdout, _ = client.exec_command(command, timeout=open_timeout)
        self._stdin = stdin
        self._stdout = stdout
        self._channel = stdout.channel
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return not self._channel.closed and not self._channel.exit_status_ready()

    def requests(self, lines: Sequence[str], timeout: float) -> list[str]:
        """Sends every line, then reads a reply per line (pipelined). A server
        that fails or falls silent is closed: its next reply could belong to
        an earlier request."""
        with self._lock:
            try:
                self._channel.settimeout(timeout)
                self._stdin.write("".join(line + "\n" for line in lines))
                self._stdin.flush()
                replies = []
                for _ in lines:
                    reply = self._stdout.readline()
                    if not reply:
                        raise EOFError(f"{self.command} ended")
                    replies.append(reply.decode() if isinstance(reply, bytes) else reply)
                return replies
            except TimeoutError:
                self.close()
                self._explain_failure()
                raise HarnessError(
                    f"{self.command} gave no answer within {timeout:.0f}s to: {lines[-1]}",
                    self.commands_log,
                ) from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.close()
                self._explain_failure()
                raise HarnessError(
                    f"SSH failed talking to {self.command}: {exc}", self.commands_log
                ) from None

    def close(self) -> None:
        self._channel.close()


class Guest:
    """A root shell on the guest; every command is appended to `commands_log`."""

    def __init__(
        self,
        host: str,
        port: int,
        key: Path,
        host_key_pub: Path,
        commands_log: Path,
        log_hint: Path,
        explain_failure: Callable[[], None] = lambda: None,
    ) -> None:
        """`explain_failure` is called when SSH fails, to raise the cause
        instead when there is a better one (QEMU gone, a guest panic)."""
        self.host = host
        self.explain_failure = explain_failure
        self.port = port
        self.key = key
        self._pinned = load_public_key(host_key_pub)
        self.commands_log = commands_log
        self._log_hint = log_hint
        self._client: paramiko.SSHClient | None = None
        self._servers: dict[str, GuestServer] = {}

    def wait_ready(
        self,
        timeout: float,
        alive: Callable[[], None],
        listening: Callable[[], bool] = lambda: True,
    ) -> float:
        """Retries until SSH answers (bounded by `timeout`); returns seconds waited.

        QEMU's user network accepts a connection before the guest listens and
        then holds it while its SYNs to the guest back off, which costs
        seconds; so no attempt is made until `listening()` says sshd is up
        (or a quarter of the timeout has passed without it saying so).
        """
        start = time.monotonic()
        last_error = "no attempt"
        while time.monotonic() - start < timeout:
            alive()
            elapsed = time.monotonic() - start
            if not listening() and elapsed < timeout / 4:
                time.sleep(0.05)
                continue
            try:
                self._client = self._connect(min(10.0, max(1.0, timeout - elapsed)))
                return time.monotonic() - start
            except HostKeyMismatch as exc:
                raise HarnessError(f"SSH refused: {exc}", self._log_hint) from None
            except paramiko.AuthenticationException:
                raise HarnessError(
                    f"SSH refused: the guest did not accept key {self.key}", self._log_hint
                ) from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                last_error = str(exc) or type(exc).__name__
                time.sleep(0.2)
        raise HarnessError(
            f"guest did not answer SSH on 127.0.0.1:{self.port} within {timeout:.0f}s "
            f"(last: {last_error})",
            self._log_hint,
        )

    def _connect(self, timeout: float) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_log_channel(PARAMIKO_LOG_CHANNEL)
        client.set_missing_host_key_policy(_PinnedHostKey(self._pinned))
        try:
            client.connect(
                self.host,
                port=self.port,
                username="root",
                key_filename=str(self.key),
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except BaseException:
            client.close()
            raise
        return client

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise HarnessError("not connected to the guest over SSH")
        return self._client

    def run(self, command: str, timeout: float = 120.0, check: bool = False) -> CommandResult:
        start = time.monotonic()
        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            rc = stdout.channel.recv_exit_status()
        except TimeoutError:
            self.explain_failure()
            raise HarnessError(
                f"guest command timed out after {timeout:.0f}s: {command}", self.commands_log
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.explain_failure()
            raise HarnessError(
                f"SSH failed running {command!r}: {exc}", self.commands_log
            ) from None
        result = CommandResult(command, rc, out, err, time.monotonic() - start)
        self._record(result)
        if check and rc != 0:
            raise HarnessError(
                f"guest command failed (rc {rc}): {command}: {err.strip()}", self.commands_log
            )
        return result

    def server(self, command: str) -> GuestServer:
        """The guest's running `command`, shared by every caller on this
        connection; started on first use, and again if it ended."""
        server = self._servers.get(command)
        if server is None or not server.open:
            try:
                server = GuestServer(self.client, command, self.commands_log, self.explain_failure)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.explain_failure()
                raise HarnessError(
                    f"SSH failed starting {command!r}: {exc}", self.commands_log
                ) from None
            self._servers[command] = server
        return server

    def record(self, result: CommandResult) -> None:
        """Adds what a command did to the commands log, as run() does."""
        self._record(result)

    def _record(self, result: CommandResult) -> None:
        with self.commands_log.open("a") as log:
            log.write(f"$ {result.command}\n# rc={result.rc} in {result.seconds:.3f}s\n")
            if result.out:
                log.write(result.out if result.out.endswith("\n") else result.out + "\n")
            if result.err:
                log.write("# stderr:\n" + result.err + ("" if result.err.endswith("\n") else "\n"))

    def put(self, local: Path, remote: str) -> None:
        with self.client.open_sftp() as sftp:
            sftp.put(str(local), remote)
        self._record(CommandResult(f"put {local} -> {remote}", 0, "", "", 0.0))

    def put_text(self, text: str, remote: str) -> None:
        with self.client.open_sftp() as sftp, sftp.open(remote, "w") as out:
            out.write(text)
        self._record(CommandResult(f"put_text -> {remote} ({len(text)} chars)", 0, "", "", 0.0))

    def get(self, remote: str, local: Path) -> None:
        with self.client.open_sftp() as sftp:
            sftp.get(remote, str(local))
        self._record(CommandResult(f"get {remote} -> {local}", 0, "", "", 0.0))

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        if self._client is not None:
            self._client.close()
            self._client = None
