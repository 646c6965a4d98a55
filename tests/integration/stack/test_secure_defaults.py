"""Secure by default, on real processes: the gateway as compose starts it, and ``make up``'s CLI.

The compose case runs ``python -m gateway`` with the environment docker compose would give the
gateway container, rendered from ``docker-compose.yaml`` and an unchanged ``.env.example`` (no
Docker engine here can pull images).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from runtime.processes import free_port
from tests.conftest import PROJECT_DIR
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

    environment = yaml.safe_load((PROJECT_DIR / "docker-compose.yaml").read_text())["services"][service]["environment"]
    return {k: INTERPOLATION.sub(value, str(v)) for k, v in environment.items()}


def start_gateway(tmp_path: Path, dotenv: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PG", "MLFLOW_"))}
    env.update(compose_environment("gateway", dotenv))
    # Its image binds every interface (STACK_HOST=0.0.0.0); here 127.0.0.1, as GATEWAY_PUBLISHED_HOST decides.
    # The other services' names point nowhere here; run outside the project, so no developer's .env is read.
    env.update(STACK_HOST="127.0.0.1", GATEWAY_PORT=str(port), STACK_DIR=str(tmp_path), GATEWAY_DATA_ROOTS=str(tmp_path),
               MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}", MODEL_SERVER_URL=f"http://127.0.0.1:{free_port()}",
               INFERENCE_LOG_URI="off", GATEWAY_BOOTSTRAP_MODEL="false", PYTHONPATH=str(PROJECT_DIR))
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
