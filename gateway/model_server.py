"""The model server: serves the promoted version and switches versions without downtime.

One supervisor process listens on ``MODEL_SERVER_PORT`` and follows the
registry (alias or stage, see settings). It serves in one of two modes
(``MODEL_SERVER_MODE``):

- ``fast`` (default): the supervisor loads the version with
  ``mlflow.pyfunc.load_model`` and answers ``/invocations`` itself, through the
  model's records path (no pandas, orjson). A new version is loaded beside the
  old one and the reference is swapped: requests in flight finish on the old
  model, the next ones use the new one (hot reload).
- ``mlflow``: it runs ``mlflow models serve`` of the version on a free port,
  waits until it answers ``/ping``, proxies ``/invocations`` to it, and stops the
  old server once its requests have drained; a server that dies is restarted.

Both speak MLflow's scoring protocol (``{"dataframe_records": [...]}`` in,
``{"predictions": [...]}`` out, errors as ``{"error_code", "message"}``), add the
served version as ``X-Model-Name``/``X-Model-Version``, and answer 503 (never
hang) while nothing can serve. ``GET /status`` tells what is served and why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gateway.observability import run_service
from gateway.processes import stop_process_group
from gateway.settings import Settings, get_settings
from steps.runs import first_line

log = logging.getLogger("model_server")
VENV_BIN = Path(sys.executable).parent


def promoted_version(client: MlflowClient, settings: Settings) -> str | None:
    """The version the registry says to serve, or None."""
    name = settings.model_name
    try:
        if settings.serve_follows == "alias":
            return client.get_model_version_by_alias(name, settings.serve_alias).version
        versions = client.get_latest_versions(name, stages=[settings.serve_stage])
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in err.message.lower():
            return None
        raise
    return max((v.version for v in versions), key=int, default=None)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class SubprocessBackend:
    """One running ``mlflow models serve`` (mode ``mlflow``)."""

    version: str
    process: subprocess.Popen
    url: str
    http: httpx.AsyncClient
    on_close: Callable[[int], None]
    in_flight: int = 0

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    async def invoke(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        answer = await self.http.post(f"{self.url}/invocations", content=body,
                                      headers={"Content-Type": content_type})
        return answer.status_code, answer.content

    async def close(self) -> None:
        if self.alive:  # once reaped, its pid may belong to someone else
            await asyncio.to_thread(stop_process_group, self.process.pid)
        self.on_close(self.process.pid)


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error_code": code, "message": message})


def records_of(payload: Any) -> list[dict[str, Any]]:
    """The rows of an MLflow scoring request (``dataframe_records`` or ``dataframe_split``)."""
    if isinstance(payload, dict) and isinstance(payload.get("dataframe_records"), list):
        rows = payload["dataframe_records"]
    elif isinstance(payload, dict) and isinstance(payload.get("dataframe_split"), dict):
        split = payload["dataframe_split"]
        columns, data = split.get("columns"), split.get("data")
        if not isinstance(columns, list) or not isinstance(data, list) or not all(
                isinstance(row, list) and len(row) == len(columns) for row in data):
            raise ValueError("dataframe_split needs 'columns' and 'data' rows of the same length")
        rows = [dict(zip(columns, row, strict=True)) for row in data]
    else:
        raise ValueError("expected a JSON object with 'dataframe_records' (a list of row objects)"
                         " or 'dataframe_split'")
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError("every record must be a JSON object of column: value")
    return rows


@dataclass
class InProcessBackend:
    """A version loaded into this process (mode ``fast``)."""

    version: str
    model: Any  # the pyfunc's python model: has predict_records
    in_flight: int = 0
    alive: bool = True

    async def invoke(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        try:
            rows = records_of(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError) as err:
            return _error(400, "BAD_REQUEST", f"invalid request body: {err}")
        if not rows:
            return 200, b'{"predictions":[]}'
        try:
            # numba releases the GIL in the forest: big batches run beside other requests
            predictions = (self.model.predict_records(rows) if len(rows) <= 64
                           else await asyncio.to_thread(self.model.predict_records, rows))
        except MlflowException as err:  # InvalidInputError: the caller's data
            return _error(err.get_http_status_code(), err.error_code, err.message)
        return 200, orjson.dumps({"predictions": predictions})

    async def close(self) -> None:
        self.alive = False


Backend = SubprocessBackend | InProcessBackend


@dataclass
class ServingState:
    current: Backend | None = None
    reason: str = "starting: no version looked up yet"
    switched_at: float | None = None
    draining: list[Backend] = field(default_factory=list)


class ModelServerSupervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = ServingState()
        self.client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(settings.model_server_timeout, connect=2.0))
        self._failed_version: tuple[str, float] | None = None
        # pids of the `mlflow models serve` we started: if this process is killed
        # outright they outlive it, and its successor stops them (reap_orphans).
        self._children_file = settings.stack_dir / "run" / f"scoring-servers-{settings.model_server_port}.pids"
        self._children: set[int] = set()

    def _record_children(self) -> None:
        self._children_file.parent.mkdir(parents=True, exist_ok=True)
        self._children_file.write_text("".join(f"{pid}\n" for pid in sorted(self._children)))

    def reap_orphans(self) -> list[int]:
        """Stop the scoring servers a previous supervisor on this port left running."""
        try:
            pids = [int(line) for line in self._children_file.read_text().split()]
        except (FileNotFoundError, ValueError):
            return []
        reaped = []
        for pid in pids:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"mlflow" in command and b"serve" in command:  # not a recycled pid
                stop_process_group(pid, timeout=10)
                reaped.append(pid)
        self._children_file.unlink(missing_ok=True)
        if reaped:
            log.warning("stopped scoring servers left by a previous model server: %s", reaped)
        return reaped

    # --- backends -----------------------------------------------------------------
    def _spawn(self, version: str) -> Backend:
        # Reached only by this supervisor: loopback, whatever STACK_HOST the supervisor binds.
        host = "127.0.0.1"
        port = free_port(host)
        logs = self.settings.logs_dir
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"model-server-v{version}-{port}.log", "ab")  # noqa: SIM115 (kept by the child)
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.settings.tracking_uri,
               # `--env-manager local` starts uvicorn from PATH
               "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        process = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "models", "serve",
             "-m", f"models:/{self.settings.model_name}/{version}",
             "-h", host, "-p", str(port), "--env-manager", "local",
             "-w", str(self.settings.model_server_workers)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        out.close()
        self._children.add(process.pid)
        self._record_children()
        return SubprocessBackend(version=version, process=process, url=f"http://{host}:{port}", http=self.http,
                                 on_close=self._forget_child)

    def _forget_child(self, pid: int) -> None:
        self._children.discard(pid)
        self._record_children()

    async def _start_backend(self, version: str) -> Backend:
        if self.settings.model_server_mode == "fast":
            return await self._load_in_process(version)
        return await self._start_subprocess(version)

    async def _load_in_process(self, version: str) -> InProcessBackend:
        uri = f"models:/{self.settings.model_name}/{version}"
        loaded = await asyncio.wait_for(asyncio.to_thread(mlflow.pyfunc.load_model, uri),
                                        self.settings.model_server_start_timeout)
        model = loaded.unwrap_python_model()
        if not hasattr(model, "predict_records"):
            raise RuntimeError(f"{uri} is not this project's pyfunc (no predict_records); "
                               "serve it with MODEL_SERVER_MODE=mlflow")
        return InProcessBackend(version=version, model=model)

    async def _start_subprocess(self, version: str) -> SubprocessBackend:
        backend = self._spawn(version)
        deadline = time.monotonic() + self.settings.model_server_start_timeout
        while time.monotonic() < deadline:
            if not backend.alive:
                raise RuntimeError(f"mlflow models serve for version {version} exited with {backend.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await self.http.get(f"{backend.url}/ping", timeout=1.0)).status_code == 200:
                    return backend
            await asyncio.sleep(0.2)
        await backend.close()
        raise RuntimeError(f"mlflow models serve for version {version} did not answer within "
                           f"{self.settings.model_server_start_timeout:.0f}s")

    async def _retire(self, backend: Backend) -> None:
        """Stop ``backend`` once the drain time has passed and its requests are done."""
        self.state.draining.append(backend)
        await asyncio.sleep(self.settings.drain_seconds)
        deadline = time.monotonic() + self.settings.model_server_timeout
        while backend.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await backend.close()
        self.state.draining.remove(backend)

    # --- following the registry ---------------------------------------------------------
    async def reconcile(self) -> None:
        """One step towards serving the promoted version."""
        try:
            desired = await asyncio.to_thread(promoted_version, self.client, self.settings)
        except Exception as err:  # registry unreachable: keep serving what we serve
            self.state.reason = f"registry unreachable: {first_line(err, 200)}"
            log.warning(self.state.reason)
            if self.state.current is None:
                return
            desired = self.state.current.version
        current = self.state.current
        if desired is None:
            if current is None:
                following = (f"alias '{self.settings.serve_alias}'" if self.settings.serve_follows == "alias"
                             else f"stage '{self.settings.serve_stage}'")
                self.state.reason = f"no version of '{self.settings.model_name}' holds {following}"
            return  # an un-promoted model keeps being served until something else is promoted
        if current is not None and current.version == desired and current.alive:
            return
        if self._failed_version and self._failed_version[0] == desired and time.monotonic() < self._failed_version[1]:
            return  # back off after a failed start of this very version
        if current is not None and not current.alive:
            log.warning("model server for version %s died; restarting", current.version)
            self.state.current = None
            self.state.reason = f"model server for version {current.version} died; restarting"
        log.info("starting model server for %s version %s", self.settings.model_name, desired)
        if self.state.current is None:
            self.state.reason = f"loading version {desired} of '{self.settings.model_name}'"
        try:
            backend = await self._start_backend(desired)
        except Exception as err:
            self._failed_version = (desired, time.monotonic() + 30.0)
            self.state.reason = f"cannot serve version {desired}: {err}"
            log.error(self.state.reason)
            return
        self._failed_version = None
        gc.freeze()  # the newly loaded model's objects live as long as it is served
        old, self.state.current = self.state.current, backend
        self.state.switched_at = time.time()
        log.info("serving %s version %s (%s mode)", self.settings.model_name, desired,
                 self.settings.model_server_mode)
        if old is not None:
            asyncio.create_task(self._retire(old))

    async def run(self) -> None:
        await asyncio.to_thread(self.reap_orphans)
        while True:
            await self.reconcile()
            await asyncio.sleep(self.settings.registry_poll_seconds)

    async def close(self) -> None:
        await self.http.aclose()
        backends = [b for b in [self.state.current, *self.state.draining] if b is not None]
        for backend in backends:
            await backend.close()

    # --- requests -----------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        current = self.state.current
        serving = current is not None and current.alive
        return {
            "status": "serving" if serving else "unavailable",
            "model_name": self.settings.model_name,
            "version": current.version if serving else None,
            "reason": None if serving else self.state.reason,
            "follows": (f"alias:{self.settings.serve_alias}" if self.settings.serve_follows == "alias"
                        else f"stage:{self.settings.serve_stage}"),
            "switched_at": self.state.switched_at,
        }

    async def forward(self, body: bytes, content_type: str) -> Response:
        backend = self.state.current
        if backend is None or not backend.alive:
            reason = self.state.reason if backend is None else f"model server for version {backend.version} is down"
            return JSONResponse({"error_code": "MODEL_UNAVAILABLE", "message": reason}, status_code=503)
        backend.in_flight += 1
        try:
            status, content = await backend.invoke(body, content_type)
        except httpx.HTTPError as err:
            return JSONResponse(
                {"error_code": "MODEL_UNAVAILABLE",
                 "message": f"model server for version {backend.version} did not answer: {type(err).__name__}"},
                status_code=503)
        finally:
            backend.in_flight -= 1
        return Response(content, status_code=status, media_type="application/json",
                        headers={"X-Model-Name": self.settings.model_name, "X-Model-Version": backend.version})


def create_app(settings: Settings) -> FastAPI:
    supervisor = ModelServerSupervisor(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # `models:/` URIs of mode "fast" resolve against these (this process is ours).
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.tracking_uri)
        task = asyncio.create_task(supervisor.run())
        gc.freeze()  # as in gateway/app.py: keep full GC passes off the request path
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await supervisor.close()

    app = FastAPI(title="model server supervisor", lifespan=lifespan)
    app.state.supervisor = supervisor

    @app.get("/status")
    def status() -> dict[str, object]:
        return supervisor.status()

    @app.get("/ping")
    def ping() -> Response:
        body = supervisor.status()
        return JSONResponse(body, status_code=200 if body["status"] == "serving" else 503)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        return await supervisor.forward(await request.body(),
                                        request.headers.get("content-type", "application/json"))

    return app


def main() -> None:
    settings = get_settings()
    run_service(create_app, settings, settings.model_server_port)


if __name__ == "__main__":
    main()
