"""hyperv-testdev's port protocol: one 32-bit write to port 0x3000 per command.

The write's bytes are, from low to high: SINT, VP index, command, connection
id. Message connections post back what the guest posted to them; event
connections set the flag whose number is their connection id.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

TESTDEV_PORT = 0x3000


class Command(IntEnum):
    SINT_ROUTE_CREATE = 1
    SINT_ROUTE_DESTROY = 2
    SINT_ROUTE_SET_SINT = 3
    MSG_CONN_CREATE = 4
    MSG_CONN_DESTROY = 5
    EVT_CONN_CREATE = 6
    EVT_CONN_DESTROY = 7


def encode(command: Command, vp: int = 0, sint: int = 0, connection: int = 0) -> int:
    for name, value in (("vp", vp), ("sint", sint), ("connection", connection)):
        if not 0 <= value <= 0xFF:
            raise ValueError(f"{name} {value} does not fit the testdev's byte")
    return sint | vp << 8 | int(command) << 16 | connection << 24


class PortWriter(Protocol):
    def outl(self, port: int, value: int) -> None: ...


@dataclass(frozen=True)
class HypervTestDev:
    """Commands to the guest's hyperv-testdev, sent through `port` (the probe)."""

    port: PortWriter

    def _send(self, command: Command, vp: int = 0, sint: int = 0, connection: int = 0) -> None:
        self.port.outl(TESTDEV_PORT, encode(command, vp, sint, connection))

    def route_create(self, vp: int, sint: int) -> None:
        self._send(Command.SINT_ROUTE_CREATE, vp, sint)

    def route_destroy(self, vp: int, sint: int) -> None:
        self._send(Command.SINT_ROUTE_DESTROY, vp, sint)

    def route_set_sint(self, vp: int, sint: int) -> None:
        self._send(Command.SINT_ROUTE_SET_SINT, vp, sint)

    def msg_conn_create(self, vp: int, sint: int, connection: int) -> None:
        self._send(Command.MSG_CONN_CREATE, vp, sint, connection)

    def msg_conn_destroy(self, connection: int) -> None:
        self._send(Command.MSG_CONN_DESTROY, connection=connection)

    def evt_conn_create(self, vp: int, sint: int, connection: int) -> None:
        self._send(Command.EVT_CONN_CREATE, vp, sint, connection)

    def evt_conn_destroy(self, connection: int) -> None:
        self._send(Command.EVT_CONN_DESTROY, connection=connection)
