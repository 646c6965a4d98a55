"""A worker: one model version, loaded with the code logged with it, answering over a Unix socket.

``python -m model_server.worker --model-uri models:/<name>/<version> --socket <path>``, or, started as a
spare (``--spare``), warm: it imports what a model needs, then reads which version to load from its stdin.

MLflow loads a model's logged code by putting its folder first on ``sys.path``;
a module of the same name that a process has already imported wins over it.
So each version runs in a process of its own that has imported nothing of the
project's model code: before loading, the worker takes the project folder off
``sys.path`` and refuses to go on if ``pyfunc`` is loaded (the import rules of
``.importlinter`` keep ``model_server`` from importing it). Whatever version it
loads, ``pyfunc`` then comes from that version's ``code/`` folder.

The sockets (one a process, see ``--processes``) are created once the model is loaded: the model
server waits for them.
Requests and replies are :mod:`model_server.wire` frames; bodies are MLflow's
scoring protocol (:mod:`model_server.protocol`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_server import protocol, wire

log = logging.getLogger("model_server.worker")
PROJECT_DIR = Path(__file__).resolve().parents[1]
# Below this many rows a request is scored in the event loop; above, or with params (explanations), in a
# thread (the compiled forest and its TreeSHAP release the GIL, so a big request does not hold up small ones).
INLINE_ROWS = 64
MODEL_PACKAGE = "pyfunc"


class IsolationError(RuntimeError):
    pass


def die_with(parent_pid: int) -> None:
    """Be sent SIGTERM when the model server that started us dies, even by ``kill -9`` (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before we asked
        raise SystemExit(f"the model server (pid {parent_pid}) is gone")


def isolate_from_project(project_dir: Path = PROJECT_DIR) -> None:
    """Take the project folder off ``sys.path`` so that model code can only come from a model."""
    if MODEL_PACKAGE in sys.modules:
        raise IsolationError(f"'{MODEL_PACKAGE}' was imported before a model was loaded: from "
                             f"{getattr(sys.modules[MODEL_PACKAGE], '__file__', '?')}")
    here = project_dir.resolve()
    sys.path[:] = [entry for entry in sys.path if Path(entry or os.getcwd()).resolve() != here]


# What loading this project's model imports and sets up, done by a spare before it knows which version it will
# load: most of a cold worker's start (see docs/performance.md). Third-party only: the model's own package must
# come from its version's code. A module missing here only loses its head start.
WARM_MODULES = ("numpy", "pandas", "orjson", "msgspec", "mlflow.pyfunc", "sklearn.pipeline", "sklearn.compose",
                "sklearn.ensemble", "sklearn.impute", "sklearn.preprocessing", "skops.io", "numba")


def warm_up() -> None:
    """Import :data:`WARM_MODULES`, set up numba's compiler, and build MLflow's map of installed packages (each
    load checks the model's requirements against it): everything a load pays for once a process."""
    import importlib

    def compile_once() -> None:  # the compiler's registries, set up on a first compile
        sys.modules["numba"].njit(lambda x: x + 1)(1)

    def map_packages() -> None:  # MLflow's own (private) helper: if it moves, only the head start is lost
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map

        _init_packages_to_modules_map()

    steps = [(name, lambda name=name: importlib.import_module(name)) for name in WARM_MODULES]
    for what, step in [*steps, ("numba's compiler", compile_once), ("MLflow's package map", map_packages)]:
        try:
            step()
        except Exception as err:  # noqa: BLE001 (a warm-up step only saves time: the load does it anyway)
            log.warning("not warmed: %s (%s: %s)", what, type(err).__name__, err)


@dataclass(frozen=True)
class Assignment:
    """The version a worker loads, where it answers, and the log it writes to."""

    model_uri: str
    socket: Path
    log: Path | None = None

    def line(self) -> bytes:
        """As a spare reads it from its stdin."""
        return json.dumps({"model_uri": self.model_uri, "socket": str(self.socket),
                           "log": str(self.log) if self.log else None}).encode() + b"\n"

    @classmethod
    def read(cls, stream: Any) -> Assignment | None:
        """The assignment on ``stream``; None when it closed first (the model server no longer needs this spare)."""
        line = stream.readline()
        if not line.strip():
            return None
        fields = json.loads(line)
        return cls(fields["model_uri"], Path(fields["socket"]), Path(fields["log"]) if fields.get("log") else None)


def write_to(log_path: Path) -> None:
    """Send this process's output (fds 1 and 2) to ``log_path``: a spare's output goes to its version's log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class LoadedModel:
    """One loaded version and how to score a request with it."""

    def __init__(self, uri: str):
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        started = time.perf_counter()
        self.uri = uri
        self.pyfunc = mlflow.pyfunc.load_model(uri)
        try:
            python_model = self.pyfunc.unwrap_python_model()
        except MlflowException:  # not a python model (another flavour): the generic path
            python_model = None
        # this project's pyfunc: JSON rows straight to its compiled path, no pandas on the way
        self.predict_records = getattr(python_model, "predict_records", None)
        # bodies that came column by column (CSV, dataframe_split); None for versions logged before it
        self.predict_table = getattr(python_model, "predict_table", None)
        # its columns: a JSON records body is read straight into them for predict_table (not every version names them)
        columns = getattr(python_model, "input_columns", None) if self.predict_table is not None else None
        self.records_reader = protocol.RecordsReader(columns) if columns else None
        self.code_file = getattr(sys.modules.get(MODEL_PACKAGE), "__file__", None)
        log.info("loaded %s in %.1fs (model code: %s)", uri, time.perf_counter() - started, self.code_file)

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri, "pid": os.getpid(), "records_path": self.predict_records is not None,
                "model_code": self.code_file}

    def score(self, request: protocol.ScoringInput) -> bytes:
        if not request.params:
            if self.predict_table is not None and request.columns is not None:
                names, cells = request.columns
                return protocol.predictions_body(self.predict_table(names, cells) if request.rows else [])
            # (dicts made from columns only for a model that reads them: as_frame below makes its own)
            if self.predict_records is not None and (records := request.as_records()) is not None:
                return protocol.predictions_body(self.predict_records(records) if records else [])
        frame = request.as_frame()
        result = self.pyfunc.predict(frame, params=request.params) if request.params else self.pyfunc.predict(frame)
        if hasattr(result, "to_dict"):
            result = result.to_dict(orient="records")
        return protocol.predictions_body(result)


class Worker:
    def __init__(self, model: LoadedModel):
        self.model = model

    async def answer(self, header: dict[str, Any], body: bytes) -> tuple[int, str, bytes]:
        op = header.get("op")
        if op == "ping":
            return 200, protocol.CONTENT_TYPE_JSON, protocol.orjson.dumps(self.model.describe())
        if op != "invocations":
            return 404, protocol.CONTENT_TYPE_JSON, protocol.error_body("ENDPOINT_NOT_FOUND", f"no operation {op!r}")
        try:
            body = protocol.decoded(body, header.get("content_encoding", ""))
            # max_rows: the gateway's contract, refused here before any scoring when broken (app.forward)
            request = protocol.parse_request(body, header.get("content_type", protocol.CONTENT_TYPE_JSON),
                                             self.model.records_reader, header.get("max_rows"))
            if request.rows <= INLINE_ROWS and not request.params:  # params (explain) cost more: a thread too
                return 200, protocol.CONTENT_TYPE_JSON, self.model.score(request)
            return 200, protocol.CONTENT_TYPE_JSON, await asyncio.to_thread(self.model.score, request)
        except protocol.ProtocolError as err:
            return err.status, err.content_type, err.body()
        except Exception as err:  # noqa: BLE001 (every failure becomes MLflow's error body)
            return model_error(err)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    header, body = await wire.read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                status, content_type, answer = await self.answer(header, body)
                await wire.write_frame(writer, {"status": status, "content_type": content_type}, answer)
        finally:
            writer.close()


def model_error(err: Exception) -> tuple[int, str, bytes]:
    """What MLflow's scoring server answers to a model that raised, without the input pasted in."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):  # pyfunc.cleaning.InvalidInputError: the caller's data
        return err.get_http_status_code(), protocol.CONTENT_TYPE_JSON, protocol.error_body(err.error_code, err.message)
    log.exception("the model raised")
    return 400, protocol.CONTENT_TYPE_JSON, protocol.error_body(
        "BAD_REQUEST", "Encountered an unexpected error while evaluating the model. Verify that the serialized"
        f" input Dataframe is compatible with the model for inference. ({type(err).__name__}: {err})")


def listen(socket_path: Path) -> socket.socket:
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(128)
    return listener


def fork_processes(count: int) -> int:
    """Fork ``count - 1`` copies of this loaded worker; the process's index: 0 in the first, 1... in a copy.

    The copies share the model's memory (copy on write, after ``gc.freeze``) so one version's requests
    use several cores: the cleaning is Python and holds the GIL. Forked before any thread or event loop
    exists.
    """
    first = os.getpid()
    for index in range(1, count):
        if os.fork() == 0:
            die_with(first)
            return index
    return 0


async def serve(model: LoadedModel, listener: socket.socket) -> None:
    worker = Worker(model)
    server = await asyncio.start_unix_server(worker.serve_connection, sock=listener)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("serving %s (pid %d)", model.uri, os.getpid())
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    from runtime.logs import apply_mlflow_client_defaults, configure_logging
    from runtime.processes import settle_heap

    parser = argparse.ArgumentParser(prog="python -m model_server.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri")
    parser.add_argument("--socket", type=Path)
    parser.add_argument("--spare", action="store_true",
                        help="warm up, then read the version to load from stdin (a JSON line: model_uri, socket, log)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--parent-pid", type=int, help="stop when this process (the model server) dies")
    parser.add_argument("--processes", type=int, default=1, help="processes answering for this version")
    args = parser.parse_args(argv)
    if args.parent_pid:
        die_with(args.parent_pid)
    configure_logging(args.log_level)
    apply_mlflow_client_defaults()
    isolate_from_project()
    if args.spare:
        started = time.perf_counter()
        warm_up()
        isolate_from_project()  # again: nothing warm_up imported may have brought the model package in
        warmed = time.perf_counter() - started
        assignment = Assignment.read(sys.stdin)
        if assignment is None:
            return
        if assignment.log:
            write_to(assignment.log)
        log.info("a spare warmed in %.1fs (pid %d) loads %s", warmed, os.getpid(), assignment.model_uri)
    elif args.model_uri and args.socket:
        assignment = Assignment(args.model_uri, args.socket)
    else:
        parser.error("give --model-uri and --socket, or --spare")
    model = LoadedModel(assignment.model_uri)
    settle_heap()  # the model's objects live as long as the process: kept out of the collector's passes
    # One socket a process (wire.process_sockets), so the model server chooses which process gets a
    # request: on one shared socket, its few kept connections could all be accepted by one process while
    # the other idled. Created once the model is loaded, the first process's last: the model server
    # waits for it, and then finds them all.
    paths = wire.process_sockets(assignment.socket, max(1, args.processes))
    listeners = [listen(path) for path in reversed(paths)][::-1]
    index = fork_processes(len(paths))
    for other, listener in enumerate(listeners):
        if other != index:
            listener.close()
    import uvloop  # the same C event loop uvicorn runs our services on

    try:
        uvloop.run(serve(model, listeners[index]))
    finally:
        paths[index].unlink(missing_ok=True)


if __name__ == "__main__":
    main()
