"""MLflow's basic-auth app for the stack's tracking server (``GATEWAY_AUTH=mlflow``), set up one way everywhere.

The local stack (:mod:`stack.local`) calls :func:`auth_app` with its SQLite user database under
STACK_DIR; the tracking server's image (compose, Kubernetes) runs this module as its launcher::

    python -m stack.tracking_auth mlflow server --host=0.0.0.0 ...

which, when ``GATEWAY_AUTH=mlflow``, refuses an unset or placeholder admin password before MLflow
creates the admin (it never updates the admin's password afterwards), writes the app's
configuration and starts ``mlflow server --app-name basic-auth``; in any other mode it starts the
command unchanged. The users live in ``MLFLOW_AUTH_DATABASE_URI``, by default the tracking
server's own database (``MLFLOW_BACKEND_STORE_URI``): on the stack's PostgreSQL, beside the
tracking tables, which MLflow keeps apart (the auth app versions its schema in a table of its
own, ``alembic_version_auth``).

Standard library and :mod:`contract.exposure` only: the tracking server's image has MLflow and
nothing else of the project.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from pathlib import Path

from contract.exposure import admin_password_refusal, is_placeholder

AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
DEFAULT_CACHE_SECONDS = 5.0  # the gateway's GATEWAY_AUTH_CACHE_SECONDS default (contract/settings.py)


def auth_config(database_uri: str, admin_username: str, cache_seconds: float) -> str:
    """The app's ini: nobody may do anything they were not granted (the admin and each model's creator
    excepted), users in ``database_uri``."""
    return ("[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            # configparser interpolates %: a percent-encoded character of a URI must stay as it is
            f"database_uri = {database_uri.replace('%', '%%')}\n"
            f"admin_username = {admin_username}\n"
            # checked passwords trusted as long as the gateway trusts a checked caller: without it every
            # REST call of a training run pays a PBKDF2 hash
            f"auth_cache_ttl_seconds = {max(1, round(cache_seconds))}\n"
            f"authorization_function = {AUTHORIZATION_FUNCTION}\n")


def auth_app(config_dir: Path, database_uri: str, admin_username: str, admin_password: str,
             cache_seconds: float, secret_key: str) -> tuple[list[str], dict[str, str]]:
    """``mlflow server`` options and environment for the app; its ini written (owner-only) in ``config_dir``."""
    config_dir.mkdir(parents=True, exist_ok=True)
    config = config_dir / "basic_auth.ini"
    config.touch(mode=0o600)
    config.write_text(auth_config(database_uri, admin_username, cache_seconds))
    return (["--app-name", "basic-auth"],
            {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": admin_username,
             "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key})


def launch(command: list[str], environ: dict[str, str]) -> tuple[list[str], dict[str, str]] | str:
    """The command and environment the tracking server's container runs, or why it must not start."""
    if environ.get("GATEWAY_AUTH", "").strip().lower() != "mlflow":
        return command, environ
    username = environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    password = environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or ""
    if problem := admin_password_refusal(username, password):
        return problem
    database_uri = environ.get("MLFLOW_AUTH_DATABASE_URI") or environ.get("MLFLOW_BACKEND_STORE_URI") or ""
    if not database_uri:
        return "GATEWAY_AUTH=mlflow needs MLFLOW_AUTH_DATABASE_URI or MLFLOW_BACKEND_STORE_URI: where MLflow keeps its users"
    try:
        cache_seconds = float(environ.get("GATEWAY_AUTH_CACHE_SECONDS") or DEFAULT_CACHE_SECONDS)
    except ValueError:
        return f"GATEWAY_AUTH_CACHE_SECONDS must be a number of seconds, not {environ['GATEWAY_AUTH_CACHE_SECONDS']!r}"
    # One tracking server signs its own forms: a key made at start only logs out browsers on a restart.
    # Several replicas must share one (MLFLOW_FLASK_SERVER_SECRET_KEY).
    secret_key = environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)
    if is_placeholder(secret_key):
        return "MLFLOW_FLASK_SERVER_SECRET_KEY is a placeholder: set one of your own (`openssl rand -hex 32`) or leave it unset"
    options, env = auth_app(Path(tempfile.mkdtemp(prefix="mlflow-auth-")), database_uri, username, password,
                            cache_seconds, secret_key)
    return [*command, *options], {**environ, **env}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m stack.tracking_auth mlflow server [options]", file=sys.stderr)
        return 2
    launched = launch(argv, dict(os.environ))
    if isinstance(launched, str):
        print(f"mlflow: refusing to start: {launched}", file=sys.stderr)
        return 2
    command, env = launched
    os.execvpe(command[0], command, env)  # the server is the container's process, signals reach it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
