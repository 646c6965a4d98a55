"""docker-compose.yaml and the Dockerfiles, checked without a Docker engine.

The schema check and the linter are the real tools (check-jsonschema with the
Compose Specification, hadolint); the rest pins down the topology the
PostgreSQL integration test runs as plain processes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from contract.settings import Settings
from stack.local import TRACKING_SERVER_ENV
from tests.conftest import PROJECT_DIR

BIN = Path(sys.executable).parent
DOCKERFILES = [PROJECT_DIR / "deploy" / "docker" / "app.Dockerfile", PROJECT_DIR / "deploy" / "docker" / "mlflow.Dockerfile"]
COMPOSE_FILE = PROJECT_DIR / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_file_follows_the_compose_specification():
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_pass_hadolint_with_no_ignored_rule():
    result = subprocess.run([str(BIN / "hadolint"), *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for dockerfile in DOCKERFILES:
        assert "hadolint ignore" not in dockerfile.read_text()


def test_only_the_gateway_the_mlflow_ui_and_grafana_are_published(compose):
    published = {name: s.get("ports", []) for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"gateway", "mlflow", "grafana"}
    assert all(p.startswith("127.0.0.1:") for p in published["mlflow"])  # the UI only on the host's loopback
    assert all(p.startswith("${GRAFANA_BIND:-127.0.0.1}:") for p in published["grafana"])
    grafana = compose["services"]["grafana"]["environment"]  # read-only, whoever reaches it
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert grafana["GF_AUTH_DISABLE_LOGIN_FORM"] == "true" and grafana["GF_AUTH_BASIC_ENABLED"] == "false"
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("postgres", "model-server"):
        assert compose["services"][name]["networks"] == ["backend"]


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "model-server", "gateway", "prometheus", "grafana"}
    # the observability services only when asked for: `docker compose up` starts the stack alone
    assert {name for name, s in services.items() if s.get("profiles")} == {"prometheus", "grafana"}
    assert all(services[name]["profiles"] == ["observability"] for name in ("prometheus", "grafana"))
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        for condition in service.get("depends_on", {}).values():
            assert condition == {"condition": "service_healthy"}, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert set(services["mlflow"]["depends_on"]) == {"postgres"}
    assert set(services["gateway"]["depends_on"]) == {"postgres", "mlflow", "model-server"}  # + the inference log


def test_mlflow_uses_postgres_proxied_artifacts_on_a_volume_and_allowed_hosts(compose):
    mlflow = compose["services"]["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    # as the local stack runs it (stack/local.py): no job-runner workers, no telemetry
    assert {k: mlflow["environment"][k] for k in TRACKING_SERVER_ENV} == TRACKING_SERVER_ENV
    assert mlflow["environment"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
    command = " ".join(mlflow["command"])
    assert "--serve-artifacts" in command and "--artifacts-destination=/mlartifacts" in command
    assert re.search(r"--allowed-hosts=\S*\bmlflow\b", command)
    assert "mlflow-artifacts:/mlartifacts" in mlflow["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    assert set(compose["volumes"]) >= {"postgres-data", "mlflow-artifacts", "gateway-state"}


def test_no_secret_is_written_into_the_compose_file_and_env_example_names_each_one(compose):
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
    example = dict(line.split("=", 1) for line in (PROJECT_DIR / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert required <= set(example)
    secret_values = re.findall(r"^\s*[\w-]*(?:PASSWORD|TOKEN)[\w-]*:\s*(.+)$", text, flags=re.MULTILINE)
    assert secret_values and all(v.startswith("${") for v in secret_values)  # only interpolated
    # no credential inside a URI (a password with `@`, `/` or `%` would break it): libpq reads PGUSER/PGPASSWORD
    uris = re.findall(r"postgresql://\S+", text)
    assert uris and not [uri for uri in uris if "@" in uri or "POSTGRES_PASSWORD" in uri or "POSTGRES_USER" in uri]
    for name in ("mlflow", "gateway"):  # the two services that connect to PostgreSQL
        environment = compose["services"][name]["environment"]
        assert environment["PGUSER"] == "${POSTGRES_USER}" and environment["PGPASSWORD"] == "${POSTGRES_PASSWORD}"
    for dockerfile in DOCKERFILES:
        assert "PASSWORD" not in dockerfile.read_text()


# not settings of ours: read by libpq (the PostgreSQL credentials) and by MLflow itself
READ_BY_LIBRARIES = {"PGUSER", "PGPASSWORD", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_TRACKING_USERNAME",
                     "MLFLOW_TRACKING_PASSWORD"}


def test_the_first_start_trains_and_promotes_the_default_model_as_make_up_does(compose):
    assert compose["services"]["gateway"]["environment"]["GATEWAY_BOOTSTRAP_MODEL"] == "true"
    assert Settings(GATEWAY_BOOTSTRAP_MODEL="true").bootstrap_model  # a setting the gateway reads


def test_app_containers_use_real_settings_names(compose):
    aliases = {f.validation_alias for f in Settings.model_fields.values()}
    for name in ("model-server", "gateway"):
        environment = compose["services"][name]["environment"]
        unknown = set(environment) - aliases - READ_BY_LIBRARIES
        assert not unknown, f"{name}: {unknown} are not settings"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_slim_non_root_and_pinned_by_requirements(dockerfile):
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert stages and all(s.startswith("python:3.11-slim") for s in stages)
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER [1-9]\d*:[1-9]\d*$", final_stage, flags=re.MULTILINE)
    assert "requirements.txt" in text
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final_stage)


def test_dockerignore_lets_through_everything_the_images_copy():
    allowed = {line[1:].rstrip("/") for line in (PROJECT_DIR / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for dockerfile in DOCKERFILES:
        for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), flags=re.MULTILINE):
            for source in sources.split():
                path = source.rstrip("/")
                assert any(path == a or path.startswith(f"{a}/") for a in allowed), f"{dockerfile.name} copies {source}"
                assert (PROJECT_DIR / source).exists()


def test_the_app_image_is_built_once_for_the_model_server_and_the_gateway(compose):
    services = compose["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert sorted(builders) == ["mlflow", "model-server"]
    app_image = services["model-server"]["image"]
    assert services["gateway"]["image"] == app_image and services["gateway"]["pull_policy"] == "never"
    assert "model-server" in services["gateway"]["depends_on"]  # so it is built first


def test_the_tracking_server_starts_through_the_auth_launcher_with_the_gateways_auth_settings(compose):
    """GATEWAY_AUTH=mlflow switches on MLflow's auth app (stack/tracking_auth.py) with the same values the
    app containers get, and the app containers act toward it as its admin."""
    services = compose["services"]
    mlflow = services["mlflow"]
    assert mlflow["command"][:5] == ["python", "-m", "stack.tracking_auth", "mlflow", "server"]
    app = services["gateway"]["environment"]
    for name in ("GATEWAY_AUTH", "GATEWAY_AUTH_CACHE_SECONDS", "MLFLOW_AUTH_ADMIN_USERNAME",
                 "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert mlflow["environment"][name] == app[name] == services["model-server"]["environment"][name], name
    assert mlflow["environment"]["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${")
    assert app["MLFLOW_TRACKING_USERNAME"] == app["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert app["MLFLOW_TRACKING_PASSWORD"] == app["MLFLOW_AUTH_ADMIN_PASSWORD"]
    example = dict(line.split("=", 1) for line in (PROJECT_DIR / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"} <= set(example)
    # the launcher's cache default is the gateway's
    from stack.tracking_auth import DEFAULT_CACHE_SECONDS
    assert DEFAULT_CACHE_SECONDS == Settings.model_fields["auth_cache_seconds"].default
    assert app["GATEWAY_AUTH_CACHE_SECONDS"] == f"${{GATEWAY_AUTH_CACHE_SECONDS:-{DEFAULT_CACHE_SECONDS:g}}}"


def test_the_tracking_server_image_runs_the_launcher_with_nothing_else_of_the_project():
    text = (PROJECT_DIR / "deploy" / "docker" / "mlflow.Dockerfile").read_text()
    assert 'CMD ["python", "-m", "stack.tracking_auth", "mlflow", "server"' in text
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE)
    assert sorted(" ".join(copied).split()) == sorted(["contract/__init__.py", "contract/exposure.py",
                                                         "stack/__init__.py", "stack/tracking_auth.py",
                                                         "requirements.txt"])
    # those files need nothing beyond the standard library (the image has MLflow and no project dependency)
    done = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import stack.tracking_auth; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                           "('pydantic', 'pydantic_settings', 'mlflow', 'httpx', 'runtime', 'gateway')))",
                           str(PROJECT_DIR)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
