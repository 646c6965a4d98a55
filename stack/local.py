"""The local stack without Docker: ``python -m stack up|down|status`` (``make up``/``make down``).

``up`` starts the tracking server (SQLite and artifacts under STACK_DIR, shared with ``make run``),
trains and promotes the default model if none is promoted yet, starts the model
server and the gateway, waits until each answers, prints the URLs and returns.
``down`` stops what ``up`` started. Another STACK_DIR with other ports is an
independent second stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from mlflow import MlflowClient

from contract.registry import NotFound, Registry
from contract.exposure import refusals
from contract.settings import PROJECT_DIR, Settings, settings_or_exit
from runtime.processes import VENV_BIN, children, identified, process_identity, stop_process_group, tool_env
from stack.tracking_auth import auth_app

SERVICES = ("gateway", "model-server", "mlflow")  # stop order


class StackError(RuntimeError):
    pass


SETTINGS_FILE = "settings.json"  # in the run folder: the settings the running stack was started with
SECRET_SETTINGS = frozenset({"GATEWAY_API_TOKEN", "PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"})  # compared, never printed


def comparable_settings(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, secrets as a digest (the run folder is no place for a token)."""
    values = settings_env(settings)
    for name in SECRET_SETTINGS & set(values):
        values[name] = hashlib.sha256(values[name].encode()).hexdigest()
    return values


def tracking_stores(settings: Settings) -> list[str]:
    """The stores of the stack's tracking server, as ``mlflow server`` options."""
    store = settings.stack_dir.resolve()
    artifacts = settings.artifacts_destination or str(store / "artifacts")
    if settings.backend_store_uri:  # the compose topology: artifacts proxied by the tracking server
        return ["--backend-store-uri", settings.backend_store_uri, "--serve-artifacts",
                "--artifacts-destination", artifacts]
    # The default store is shared with `make run`, which writes to the same SQLite file directly (Makefile):
    # artifacts as plain files that every process on this machine reads and writes, not mlflow-artifacts:/
    # URIs that only a client of this server can resolve.
    return ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--default-artifact-root", artifacts]


def changed_settings(running: dict[str, str], asked: dict[str, str]) -> list[str]:
    """What differs between the settings a stack runs with and those of a new ``up``, one item a setting."""
    changed = []
    for name in sorted(set(running) | set(asked)):
        before, after = running.get(name), asked.get(name)
        if before != after:
            changed.append(name if name in SECRET_SETTINGS else f"{name} (running: {before}, asked: {after})")
    return changed


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``check`` until it holds; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        if process is not None and process.poll() is not None:
            raise StackError(f"{what} exited with status {process.returncode}; see {log}")
        time.sleep(0.2)
    raise StackError(f"{what} not ready after {timeout:.0f}s; see {log}")


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2.0).status_code == 200


def settings_env(settings: Settings, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """``settings`` as the environment variables that would read back to them."""
    env = {}
    for name, field in Settings.model_fields.items():
        alias, value = field.validation_alias, getattr(settings, name)
        if not isinstance(alias, str) or alias in exclude or value is None:
            continue
        if isinstance(value, list):
            value = (":" if name == "data_roots" else ",").join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[alias] = str(value)
    return env


# MLflow 3's server also starts a job runner with seven huey worker processes (for its GenAI
# features, unused here) that keep a core of a small machine busy: off.
TRACKING_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

# Read by the stack itself (the tracking server's stores go on its command line).
STACK_ONLY_SETTINGS = frozenset({"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"})
INHERITED_EXPERIMENT = frozenset({"MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"})


class LocalStack:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.run_dir = settings.stack_dir / "run"
        self.tracking_uri = f"http://{settings.host}:{settings.mlflow_port}"

    # --- processes --------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment of every service: every setting, pointed at this stack's own services."""
        values = settings_env(self.settings, exclude=STACK_ONLY_SETTINGS)
        values.update(self.service_credentials())
        values.update({
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MODEL_SERVER_URL": f"http://{self.settings.host}:{self.settings.model_server_port}",
            # Always set, so a token in a stray .env file cannot leak into a stack without one.
            "GATEWAY_API_TOKEN": self.settings.api_token or "",
        })
        # The stack picks its experiments itself: an experiment exported in the caller's shell would make
        # `mlflow run --experiment-name` refuse to start ("Specify only one of ...").
        inherited = {k: v for k, v in os.environ.items() if k not in INHERITED_EXPERIMENT}
        return tool_env(inherited, **values)

    def pid_file(self, service: str) -> Path:
        return self.run_dir / f"{service}.pid"

    def running_pid(self, service: str) -> int | None:
        try:
            identity = self.pid_file(service).read_text().strip()
        except FileNotFoundError:
            return None
        # the watchdog we started, not whoever holds its PID now (a file left by a reboot or a crash);
        # a file written before start times were kept holds the PID only: its command line must be a watchdog's
        return identified(identity, marker="stack.watchdog")

    def log_file(self, service: str) -> Path:
        return self.settings.logs_dir / f"{service}.log"

    def service_pid(self, service: str) -> int | None:
        """The service's own process (the watchdog's child), if it runs."""
        pid = self.running_pid(service)
        kids = children(pid) if pid else []
        return kids[0] if kids else None

    def spawn(self, service: str, command: list[str], port: int,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``command`` under the watchdog, which restarts it if it dies."""
        if port_in_use(self.settings.host, port):
            raise StackError(f"{service}: port {port} on {self.settings.host} is already in use")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file(service), "ab") as out:
            process = subprocess.Popen([str(VENV_BIN / "python"), "-m", "stack.watchdog", "--", *command],
                                       cwd=PROJECT_DIR, env={**self.env(), **(env or {})}, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.pid_file(service).write_text(process_identity(process.pid) or str(process.pid))
        return process

    def stop(self, service: str, timeout: float = 20.0) -> bool:
        pid = self.running_pid(service)
        self.pid_file(service).unlink(missing_ok=True)
        if pid is None:
            return False
        stop_process_group(pid, timeout)
        return True

    # --- MLflow's users (GATEWAY_AUTH=mlflow) ------------------------------------------
    def service_credentials(self) -> dict[str, str]:
        """What every MLflow client of the stack authenticates with: the admin, when the auth app runs.
        (Always set, so credentials in the caller's shell cannot leak into a stack without the app.)"""
        s = self.settings
        mlflow_auth = s.auth_mode == "mlflow"
        return {"MLFLOW_TRACKING_USERNAME": s.mlflow_admin_username if mlflow_auth else "",
                "MLFLOW_TRACKING_PASSWORD": (s.mlflow_admin_password or "") if mlflow_auth else ""}

    def auth_app(self) -> tuple[list[str], dict[str, str]]:
        """``mlflow server`` options and environment for MLflow's basic-auth app (stack/tracking_auth.py): its
        users in SQLite under STACK_DIR or, in the compose topology, in the tracking server's own database;
        a CSRF key kept beside the stack's files."""
        s = self.settings
        if s.auth_mode != "mlflow":
            return [], {}
        key_file = s.stack_dir / "flask-secret-key"
        if not key_file.exists():
            s.stack_dir.mkdir(parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.write_text(secrets.token_hex(32))
        database_uri = s.backend_store_uri or f"sqlite:///{(s.stack_dir / 'auth.db').resolve()}"
        return auth_app(self.run_dir, database_uri, s.mlflow_admin_username, s.mlflow_admin_password or "",
                        s.auth_cache_seconds, key_file.read_text().strip())

    # --- services ---------------------------------------------------------------------
    def start_tracking(self) -> None:
        if self.running_pid("mlflow"):
            return
        s = self.settings
        app, app_env = self.auth_app()
        process = self.spawn("mlflow", [
            str(VENV_BIN / "mlflow"), "server", *tracking_stores(s), *app,
            "--host", s.host, "--port", str(s.mlflow_port), "--workers", "1",
        ], s.mlflow_port, env={**TRACKING_SERVER_ENV, **app_env})
        wait_until(http_ok(f"{self.tracking_uri}/health"), 120, "mlflow server", process, self.log_file("mlflow"))

    def start_model_server(self, wait_for_model: bool = True) -> None:
        if self.running_pid("model-server"):
            return
        s = self.settings
        process = self.spawn("model-server", [str(VENV_BIN / "python"), "-m", "model_server"],
                             s.model_server_port)
        url = f"http://{s.host}:{s.model_server_port}"
        check = http_ok(f"{url}/ping") if wait_for_model else http_ok(f"{url}/status")
        wait_until(check, s.model_server_start_timeout + 30, "model server", process,
                   self.log_file("model-server"))

    def start_gateway(self) -> None:
        if self.running_pid("gateway"):
            return
        s = self.settings
        process = self.spawn("gateway", [str(VENV_BIN / "python"), "-m", "gateway"], s.gateway_port)
        wait_until(http_ok(f"{s.gateway_url}/health"), 60, "gateway", process, self.log_file("gateway"))

    def registry(self) -> Registry:
        os.environ.update(self.service_credentials())  # this process's MLflow client acts as the stack too
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return Registry(client, self.settings.serve_alias)

    def ensure_promoted_model(self) -> str:
        """Train the default model if none is registered, and serve the newest if none is served."""
        s = self.settings
        registry = self.registry()
        with contextlib.suppress(NotFound):  # no such model yet: trained below
            version = registry.served_version(s.model_name, s.serve_follows, s.serve_alias, s.serve_stage)
            if version:
                return version
        versions = registry.client.search_model_versions(f"name = '{s.model_name}'")
        if not versions:
            print(f"training {s.model_name} on the default data set (log: {self.log_file('bootstrap-train')})",
                  flush=True)
            with open(self.log_file("bootstrap-train"), "ab") as out:
                done = subprocess.run(
                    [str(VENV_BIN / "mlflow"), "run", str(PROJECT_DIR), "--env-manager", "local",
                     "--experiment-name", s.experiment_name, "-P", f"model_name={s.model_name}"],
                    cwd=PROJECT_DIR, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                )
            if done.returncode != 0:
                raise StackError(f"training the default model failed; see {self.log_file('bootstrap-train')}")
            versions = registry.client.search_model_versions(f"name = '{s.model_name}'")
        newest = max(versions, key=lambda v: int(v.version)).version
        if s.serve_follows == "stage" and s.serve_stage == "Staging":
            registry.transition(s.model_name, newest, "Staging")
        else:
            registry.serve(s.model_name, newest)  # the serving alias and Production, as the policy keeps them
        print(f"promoted {s.model_name} version {newest}", flush=True)
        return newest

    def up(self) -> None:
        self._check_exposure()
        self._check_running_settings()
        self.start_tracking()
        self.ensure_promoted_model()
        self.start_model_server()
        self.start_gateway()
        self._save_settings()

    def up_without_model(self) -> None:
        """The three services with nothing trained or promoted (the model server waits for a version)."""
        self._check_exposure()
        self._check_running_settings()
        self.start_tracking()
        self.start_model_server(wait_for_model=False)
        self.start_gateway()
        self._save_settings()

    def _check_exposure(self) -> None:
        """The gateway's own start-up rule, checked before anything starts, so the reason is printed here."""
        problems = refusals(self.settings)
        if problems:
            raise StackError("the gateway would refuse to start: " + "; ".join(problems))

    def _check_running_settings(self) -> None:
        """``up`` on a running stack with other settings would silently change nothing: refuse, naming them."""
        saved = self.run_dir / SETTINGS_FILE
        if not saved.is_file() or not any(self.running_pid(service) for service in SERVICES):
            return
        changed = changed_settings(json.loads(saved.read_text(encoding="utf-8")), comparable_settings(self.settings))
        if changed:
            raise StackError(f"the stack in {self.settings.stack_dir} is already running with other settings: "
                             f"{'; '.join(changed)}. Run `make down`, then `make up` again to apply them")

    def _save_settings(self) -> None:
        (self.run_dir / SETTINGS_FILE).write_text(json.dumps(comparable_settings(self.settings), indent=1),
                                                  encoding="utf-8")

    def down(self) -> list[str]:
        stopped = [service for service in SERVICES if self.stop(service)]
        (self.run_dir / SETTINGS_FILE).unlink(missing_ok=True)
        return stopped

    def describe(self) -> str:
        s = self.settings
        return "\n".join([
            f"gateway        {s.gateway_url}  (API docs: {s.gateway_url}/docs)",
            f"mlflow         {self.tracking_uri}",
            f"model server   http://{s.host}:{s.model_server_port}  (status: /status)",
            f"stack dir      {s.stack_dir}",
            f"stop with      make down   (STACK_DIR={s.stack_dir})",
        ])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    stack = LocalStack(settings_or_exit("stack"))
    try:
        if command == "up":
            stack.up()
            print(stack.describe())
        elif command == "down":
            stopped = stack.down()
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        elif command == "status":
            for service in reversed(SERVICES):
                pid = stack.running_pid(service)
                print(f"{service:13s} {'running, pid ' + str(pid) if pid else 'stopped'}")
        else:
            print(f"error: unknown command {command!r}: use up, down or status", file=sys.stderr)
            return 2
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


