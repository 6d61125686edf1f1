import pytest

from orchestrator.testdev import TESTDEV_PORT, Command, HypervTestDev, encode


class RecordingPort:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int]] = []

    def outl(self, port: int, value: int) -> None:
        self.writes.append((port, value))


def test_fields_land_in_their_bytes() -> None:
    assert encode(Command.EVT_CONN_CREATE, vp=1, sint=2, connection=5) == 0x05_06_01_02
    assert encode(Command.SINT_ROUTE_SET_SINT, vp=0, sint=15) == 0x00_03_00_0F


def test_out_of_range_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="vp 256 does not fit"):
        encode(Command.SINT_ROUTE_CREATE, vp=256)


def test_each_command_is_one_write_to_the_testdev_port() -> None:
    port = RecordingPort()
    dev = HypervTestDev(port)
    dev.msg_conn_create(vp=1, sint=3, connection=7)
    dev.msg_conn_destroy(connection=7)
    assert port.writes == [(TESTDEV_PORT, 0x07_04_01_03), (TESTDEV_PORT, 0x07_05_00_00)]
