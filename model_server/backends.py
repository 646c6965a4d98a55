"""Backends: one loaded model version each, in a process of its own.

- :class:`WorkerBackend` (mode ``fast``): ``python -m model_server.worker``, our
  worker, reached over a Unix socket with :mod:`model_server.wire` frames;
- :class:`ScoringServerBackend` (mode ``mlflow``): ``mlflow models serve`` of the
  version on a free loopback port, reached over HTTP.

Both processes start without the project's model code on their path, so each
version runs the code logged with it. Every process started is recorded in a
pid file (:class:`ChildProcesses`): if the model server is killed outright its
successor stops what it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from contract.settings import PROJECT_DIR, Settings
from model_server import protocol, wire
from model_server.worker import Assignment
from runtime.processes import VENV_BIN, free_port, identified, process_identity, stop_process_group, tool_env

log = logging.getLogger("model_server")
# Connections kept open to one worker; more are opened under load and closed after.
IDLE_CONNECTIONS = 32
# Starts of a `mlflow models serve` backend whose port another process took meanwhile, before giving up.
PORT_ATTEMPTS = 3


class BackendUnavailable(Exception):
    """The backend's process did not answer (it died, or its connection broke)."""


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


@dataclass(eq=False)
class Backend:
    name: str
    version: str
    process: subprocess.Popen
    log_path: Path
    on_close: Any  # Callable[[int], None]: forget the pid
    in_flight: int = 0
    started_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    async def invoke(self, body: bytes, content_type: str, content_encoding: str = "",
                     max_rows: int | None = None) -> Reply:
        """The backend's answer to a scoring request (``content_encoding``: protocol.check_encoding's; ``max_rows``:
        the gateway's contract, protocol.parse_request's)."""
        raise NotImplementedError

    async def ready(self) -> bool:
        """Whether the process answers yet."""
        raise NotImplementedError

    async def close(self) -> None:
        if self.alive:  # once reaped, its pid may belong to someone else
            await asyncio.to_thread(stop_process_group, self.process.pid)
        self.on_close(self.process.pid)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "pid": self.process.pid, "alive": self.alive, "in_flight": self.in_flight,
                "started_at": self.started_at}


@dataclass(eq=False)
class WorkerBackend(Backend):
    socket_path: Path = Path()
    processes: int = 1
    _idle: list[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = field(default_factory=list)
    _busy: list[int] = field(default_factory=list)  # calls in flight, per process

    def __post_init__(self) -> None:
        self.sockets = wire.process_sockets(self.socket_path, self.processes)
        self._idle = [[] for _ in self.sockets]
        self._busy = [0] * len(self.sockets)

    async def _connect(self, index: int) -> tuple[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """A connection to process ``index``, or to the next one that takes it (a copy that died refuses)."""
        for attempt in range(len(self.sockets)):
            tried = (index + attempt) % len(self.sockets)
            if self._idle[tried]:
                return tried, self._idle[tried].pop()
            try:
                return tried, await asyncio.open_unix_connection(str(self.sockets[tried]))
            except OSError:
                if attempt == len(self.sockets) - 1:
                    raise
        raise OSError("no process")  # not reached: the loop returns or raises

    async def _call(self, header: dict[str, Any], body: bytes) -> Reply:
        index = self._busy.index(min(self._busy))  # the process with the fewest calls in flight
        connection = None
        self._busy[index] += 1  # counted before the first await: concurrent calls spread out
        try:
            tried, connection = await self._connect(index)
            self._busy[index] -= 1
            self._busy[tried] += 1
            index = tried
            reader, writer = connection
            await wire.write_frame(writer, header, body)
            answer, content = await wire.read_frame(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as err:
            if connection is not None:
                connection[1].close()
            raise BackendUnavailable(f"worker for version {self.version} did not answer: {type(err).__name__}") from None
        except BaseException:  # cancelled mid-call: the connection's state is unknown
            if connection is not None:
                connection[1].close()
            raise
        finally:
            self._busy[index] -= 1
        if len(self._idle[index]) < IDLE_CONNECTIONS:
            self._idle[index].append(connection)
        else:
            connection[1].close()
        return Reply(answer["status"], answer["content_type"], content)

    async def invoke(self, body: bytes, content_type: str, content_encoding: str = "",
                     max_rows: int | None = None) -> Reply:
        # passed on packed: the worker unpacks it (the fewer bytes moved, the better), and checks the contract
        return await self._call({"op": "invocations", "content_type": content_type,
                                 "content_encoding": content_encoding, "max_rows": max_rows}, body)

    async def ready(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return (await self._call({"op": "ping"}, b"")).status == 200
        except BackendUnavailable:
            return False

    async def close(self) -> None:
        for idle in self._idle:
            for _, writer in idle:
                writer.close()
            idle.clear()
        await super().close()
        for path in self.sockets:
            path.unlink(missing_ok=True)


@dataclass(eq=False)
class ScoringServerBackend(Backend):
    url: str = ""
    http: httpx.AsyncClient | None = None

    async def invoke(self, body: bytes, content_type: str, content_encoding: str = "",
                     max_rows: int | None = None) -> Reply:
        assert self.http is not None
        try:
            body = protocol.decoded(body, content_encoding)  # MLflow's scoring server reads no content coding
            if max_rows is not None:  # MLflow's server knows no gateway contract: checked here, read once more
                await asyncio.to_thread(protocol.parse_request, body, content_type, None, max_rows)
            body, content_type = protocol.as_mlflow_body(body, content_type)
        except protocol.ProtocolError as err:
            return Reply(err.status, err.content_type, err.body())
        try:
            answer = await self.http.post(f"{self.url}/invocations", content=body,
                                          headers={"Content-Type": content_type})
        except httpx.HTTPError as err:
            raise BackendUnavailable(f"mlflow models serve for version {self.version} did not answer: "
                                     f"{type(err).__name__}") from None
        return Reply(answer.status_code, answer.headers.get("content-type", "application/json"), answer.content)

    async def ready(self) -> bool:
        assert self.http is not None
        with contextlib.suppress(httpx.HTTPError):
            return (await self.http.get(f"{self.url}/ping", timeout=1.0)).status_code == 200
        return False


class ChildProcesses:
    """The pids of the backends this model server started, kept in a file for its successor."""

    def __init__(self, path: Path):
        self.path = path
        self.pids: dict[int, str] = {}  # PID -> its identity (runtime/processes.py): PID and start time

    def add(self, pid: int) -> None:
        self.pids[pid] = process_identity(pid) or str(pid)
        self._write()

    def forget(self, pid: int) -> None:
        self.pids.pop(pid, None)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(f"{identity}\n" for _, identity in sorted(self.pids.items())))

    def reap_orphans(self) -> list[int]:
        """Stop the backends a previous model server on this port left running."""
        try:
            identities = self.path.read_text().split()
        except FileNotFoundError:
            return []
        reaped = []
        for identity in identities:
            # that very process, not whoever holds its PID now; a file of bare PIDs (written before start
            # times were kept): a backend's command line
            pid = identified(identity, marker="model_server.worker") or identified(identity, marker="serve")
            if pid:
                stop_process_group(pid, timeout=10)
                reaped.append(pid)
        self.path.unlink(missing_ok=True)
        if reaped:
            log.warning("stopped backends left by a previous model server: %s", reaped)
        return reaped


class Launcher:
    """Starts a backend for a version, in the mode the settings say, and waits until it answers.

    In mode ``fast`` it keeps one spare worker started ahead (:func:`model_server.worker.warm_up`): a version
    becoming a target is handed to it, so its load skips the imports and set-up every cold worker pays.
    """

    def __init__(self, settings: Settings, children: ChildProcesses, socket_dir: Path, http: httpx.AsyncClient):
        self.settings = settings
        self.children = children
        self.socket_dir = socket_dir
        self.http = http
        self._count = 0
        self.spare: subprocess.Popen | None = None

    def _log_path(self, name: str, version: str) -> Path:
        return self.settings.logs_dir / f"{self.settings.model_server_mode}-{name}-v{version}.log"

    def _spawn(self, command: list[str], log_path: Path, stdin: int = subprocess.DEVNULL) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the model's code
        env = tool_env(base, MLFLOW_TRACKING_URI=self.settings.tracking_uri)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(command, cwd=PROJECT_DIR, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       stdin=stdin, start_new_session=True)
        self.children.add(process.pid)
        return process

    def _new_worker(self) -> subprocess.Popen:
        """A worker process that warms up, then waits on its stdin for the version to load."""
        return self._spawn([str(VENV_BIN / "python"), "-m", "model_server.worker", "--spare",
                            "--log-level", self.settings.log_level, "--parent-pid", str(os.getpid()),
                            "--processes", str(self.settings.model_server_workers)],
                           self.spare_log, stdin=subprocess.PIPE)

    @property
    def spare_log(self) -> Path:
        return self.settings.logs_dir / "fast-spare.log"

    def spare_pid(self) -> int | None:
        """The spare worker's pid while it runs (read from any thread: one read of ``spare``)."""
        spare = self.spare
        return spare.pid if spare is not None and spare.poll() is None else None

    def keep_spare(self) -> None:
        """Start the spare worker if there is none (mode ``fast``): at start, and after each one is taken."""
        if (self.settings.model_server_mode != "fast" or not self.settings.model_server_spare
                or (self.spare is not None and self.spare.poll() is None)):
            return
        if self.spare is not None:
            log.warning("the spare worker exited with status %s; starting another", self.spare.returncode)
            self.children.forget(self.spare.pid)
        self.spare = self._new_worker()

    def _take_spare(self) -> subprocess.Popen:
        spare, self.spare = self.spare, None
        if spare is not None and spare.poll() is None:
            return spare
        if spare is not None:
            self.children.forget(spare.pid)
        return self._new_worker()  # none ready: a cold start, as fast as a spare that is still warming

    def close_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            if spare.poll() is None:
                stop_process_group(spare.pid, timeout=10)
            self.children.forget(spare.pid)

    def _backend(self, name: str, version: str) -> Backend:
        uri = f"models:/{name}/{version}"
        self._count += 1
        log_path = self._log_path(name, version)
        if self.settings.model_server_mode == "fast":
            # a short path: a Unix socket's path has room for about 100 bytes
            socket_path = self.socket_dir / f"w{self._count}.sock"
            process = self._take_spare() if self.settings.model_server_spare else self._new_worker()
            assert process.stdin is not None
            try:
                process.stdin.write(Assignment(uri, socket_path, log_path).line())
                process.stdin.close()
            except OSError as err:  # it died just now: _start sees it exit and says why
                log.warning("the worker for %s version %s did not take its assignment: %s", name, version, err)
            return WorkerBackend(name, version, process, log_path, self.children.forget, socket_path=socket_path,
                                 processes=self.settings.model_server_workers)
        host = "127.0.0.1"  # reached only by this model server
        port = free_port(host)
        process = self._spawn(
            [str(VENV_BIN / "mlflow"), "models", "serve", "-m", uri, "-h", host, "-p", str(port),
             "--env-manager", "local", "-w", str(self.settings.model_server_workers)], log_path)
        return ScoringServerBackend(name, version, process, log_path, self.children.forget,
                                    url=f"http://{host}:{port}", http=self.http)

    async def start(self, name: str, version: str) -> Backend:
        for _ in range(PORT_ATTEMPTS - 1):
            log_path = self._log_path(name, version)
            log_start = log_path.stat().st_size if log_path.exists() else 0
            try:
                return await self._start(name, version)
            except RuntimeError:
                # `mlflow models serve` binds the port free_port found seconds earlier; another process may have
                # taken it since. That is no fault of the version: it starts again on another port.
                if not port_taken(log_path, log_start):
                    raise
                log.warning("the backend of %s version %s found its port taken; starting it again", name, version)
        return await self._start(name, version)

    async def _start(self, name: str, version: str) -> Backend:
        backend = self._backend(name, version)
        try:
            deadline = time.monotonic() + self.settings.model_server_start_timeout
            while time.monotonic() < deadline:
                if not backend.alive:
                    await backend.close()
                    # a worker that died before it took its version said why in the spare's log
                    reason = last_line(backend.log_path) if backend.log_path.exists() else last_line(self.spare_log)
                    raise RuntimeError(f"the backend of version {version} exited with status "
                                       f"{backend.process.returncode}: {reason}")
                if await backend.ready():
                    return backend
                await asyncio.sleep(0.1)
            await backend.close()
            raise RuntimeError(f"the backend of version {version} did not answer within "
                               f"{self.settings.model_server_start_timeout:.0f}s; see {backend.log_path}")
        except BaseException:
            if backend.alive:  # cancelled mid-wait (the pool closing): not left running
                await backend.close()
            raise
        finally:
            self.keep_spare()  # the next one warms once this load, done or failed, no longer needs the cores


def port_taken(path: Path, start: int) -> bool:
    """Whether what a backend logged from byte ``start`` on says its port was taken (uvicorn's bind error)."""
    with contextlib.suppress(OSError), open(path, "rb") as log_file:
        log_file.seek(start)
        return b"address already in use" in log_file.read().lower()
    return False


def last_line(path: Path) -> str:
    """The last non-empty line of a log (a worker's reason for exiting)."""
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][-500:]
    return f"see {path}"
