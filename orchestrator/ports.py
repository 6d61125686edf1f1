"""Event ports and connections as the host manages them: QEMU's unstable
x-hv-port-create/-delete, x-hv-connection-set/-delete and x-query-hv-ports
commands (qemu-patches/signal-event-direct, "x- QMP commands to manage event
ports and connections"), typed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from orchestrator.qmp import Qmp

PortType = Literal["message", "event", "monitor"]


@dataclass(frozen=True)
class Port:
    """A port targeting SINT `sint` of VP `vp`; an event port owns the SIEF
    flags base_flag .. base_flag + flag_count - 1 of that SINT's slot."""

    port_id: int
    vp: int
    sint: int
    base_flag: int = 0
    flag_count: int = 1
    type: PortType = "event"

    def bit(self, flag: int) -> int:
        """The SIEF bit that relative flag `flag` sets."""
        return self.base_flag + flag


@dataclass(frozen=True)
class PortTable:
    ports: dict[int, Port]
    # connection id -> port id; None for a connection a QEMU device owns
    connections: dict[int, int | None]


class HostPorts:
    def __init__(self, qmp: Qmp) -> None:
        self.qmp = qmp

    def create(self, port: Port) -> Port:
        fields = {key.replace("_", "-"): value for key, value in asdict(port).items()}
        fields["vp-index"] = fields.pop("vp")
        self.qmp.execute("x-hv-port-create", fields)
        return port

    def delete(self, port_id: int) -> None:
        self.qmp.execute("x-hv-port-delete", {"port-id": port_id})

    def connect(self, connection: int, port_id: int) -> None:
        """Creates the connection, or re-points it."""
        self.qmp.execute("x-hv-connection-set", {"connection-id": connection, "port-id": port_id})

    def disconnect(self, connection: int) -> None:
        self.qmp.execute("x-hv-connection-delete", {"connection-id": connection})

    def table(self) -> PortTable:
        reply = self.qmp.execute("x-query-hv-ports")
        ports = {
            int(p["port-id"]): Port(
                port_id=int(p["port-id"]),
                vp=int(p["vp-index"]),
                sint=int(p["sint"]),
                base_flag=int(p["base-flag"]),
                flag_count=int(p["flag-count"]),
                type=p["type"],
            )
            for p in reply["ports"]
        }
        connections = {
            int(c["connection-id"]): (int(c["port-id"]) if "port-id" in c else None)
            for c in reply["connections"]
        }
        return PortTable(ports, connections)

    def clear(self) -> None:
        """Removes every port and every connection that no device owns."""
        table = self.table()
        for connection, port_id in table.connections.items():
            if port_id is not None:
                self.disconnect(connection)
        for port_id in table.ports:
            self.delete(port_id)
