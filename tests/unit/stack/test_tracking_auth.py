"""The tracking server's launcher (stack/tracking_auth.py) as a rule; tests/integration/stack/test_secure_defaults.py
runs it for real, as compose starts it, on PostgreSQL."""

from __future__ import annotations

import configparser
import os
import stat

import pytest

from stack.tracking_auth import launch, main

COMMAND = ["mlflow", "server", "--host=0.0.0.0", "--port=5000"]
STRONG = "a-password-of-our-own-1234"
BACKEND = "postgresql://postgres:5432/mlflow"


def mlflow_mode(**extra: str) -> dict[str, str]:
    return {"GATEWAY_AUTH": "mlflow", "MLFLOW_AUTH_ADMIN_PASSWORD": STRONG, "MLFLOW_BACKEND_STORE_URI": BACKEND,
            **extra}


def ini(env: dict[str, str]) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()  # as MLflow reads it (mlflow/server/auth/config.py)
    assert parser.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    return parser["mlflow"]


@pytest.mark.parametrize("mode", ["", "none", "token"])
def test_without_mlflow_auth_the_command_runs_unchanged(mode):
    environ = {"GATEWAY_AUTH": mode, "MLFLOW_BACKEND_STORE_URI": BACKEND}
    assert launch(COMMAND, environ) == (COMMAND, environ)


def test_mlflow_auth_adds_the_app_with_its_users_in_the_tracking_database_and_nobody_allowed_by_default():
    command, env = launch(COMMAND, mlflow_mode())
    assert command == [*COMMAND, "--app-name", "basic-auth"]
    config = ini(env)
    assert config["database_uri"] == BACKEND
    assert config["default_permission"] == "NO_PERMISSIONS"
    assert config["admin_username"] == env["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == STRONG and STRONG not in open(env["MLFLOW_AUTH_CONFIG_PATH"]).read()
    assert config["auth_cache_ttl_seconds"] == "5"
    assert stat.S_IMODE(os.stat(env["MLFLOW_AUTH_CONFIG_PATH"]).st_mode) == 0o600
    assert len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64  # made at start when not given


def test_a_database_of_its_own_a_percent_encoded_password_and_the_given_settings_are_kept():
    uri = "postgresql://mlflow:p%40ss%2Fw@db:5432/mlflow_auth"
    _, env = launch(COMMAND, mlflow_mode(MLFLOW_AUTH_DATABASE_URI=uri, MLFLOW_AUTH_ADMIN_USERNAME="root",
                                         GATEWAY_AUTH_CACHE_SECONDS="30", MLFLOW_FLASK_SERVER_SECRET_KEY="k" * 40))
    config = ini(env)
    assert config["database_uri"] == uri  # configparser would have refused or mangled a bare %
    assert config["admin_username"] == "root" and config["auth_cache_ttl_seconds"] == "30"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "k" * 40


@pytest.mark.parametrize(("environ", "says"), [
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": ""}, "needs MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "change-me"}, "MLFLOW_AUTH_ADMIN_PASSWORD must be a password of your own"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, "MLFLOW_AUTH_ADMIN_PASSWORD must be a password of your own"),
    ({"MLFLOW_BACKEND_STORE_URI": ""}, "MLFLOW_AUTH_DATABASE_URI or MLFLOW_BACKEND_STORE_URI"),
    ({"GATEWAY_AUTH_CACHE_SECONDS": "soon"}, "GATEWAY_AUTH_CACHE_SECONDS must be a number"),
    ({"MLFLOW_FLASK_SERVER_SECRET_KEY": "change-me"}, "MLFLOW_FLASK_SERVER_SECRET_KEY is a placeholder"),
])
def test_what_would_be_unsafe_or_broken_is_refused_with_one_line_naming_the_setting(environ, says, monkeypatch, capsys):
    refused = launch(COMMAND, mlflow_mode(**environ))
    assert isinstance(refused, str) and says in refused
    monkeypatch.setattr(os, "environ", mlflow_mode(**environ))
    monkeypatch.setattr(os, "execvpe", lambda *a: pytest.fail("started despite the refusal"))
    assert main(COMMAND) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mlflow: refusing to start: ") and says in err
