"""Real services on 127.0.0.1 for the gateway tests: tracking server, model server, gateway."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from contract.settings import Settings
from stack.local import LocalStack
from tests.conftest import census_rows, listen_port

TOKEN = "test-token"


def stack_settings(root: Path, data_root: Path, **overrides: object) -> Settings:
    values = dict(
        stack_dir=root / "stack", host="127.0.0.1", gateway_port=listen_port(),
        mlflow_port=listen_port(), model_server_port=listen_port(),
        model_name="gw-test", data_roots=[data_root], experiment_name="gateway-tests",
        registry_poll_seconds=0.5, drain_seconds=2.0, api_token=TOKEN,
        mlflow_tracking_uri=None, model_server_url=None,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    census_rows(1500).to_csv(root / "census-small.csv", index=False)
    return root


@contextlib.contextmanager
def running_stack(root: Path, data_root: Path, **overrides: object) -> Iterator[LocalStack]:
    """Tracking server, model server and gateway as real processes, nothing promoted; stopped after."""
    local = LocalStack(stack_settings(root, data_root, **overrides))
    try:
        local.up_without_model()
        yield local
    finally:
        local.down()


SERVER_MODES = ["fast", "mlflow"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``any_server_mode`` runs against the first mode of the ``stack`` fixture only."""
    other_modes = [item for item in items if item.get_closest_marker("any_server_mode")
                   and getattr(item, "callspec", None) and item.callspec.params.get("stack") in SERVER_MODES[1:]]
    if other_modes:
        config.hook.pytest_deselected(items=other_modes)
        items[:] = [item for item in items if item not in other_modes]


@pytest.fixture(scope="module", params=SERVER_MODES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          data_root: Path) -> Iterator[LocalStack]:
    """The stack in each MODEL_SERVER_MODE."""
    with running_stack(tmp_path_factory.mktemp("stack"), data_root, model_server_mode=request.param) as local:
        yield local


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.settings.gateway_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def postgres_bin() -> Path:
    """The folder with initdb/postgres: Debian keeps them out of PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail("PostgreSQL server binaries not found: install the 'postgresql' package (.ci/run does)")
    return Path(initdb).parent


class PostgresServer:
    """A real PostgreSQL server on 127.0.0.1 in a temporary data directory, for one test module.

    PostgreSQL refuses to run as root, so as root it runs as the 'postgres' user.
    ``durable=False`` turns fsync off (faster; for tests that never kill it).
    """

    def __init__(self, durable: bool):
        self.bindir = postgres_bin()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="pg-test-"))
        self.data = self.root / "data"
        # every character a URI reserves: the compose file's way (credentials beside the URI) must take it
        self.password = "p@ss:w/rd%#?&="
        self.port = listen_port()
        self.durable = durable
        password_file = self.root / "password"
        password_file.write_text(self.password)
        if self.as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(password_file, "postgres")
        subprocess.run([*self.as_user, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "mlflow", "-E",
                        "UTF8", "--auth=scram-sha-256", f"--pwfile={password_file}"], check=True, capture_output=True)
        self.process: subprocess.Popen | None = None

    def uri(self, database: str = "mlflow") -> str:
        return f"postgresql://mlflow:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def bare_uri(self, database: str) -> str:
        """As docker-compose.yaml writes it: no credentials, libpq reads them from :meth:`credentials`."""
        return f"postgresql://127.0.0.1:{self.port}/{database}"

    def credentials(self) -> dict[str, str]:
        return {"PGUSER": "mlflow", "PGPASSWORD": self.password}

    def start(self) -> None:
        options = [] if self.durable else ["-c", "fsync=off"]
        self.process = subprocess.Popen(
            [*self.as_user, str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.root), *options],
            stdout=subprocess.DEVNULL, stderr=(self.root / "server.log").open("ab"), start_new_session=True)
        deadline = time.monotonic() + 60
        while subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def create_database(self, name: str) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", name],
                       check=True, env=env, capture_output=True)

    def kill(self) -> None:
        """``kill -9`` of the server and every backend (a crash, or the OOM killer)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """A clean, fast shutdown (clients disconnected), as an operator's restart does. Not SIGTERM: that is
        PostgreSQL's "smart" shutdown, which waits for the clients to leave, and ``runuser`` kills the server
        2 s later, leaving a lock file that can stop the next start."""
        if self.process is not None and self.process.poll() is None:
            subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                            "-w", "-t", "30"], check=True, capture_output=True)
            self.process.wait(timeout=30)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        if self.process is not None and self.process.poll() is None:
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A durable server (fsync on) with the databases the stack uses: mlflow and inference."""
    server = PostgresServer(durable=True)
    try:
        server.start()
        server.create_database("mlflow")
        server.create_database("inference")
        yield server
    finally:
        server.remove()
