"""The ceiling beside the gateway's figures, and the ASGI server under both (issue 34).

The ceiling is a do-nothing JSON endpoint on the gateway's own stack (bench/ceiling_app.py): a single-row
`/predict` can go no faster on the same server, so its ratio to the ceiling says how much of the time is ours.
Each app runs under either server of :data:`SERVERS` as its own process group on 127.0.0.1:

    ceiling = start_ceiling("granian", env, port, log_dir)   # ready when it returns
    ... wrk(ceiling.endpoint, ...)
    ceiling.stop()

`env` is the gateway's environment (the stack's `env()`), so the ceiling has the gateway's settings: body limit,
access log, log level.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from bench.ceiling_app import CEILING_PATH
from contract.settings import PROJECT_DIR
from stack.local import http_ok, wait_until

Server = Literal["uvicorn", "granian"]
App = Literal["ceiling", "gateway"]
SERVERS: tuple[Server, ...] = ("uvicorn", "granian")
HOST = "127.0.0.1"
# granian as fast as it went here (2 cores; the gateway at c=64, variants in turn: docs/performance.md): uvloop
# and granian's default runtime (one thread) beat the asyncio loop, --runtime-mode st, --runtime-threads 2
# and (on the ceiling) --task-impl rust. One worker, like the gateway's one uvicorn process (the micro-batcher,
# admission counts and inference-log buffer are per process); HTTP/1 only and no websockets, as the gateway
# serves neither; granian's own logging at warning (the app writes its own access lines).
GRANIAN_OPTIONS = ("--interface", "asgi", "--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws",
                   "--log-level", "warning")
# issue 34: the gateway changes server only if the other gives this much more single-row throughput at
# SWITCH_CONNECTIONS (and the whole suite passes on it)
SWITCH_GAIN = 1.25
SWITCH_CONNECTIONS = 64
READY_SECONDS = 60.0
STOP_SECONDS = 20.0


def command(server: Server, app: App, port: int) -> list[str]:
    """The command serving ``app`` under ``server`` on 127.0.0.1:``port``. Under uvicorn each app starts as
    `python -m gateway` does (its port from GATEWAY_PORT, set by :func:`start`)."""
    if server == "uvicorn":
        return [sys.executable, "-m", "bench.ceiling_app" if app == "ceiling" else "gateway"]
    if server == "granian":
        return [sys.executable, "-m", "granian", *GRANIAN_OPTIONS, "--host", HOST, "--port", str(port),
                "--factory", f"bench.ceiling_app:{app}_app"]
    raise ValueError(f"server must be one of {', '.join(SERVERS)}, got {server!r}")


@dataclass
class Served:
    """An app serving under a server, in a process group of its own."""

    server: Server
    app: App
    process: subprocess.Popen
    url: str
    log: Path

    @property
    def endpoint(self) -> str:
        """What the benchmark loads: the ceiling's route, or the gateway's single-model `/predict`."""
        return f"{self.url}{CEILING_PATH if self.app == 'ceiling' else '/predict'}"

    def stop(self, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM the group, as the stack stops a service; its leader's exit status (negative: the signal that
        ended it). SIGKILL for what is left of the group after ``timeout``, or after the leader exits."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            status: int | None = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait() if status is None else status


def start(server: Server, app: App, env: dict[str, str], port: int, log_dir: Path) -> Served:
    """Start ``app`` under ``server`` on 127.0.0.1:``port``, and return once it answers (its process fails
    early: the error names its log)."""
    log = log_dir / f"{app}-{server}-{port}.log"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**env, "STACK_HOST": HOST, "GATEWAY_PORT": str(port)}
    with log.open("wb") as out:
        process = subprocess.Popen(command(server, app, port), cwd=PROJECT_DIR, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(server, app, process, f"http://{HOST}:{port}", log)
    try:
        wait_until(ready(served), READY_SECONDS, f"{app} under {server}", process, log)
    except BaseException:
        served.stop()
        raise
    return served


def ready(served: Served) -> Callable[[], bool]:
    if served.app == "gateway":
        return http_ok(f"{served.url}/health")
    return lambda: httpx.post(served.endpoint, content=b"{}", timeout=2.0).status_code == 200


def start_ceiling(server: Server, env: dict[str, str], port: int, log_dir: Path) -> Served:
    return start(server, "ceiling", env, port, log_dir)


def start_gateway(server: Server, env: dict[str, str], port: int, log_dir: Path) -> Served:
    """A gateway under ``server``; ``env`` as for a second gateway beside the stack's (its own STACK_DIR,
    training off)."""
    return start(server, "gateway", env, port, log_dir)


def median_ratio(measured: list[float], reference: list[float]) -> float:
    """The median of ``measured`` over that of ``reference`` (rounds measured in turn): granian's requests/s
    over uvicorn's, or the gateway's single-row requests/s over the ceiling's on the same server."""
    return statistics.median(measured) / statistics.median(reference)


def switch_warranted(uvicorn_rps: list[float], granian_rps: list[float]) -> bool:
    """Whether granian's gain over uvicorn, measured at :data:`SWITCH_CONNECTIONS`, is enough to change server."""
    return median_ratio(granian_rps, uvicorn_rps) >= SWITCH_GAIN
