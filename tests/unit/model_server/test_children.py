"""The backends a model server started, as it records them for its successor (model_server/backends.py)."""

from __future__ import annotations

import subprocess

from model_server.backends import ChildProcesses
from runtime.processes import start_ticks


def test_a_successor_stops_the_backends_left_and_never_a_stranger_holding_a_recorded_pid(tmp_path):
    left, stranger = (subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2))
    try:
        children = ChildProcesses(tmp_path / "backends")
        children.add(left.pid)
        # a PID recorded with another start time, and one recorded bare (an older file) without a backend's
        # command line: what a PID reused since looks like
        recorded = (tmp_path / "backends").read_text()
        (tmp_path / "backends").write_text(
            f"{recorded}{stranger.pid}:{start_ticks(stranger.pid) + 1}\n{stranger.pid}\n")
        assert ChildProcesses(tmp_path / "backends").reap_orphans() == [left.pid]
        assert left.wait(timeout=10) is not None and stranger.poll() is None
        assert not (tmp_path / "backends").exists()
    finally:
        for process in (left, stranger):
            process.kill()
            process.wait()
