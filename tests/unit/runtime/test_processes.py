"""Ports for servers started later (below the kernel's ephemeral range, each caller in its own lane), and
telling a process we started from whoever holds its PID later."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from runtime import processes
from runtime.processes import (
    PORT_LANE_SIZE,
    command_line,
    ephemeral_port_range,
    identified,
    lane_port,
    process_identity,
    start_ticks,
)


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


@pytest.fixture()
def leader() -> Iterator[subprocess.Popen]:
    """A process leading its own group, as the stack's services and the gateway's jobs do."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def test_an_identity_names_its_process_while_it_runs_and_nothing_after(leader):
    identity = process_identity(leader.pid)
    assert identity == f"{leader.pid}:{start_ticks(leader.pid)}"
    assert identified(identity) == leader.pid
    leader.kill()
    leader.wait()
    assert identified(identity) is None and process_identity(leader.pid) is None


def test_a_pid_held_by_another_process_than_the_one_recorded_is_not_it(leader):
    # the same PID, started at another time: what a reused PID looks like after a restart
    assert identified(f"{leader.pid}:{start_ticks(leader.pid) + 1}") is None
    assert identified(f"{os.getpid()}:{start_ticks(os.getpid())}") is None, "not a group leader: not ours"
    for junk in (None, "", "x", "0:1", "-5:1", ":"):
        assert identified(junk) is None


def test_a_bare_pid_counts_only_with_its_marker_on_the_command_line():
    with subprocess.Popen(["sleep", "60"], start_new_session=True) as process:
        try:
            deadline = time.monotonic() + 10
            while b"sleep" not in command_line(process.pid) and time.monotonic() < deadline:
                time.sleep(0.01)  # until the child has exec'd: before, its command line is ours
            assert identified(str(process.pid)) is None, "no marker: a bare PID is never trusted"
            assert identified(str(process.pid), marker="run-0123abcd") is None
            assert identified(str(process.pid), marker="sleep") == process.pid
        finally:
            process.kill()
