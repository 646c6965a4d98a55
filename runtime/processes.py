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
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
