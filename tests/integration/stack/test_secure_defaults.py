"""Secure by default, on real processes: the gateway and the tracking server as compose starts them, and
``make up``'s CLI.

The compose cases run ``python -m gateway`` and the tracking server's command with the environment
docker compose would give their containers, rendered from ``docker-compose.yaml`` and ``.env.example``
(no Docker engine here can pull images); the tracking server's users go to a real PostgreSQL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import yaml

from runtime.processes import VENV_BIN
from tests.conftest import PROJECT_DIR, listen_port
from tests.integration.conftest import PostgresServer
from tests.integration.helpers import wait_for

INTERPOLATION = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def compose_environment(service: str, dotenv: dict[str, str]) -> dict[str, str]:
    """The service's environment as docker compose interpolates it from ``dotenv``."""
    def value(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        given = dotenv.get(name, "")
        if kind == "-":
            return given or default
        assert given or kind != "?", f"compose would refuse: {default}"
        return given

    environment = compose_service(service)["environment"]
    return {k: INTERPOLATION.sub(value, str(v)) for k, v in environment.items()}


def compose_service(service: str) -> dict:
    return yaml.safe_load((PROJECT_DIR / "docker-compose.yaml").read_text())["services"][service]


def start_gateway(tmp_path: Path, dotenv: dict[str, str], **overrides: str) -> tuple[subprocess.Popen, int]:
    port = listen_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PG", "MLFLOW_"))}
    env.update(compose_environment("gateway", dotenv))
    # Its image binds every interface (STACK_HOST=0.0.0.0); here 127.0.0.1, as GATEWAY_PUBLISHED_HOST decides.
    # The other services' names point nowhere here; run outside the project, so no developer's .env is read.
    env.update(STACK_HOST="127.0.0.1", GATEWAY_PORT=str(port), STACK_DIR=str(tmp_path), GATEWAY_DATA_ROOTS=str(tmp_path),
               MLFLOW_TRACKING_URI=f"http://127.0.0.1:{listen_port()}", MODEL_SERVER_URL=f"http://127.0.0.1:{listen_port()}",
               INFERENCE_LOG_URI="off", GATEWAY_BOOTSTRAP_MODEL="false", PYTHONPATH=str(PROJECT_DIR))
    env.update(overrides)
    process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return process, port


def test_compose_with_env_example_unchanged_refuses_the_gateway_naming_what_to_set_and_starts_once_set(tmp_path):
    example = env_file(PROJECT_DIR / ".env.example")
    refused, _ = start_gateway(tmp_path, example)
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("gateway: refusing to start: ") for line in lines), err
    assert "GATEWAY_API_TOKEN is the placeholder 'change-me'" in err and "PostgreSQL password" in err
    assert "Traceback" not in err

    published = {**example, "POSTGRES_PASSWORD": "p@ss:w/rd%#?&=", "GATEWAY_API_TOKEN": "9f2c" * 8,
                 "GATEWAY_BIND": "0.0.0.0"}
    started, port = start_gateway(tmp_path, published)
    try:
        wait_for(lambda: started.poll() is not None or _health(port), 60, "the gateway's /health")
        assert started.poll() is None, started.stderr.read() if started.stderr else ""
        # published on every interface, it asks for the token
        refused_write = httpx.post(f"http://127.0.0.1:{port}/train", json={"data_path": "x.csv", "target": "y"})
        assert refused_write.status_code == 401
    finally:
        started.terminate()
        started.wait(timeout=30)

    no_token = {**published, "GATEWAY_API_TOKEN": ""}
    refused, _ = start_gateway(tmp_path, no_token)
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "GATEWAY_AUTH=token needs GATEWAY_API_TOKEN" in err, err


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_tracking(tmp_path: Path, dotenv: dict[str, str], postgres: PostgresServer) -> tuple[subprocess.Popen, int]:
    """The tracking server's container command and environment, on 127.0.0.1 and the test's PostgreSQL (the image
    has the launcher on PYTHONPATH and MLflow on PATH)."""
    port = listen_port()
    service = compose_service("mlflow")
    moved = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}",
             "--artifacts-destination=/mlartifacts": f"--artifacts-destination={tmp_path / 'mlartifacts'}"}
    command = [sys.executable if part == "python" else moved.get(part, part) for part in service["command"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PG", "MLFLOW_"))}
    env.update(compose_environment("mlflow", dotenv))
    env.update(postgres.credentials(), MLFLOW_BACKEND_STORE_URI=postgres.bare_uri("mlflow"),
               PYTHONPATH=str(PROJECT_DIR), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    log = (tmp_path / "mlflow.log").open("w")
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    return process, port


def users_in(postgres: PostgresServer) -> list[str] | None:
    """The auth app's users in the tracking server's database, None when it has no such table."""
    with psycopg.connect(postgres.uri("mlflow")) as connection:
        if connection.execute("SELECT to_regclass('public.users')").fetchone()[0] is None:
            return None
        return [row[0] for row in connection.execute("SELECT username FROM users ORDER BY username")]


def test_compose_with_gateway_auth_mlflow_keeps_mlflow_users_in_postgres_and_the_gateway_asks_for_them(
        tmp_path, postgres):
    example = {**env_file(PROJECT_DIR / ".env.example"), "GATEWAY_AUTH": "mlflow"}
    refused, _ = start_tracking(tmp_path, example, postgres)
    assert refused.wait(timeout=60) == 2
    said = (tmp_path / "mlflow.log").read_text()
    assert said.startswith("mlflow: refusing to start: MLFLOW_AUTH_ADMIN_PASSWORD must be a password of your own")
    assert said.count("\n") == 1 and users_in(postgres) is None  # refused before MLflow created its admin

    admin = ("admin", "an-admin-password-of-our-own")
    dotenv = {**example, "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1], "POSTGRES_PASSWORD": "p@ss:w/rd%#?&="}
    tracking, tracking_port = start_tracking(tmp_path, dotenv, postgres)
    gateway = None
    try:
        base = f"http://127.0.0.1:{tracking_port}"
        wait_for(lambda: tracking.poll() is not None or _health(tracking_port), 120, "the tracking server's /health")
        assert tracking.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
        search = f"{base}/api/2.0/mlflow/registered-models/search"
        assert httpx.get(search).status_code == 401
        assert httpx.get(search, auth=admin).status_code == 200
        created = httpx.post(f"{base}/api/2.0/mlflow/users/create", auth=admin,
                             json={"username": "nobody", "password": "nobody-password-1234"})
        assert created.status_code == 200, created.text
        assert users_in(postgres) == ["admin", "nobody"]  # on the stack's PostgreSQL, beside the tracking tables

        gateway, port = start_gateway(tmp_path, dotenv, MLFLOW_TRACKING_URI=base)
        wait_for(lambda: gateway.poll() is not None or _health(port), 60, "the gateway's /health")
        assert gateway.poll() is None, gateway.stderr.read() if gateway.stderr else ""
        schema = f"http://127.0.0.1:{port}/models/churn/schema"
        anonymous = httpx.get(schema)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Basic")
        refused_read = httpx.get(schema, auth=("nobody", "nobody-password-1234"))
        assert refused_read.status_code == 403 and "needs READ" in refused_read.json()["detail"]
        assert httpx.get(schema, auth=admin).status_code == 404  # allowed; there is no such model
    finally:
        for process in (gateway, tracking):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


def test_make_up_beyond_loopback_without_authentication_refuses_before_starting_anything(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "MLFLOW_"))}
    env.update(STACK_HOST="0.0.0.0", STACK_DIR=str(tmp_path / "stack"))
    done = subprocess.run([sys.executable, "-m", "stack", "up"], cwd=PROJECT_DIR, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "STACK_HOST=0.0.0.0" in done.stderr and "GATEWAY_AUTH=token" in done.stderr
    assert not (tmp_path / "stack" / "run").exists() or not list((tmp_path / "stack" / "run").glob("*.pid"))

    wrong = subprocess.run([sys.executable, "-m", "stack", "up"], cwd=PROJECT_DIR, capture_output=True, text=True,
                           env={**env, "GATEWAY_PORT": "eighty"}, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.startswith("stack: GATEWAY_PORT: "), wrong.stderr
    assert "Traceback" not in wrong.stderr
