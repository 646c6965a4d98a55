"""`make up` on a running stack compares its settings with those the stack was started with."""

from __future__ import annotations

from pathlib import Path

from contract.settings import Settings
from stack.local import changed_settings, comparable_settings


def settings(**values: object) -> Settings:
    return Settings(stack_dir=Path("/tmp/stack"), **values)


def test_a_changed_setting_is_named_with_both_values_and_a_secret_without_them():
    running = comparable_settings(settings(model_name="census", api_token="old-secret"))
    asked = comparable_settings(settings(model_name="churn", api_token="new-secret"))
    assert changed_settings(running, asked) == ["GATEWAY_API_TOKEN", "MODEL_NAME (running: census, asked: churn)"]
    assert "old-secret" not in str(running) and "new-secret" not in str(asked)


def test_the_same_settings_change_nothing_and_a_setting_only_on_one_side_counts():
    same = comparable_settings(settings(api_token="t"))
    assert changed_settings(same, comparable_settings(settings(api_token="t"))) == []
    assert changed_settings(same, comparable_settings(settings())) == ["GATEWAY_API_TOKEN"]


def test_the_default_store_is_the_sqlite_file_make_run_writes_with_plain_file_artifacts(tmp_path):
    from stack.local import tracking_stores

    local = tracking_stores(Settings(stack_dir=tmp_path))
    assert local == ["--backend-store-uri", f"sqlite:///{tmp_path.resolve()}/mlflow.db",
                     "--default-artifact-root", f"{tmp_path.resolve()}/artifacts"]
    makefile = (Path(__file__).parents[3] / "Makefile").read_text()
    assert "MLFLOW_TRACKING_URI ?= sqlite:///$(abspath $(STACK_DIR))/mlflow.db" in makefile  # the same file
    compose_like = tracking_stores(Settings(stack_dir=tmp_path, backend_store_uri="postgresql://db/mlflow"))
    assert compose_like[:3] == ["--backend-store-uri", "postgresql://db/mlflow", "--serve-artifacts"]


def test_make_run_trains_into_the_experiment_the_gateway_and_make_up_use_unless_the_shell_chose_one():
    import os
    import subprocess

    root = Path(__file__).parents[3]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_EXPERIMENT_")}

    def run_command(**extra: str) -> str:
        printed = subprocess.run(["make", "-n", "run"], cwd=root, env={**env, **extra}, capture_output=True,
                                 text=True, check=True).stdout
        return next(line for line in printed.splitlines() if line.startswith("mlflow run"))

    assert run_command().split()[-2:] == ["--experiment-name", Settings().experiment_name]
    assert "--experiment-name" not in run_command(MLFLOW_EXPERIMENT_NAME="mine")
    assert "--experiment-name" not in run_command(MLFLOW_EXPERIMENT_ID="3")
