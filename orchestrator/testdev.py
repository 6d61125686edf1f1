"""hyperv-testdev's port protocol: one 32-bit write to port 0x3000 per command.

The write's bytes are, from low to high: SINT, VP index, command, connection
id. Message connections post back what the guest posted to them; event
connections set the flag whose number is their connection id. Port commands
(qemu-patches/signal-event-direct, "let the guest create event ports") put
the port id in the connection id's byte; PORT_CREATE takes base flag, flag
count and type from the register at 0x3004, written first, and
CONN_SET_PORT takes the port id in the SINT's byte. EVT_CONN_CREATE_FLAGS
(the same patch) makes an event connection with a flag count (from that
register): FlagNumber N sets flag connection id + N.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from orchestrator.ports import Port

TESTDEV_PORT = 0x3000
TESTDEV_ARG_PORT = 0x3004
PORT_TYPES = {"message": 1, "event": 2, "monitor": 3}


class Command(IntEnum):
    SINT_ROUTE_CREATE = 1
    SINT_ROUTE_DESTROY = 2
    SINT_ROUTE_SET_SINT = 3
    MSG_CONN_CREATE = 4
    MSG_CONN_DESTROY = 5
    EVT_CONN_CREATE = 6
    EVT_CONN_DESTROY = 7
    PORT_CREATE = 8
    PORT_DELETE = 9
    CONN_SET_PORT = 10
    CONN_DELETE = 11
    EVT_CONN_CREATE_FLAGS = 12


def encode(command: Command, vp: int = 0, sint: int = 0, connection: int = 0) -> int:
    for name, value in (("vp", vp), ("sint", sint), ("connection", connection)):
        if not 0 <= value <= 0xFF:
            raise ValueError(f"{name} {value} does not fit the testdev's byte")
    return sint | vp << 8 | int(command) << 16 | connection << 24


def encode_port_arg(port: Port) -> int:
    if not 0 <= port.base_flag <= 0xFFFF or not 0 <= port.flag_count <= 0xFFF:
        raise ValueError(f"{port} does not fit the testdev's argument register")
    return port.base_flag | port.flag_count << 16 | PORT_TYPES[port.type] << 28


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

    def evt_conn_create_flags(self, vp: int, sint: int, connection: int, flag_count: int) -> None:
        if not 0 <= flag_count <= 0xFFF:
            raise ValueError(f"flag count {flag_count} does not fit the argument register")
        self.port.outl(TESTDEV_ARG_PORT, flag_count << 16)
        self._send(Command.EVT_CONN_CREATE_FLAGS, vp, sint, connection)

    def evt_conn_destroy(self, connection: int) -> None:
        self._send(Command.EVT_CONN_DESTROY, connection=connection)

    def port_create(self, port: Port) -> None:
        self.port.outl(TESTDEV_ARG_PORT, encode_port_arg(port))
        self._send(Command.PORT_CREATE, port.vp, port.sint, port.port_id)

    def port_delete(self, port_id: int) -> None:
        self._send(Command.PORT_DELETE, connection=port_id)

    def conn_set_port(self, connection: int, port_id: int) -> None:
        self._send(Command.CONN_SET_PORT, sint=port_id, connection=connection)

    def conn_delete(self, connection: int) -> None:
        self._send(Command.CONN_DELETE, connection=connection)
