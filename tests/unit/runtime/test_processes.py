"""Ports for servers started later: below the kernel's ephemeral range, each caller in its own lane."""

from __future__ import annotations

import socket

import pytest

from runtime import processes
from runtime.processes import PORT_LANE_SIZE, ephemeral_port_range, lane_port


def test_lane_ports_lie_below_the_ephemeral_range_each_lane_in_its_own_stretch():
    low, _ = ephemeral_port_range()
    first, second = ([lane_port("127.0.0.1", lane) for _ in range(5)] for lane in (3, 4))
    assert max(first + second) < low
    assert len(set(first)) == 5, "a lane hands a port out once before it wraps"
    assert max(first) < min(second) and min(second) - min(first) >= PORT_LANE_SIZE - 5


def test_a_port_something_listens_on_is_skipped(monkeypatch):
    monkeypatch.setattr(processes, "_lane_next", {})
    busy = lane_port("127.0.0.1", 7)
    monkeypatch.setattr(processes, "_lane_next", {})  # the lane starts over at the port now taken
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        assert lane_port("127.0.0.1", 7) == busy + 1


def test_a_lane_out_of_range_is_refused():
    with pytest.raises(ValueError, match="lane"):
        lane_port("127.0.0.1", processes.PORT_LANES)
