"""Child processes: starting them with the project's tools, telling if one lives, stopping its group."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

# The interpreter's bin folder: `mlflow`, `python` and `uvicorn` of the environment the project runs in.
VENV_BIN = Path(sys.executable).parent


def tool_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment for a child that runs the project's tools: ``base`` (default: ours) plus
    ``extra``, with :data:`VENV_BIN` first on PATH (``mlflow run --env-manager local`` and
    ``mlflow models serve`` start ``python`` and ``uvicorn`` from PATH)."""
    env = {**(os.environ if base is None else base), **extra}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# Collections of the youngest generation: one every this many new containers instead of 700. A request
# makes thousands (a 1,000-row body is 1,000 dicts) that are garbage when it is answered; collecting
# them sooner finds nothing but costs 8-10% of a bulk request's time (model worker, measured).
YOUNG_COLLECTION_THRESHOLD = 10_000


def settle_heap() -> None:
    """For a service once started: what is alive now lives as long as the process (MLflow, pandas, a
    model: ~10^6 objects), so it is frozen out of the collector's passes, which would otherwise stall
    requests for tens of ms; and the youngest generation is collected less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, from the kernel's ephemeral range (for a server its caller starts at once and restarts
    elsewhere if its bind fails: see :func:`lane_port` for ports handed to servers started later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


PORT_LANES = 24
PORT_LANE_SIZE = 500
_lane_next: dict[int, int] = {}


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel hands to ``bind(0)`` and to outgoing connections (Linux's default if unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    return 32768, 60999


def lane_port(host: str, lane: int) -> int:
    """A port free now, below the ephemeral range, from ``lane``'s own stretch of :data:`PORT_LANE_SIZE` ports.

    A port from :func:`free_port` stays in the range every other ``bind(0)`` and every outgoing connection on
    the machine draws from: between that call and a server's own bind, seconds later, another process can take
    it (CI saw a test stack's gateway find its port in use). Below the range only this function hands ports out;
    callers that run at once (pytest-xdist workers) each walk their own lane, so none can take another's port,
    and each walks forward so it does not reuse a port whose last connections are still closing.
    """
    if not 0 <= lane < PORT_LANES:
        raise ValueError(f"lane must be in [0, {PORT_LANES}), got {lane}")
    start = max(1024, ephemeral_port_range()[0] - PORT_LANES * PORT_LANE_SIZE) + lane * PORT_LANE_SIZE
    for _ in range(PORT_LANE_SIZE):
        offset = _lane_next.get(lane, 0)
        _lane_next[lane] = (offset + 1) % PORT_LANE_SIZE
        port = start + offset
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind((host, port))  # without SO_REUSEADDR: a port still in TIME_WAIT is skipped too
            return port
    raise RuntimeError(f"no free port in lane {lane} ({start}-{start + PORT_LANE_SIZE - 1}) on {host}")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours has exited; reap it.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux /proc); None when no such process runs.

    A PID alone names whoever holds it now: after a restart, a stored PID may belong to a stranger. The
    PID with its start time names one process for the machine's uptime."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name, in parentheses, may hold spaces and parentheses: the fields follow the last ")"
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 and fields[0] != "Z" else None


def process_identity(pid: int) -> str | None:
    """``pid:start``, what :func:`identified` later checks; None when no such process runs."""
    ticks = start_ticks(pid)
    return None if ticks is None else f"{pid}:{ticks}"


def identified(identity: str | None, marker: str | None = None) -> int | None:
    """The PID of ``identity`` (from :func:`process_identity`) while that very process runs and leads its
    process group, else None. An identity of a bare PID (stored before start times were) counts only if the
    process's command line holds ``marker``; without a marker it never does."""
    pid_text, _, ticks = (identity or "").partition(":")
    if not pid_text.isdigit() or int(pid_text) <= 0:
        return None
    pid = int(pid_text)
    if not pid_alive(pid):
        return None
    if ticks:
        if str(start_ticks(pid)) != ticks:
            return None
    elif marker is None or marker.encode() not in command_line(pid):
        return None
    try:
        return pid if os.getpgid(pid) == pid else None
    except ProcessLookupError:
        return None


def command_line(pid: int) -> bytes:
    """``pid``'s command line, its arguments separated by NUL (empty when unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def stop_process_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL it if still alive after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc), oldest first."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return sorted(found)
