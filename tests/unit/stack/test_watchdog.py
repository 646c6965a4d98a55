"""The local stack's watchdog, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from runtime.processes import children, pid_alive, stop_process_group
from tests.integration.helpers import wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def watchdog(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stack.watchdog", *args], start_new_session=True,
                            stderr=subprocess.PIPE, text=True)


def test_a_killed_service_is_restarted_and_a_stopped_group_is_not():
    dog = watchdog("--first-backoff", "0.1", "--", *SLEEPER)
    try:
        first = wait_for(lambda: children(dog.pid), 10, "service started")[0]
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: [p for p in children(dog.pid) if p != first], 10, "service restarted")[0]
        assert pid_alive(second)
        stop_process_group(dog.pid, timeout=10)
        assert dog.wait(timeout=10) is not None
        assert not pid_alive(second)
        assert "restarted" in dog.stderr.read()
    finally:
        if dog.poll() is None:
            os.killpg(dog.pid, signal.SIGKILL)


def test_a_service_that_keeps_dying_young_is_given_up_with_its_status():
    started = time.monotonic()
    dog = watchdog("--first-backoff", "0.05", "--give-up-after", "3", "--",
                   sys.executable, "-c", "raise SystemExit(3)")
    assert dog.wait(timeout=30) == 3
    assert "giving up" in dog.stderr.read()
    assert time.monotonic() - started < 30


def test_no_command_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "stack.watchdog"], capture_output=True, text=True)
    assert done.returncode == 2 and "no command given" in done.stderr
