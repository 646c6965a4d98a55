"""The real ``mlflow run . --env-manager local`` into a temporary SQLite store, then the registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from tests.conftest import Tracking, census_rows
from tests.integration.helpers import assert_succeeded, mlflow_run, run_step

pytestmark = pytest.mark.integration

def runs_by_name(tracking: Tracking) -> dict[str, mlflow.entities.Run]:
    runs = mlflow.MlflowClient().search_runs([tracking.experiment_id])
    return {run.info.run_name: run for run in runs}


def test_census_slice_trains_logs_and_registers_a_raw_input_model(tracking, tmp_path):
    data = census_rows(3000)
    data.loc[::50, "age"] = ""  # blanks besides the file's own "?" markers
    csv = tmp_path / "census.csv.gz"
    data.to_csv(csv, index=False)

    result = mlflow_run(tracking, f"data_path={csv}", "target=income",
                        "model_name=census-it", "n_estimators=30")
    assert_succeeded(result)

    # the driver's last words, printed just before it ends without the interpreter's teardown
    assert "main: census-it version 1 registered by run" in result.stdout
    assert "serve it   MLFLOW_TRACKING_URI=" in result.stdout

    runs = runs_by_name(tracking)
    driver, prepared, trained = runs["main"], runs["preprocess"], runs["train"]
    source = {k: v for k, v in driver.data.tags.items() if k.startswith("mlflow.source.")}
    assert source["mlflow.source.type"] == "PROJECT"
    for child, entry_point in ((prepared, "preprocess"), (trained, "train")):
        # the runs `mlflow run -e <entry point>` makes, though they ran in the driver's process
        assert child.data.tags["mlflow.parentRunId"] == driver.info.run_id
        assert child.data.tags["mlflow.project.entryPoint"] == entry_point
        assert {k: v for k, v in child.data.tags.items() if k.startswith("mlflow.source.")} == source
        assert child.info.status == "FINISHED"
    assert trained.data.params["splits_uri"] == f"{prepared.info.artifact_uri}/splits"

    # metrics on the held-out split, copied onto the driver run
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "training_time_seconds"):
        assert name in trained.data.metrics
        assert driver.data.metrics[name] == trained.data.metrics[name]
    assert 0.8 < trained.data.metrics["accuracy"] <= 1.0
    assert trained.data.metrics["roc_auc"] > 0.8
    assert trained.data.params["positive_class_used"] == "50000+."  # the rarer class
    kinds = mlflow.artifacts.load_dict(f"runs:/{trained.info.run_id}/feature_columns.json")
    assert "age" in kinds["numeric_columns"] and "education" in kinds["categorical_columns"]
    assert "instance_weight" not in kinds["numeric_columns"]  # dropped by default
    assert trained.data.params["n_numeric_columns"] == str(len(kinds["numeric_columns"]))

    # the splits as artifacts and as datasets, the profile, the report figures
    client = mlflow.MlflowClient()
    split_files = {Path(a.path).name for a in client.list_artifacts(prepared.info.run_id, "splits")}
    assert {"train.parquet", "test.parquet"} <= split_files
    contexts = {d.tags[0].value for d in prepared.inputs.dataset_inputs}
    assert contexts == {"training", "testing"}
    assert prepared.data.metrics["rows"] == 3000
    reports = {a.path for a in client.list_artifacts(trained.info.run_id)}
    assert {"confusion_matrix.png", "roc_curve.png", "feature_importance.csv", "feature_importance.png",
            "threshold.png"} <= reports
    # the decision threshold: chosen on the training split, a metric, a version tag, applied by the model
    threshold = trained.data.metrics["decision_threshold"]
    assert 0 < threshold < 0.5 and "f1_at_0.5" in trained.data.metrics
    assert mlflow.MlflowClient().get_model_version("census-it", "1").tags["decision_threshold"] == f"{threshold:g}"
    # the data profile of the training split, as JSON and as a page the MLflow UI shows
    profiled = mlflow.artifacts.load_dict(f"runs:/{prepared.info.run_id}/data_profile.json")
    assert {c["column"] for c in profiled["columns"]} <= set(data.columns) and profiled["target"] == "income"
    page = mlflow.artifacts.load_text(f"runs:/{prepared.info.run_id}/data_profile.html")
    assert "education" in page and "<svg" in page
    importance = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=trained.info.run_id, artifact_path="feature_importance.csv")
    )
    assert set(importance["column"]) <= set(data.columns)  # input columns, not one-hot ones
    assert importance["importance"].is_monotonic_decreasing

    # the registered version serves raw rows as they appear in the CSV
    assert driver.data.tags["model_version"] == "1"
    version = client.get_model_version("census-it", "1")
    assert version.run_id == trained.info.run_id
    model = mlflow.pyfunc.load_model("models:/census-it/1")
    raw = census_rows(3100).tail(100).drop(columns=["income"])
    raw.loc[raw.index[0], "education"] = "Doctorate from the Moon"
    raw.loc[raw.index[1], "capital_gains"] = " 5000 "
    raw.loc[raw.index[2], "class_of_worker"] = "?"
    out = model.predict(raw)
    assert len(out) == 100
    assert set(out["label"]) <= {"- 50000.", "50000+."}
    np.testing.assert_allclose(out["proba_- 50000."] + out["proba_50000+."], 1.0)


def test_multiclass_numeric_labels_register_and_predict_their_own_labels(tracking, tmp_path):
    wine = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    wine = wine.astype(object)
    wine.loc[::9, "alcohol"] = "?"
    wine.loc[4::10, "magnesium"] = ""
    csv = tmp_path / "wine.csv"
    wine.to_csv(csv, index=False)

    result = mlflow_run(tracking, f"data_path={csv}", "target=cultivar", "drop_columns=",
                        "model_name=wine", "n_estimators=40", "test_size=0.3")
    assert_succeeded(result)

    trained = runs_by_name(tracking)["train"]
    assert trained.data.params["metric_average"] == "macro"
    assert trained.data.metrics["accuracy"] > 0.85
    assert trained.data.metrics["roc_auc"] > 0.9
    model = mlflow.pyfunc.load_model("models:/wine/1")
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False).drop(columns=["cultivar"]).head(20)
    out = model.predict(raw)
    assert list(out.columns) == ["label", "probability", "proba_0", "proba_1", "proba_2"]
    assert {type(v) for v in out["label"].tolist()} == {int}
    assert set(out["label"]) <= {0, 1, 2}


def one_class_csv(tmp_path: Path) -> str:
    path = tmp_path / "one_class.csv"
    pd.DataFrame({"x": range(20), "y": ["same"] * 20}).to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (["n_estimators=abc"], "n_estimators='abc': expected a whole number"),
        (["test_size=1.5"], "test_size='1.5': expected a number strictly between 0 and 1"),
        (["data_path=no/such/file.csv"], "data_path='no/such/file.csv': no such file or directory"),
        (["target=wrong_column"], "target='wrong_column': no such column"),
        ([lambda tmp: f"data_path={one_class_csv(tmp)}", "target=y"], "has one class only ('same')"),
    ],
    ids=["not-an-int", "out-of-range", "missing-file", "missing-target", "one-class"],
)
def test_bad_parameters_and_data_fail_with_one_line_naming_the_problem(tracking, tmp_path, params, expected):
    resolved = [p(tmp_path) if callable(p) else p for p in params]
    result = mlflow_run(tracking, *resolved, "model_name=never-registered")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error_lines, result.stderr[-2000:]
    assert expected in error_lines[-1]
    assert mlflow.MlflowClient().search_registered_models() == []
    runs = runs_by_name(tracking)
    assert runs["main"].data.tags["error"].endswith(error_lines[-1].split(": ", 2)[-1])
    assert runs["main"].info.status == "FAILED"
    if "preprocess" in runs:  # the data's fault: the step that found it failed too, with its reason
        assert runs["preprocess"].info.status == "FAILED"
        assert expected in runs["preprocess"].data.tags["error"]
        assert error_lines[-1] == f"error: preprocess failed: {runs['preprocess'].data.tags['error']}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\xfa" * 50, "not UTF-8 text"),
        (b"a,b\n", "has a header but no rows"),
    ],
    ids=["empty", "binary-garbage", "header-only"],
)
def test_unreadable_data_fails_the_preprocess_step_with_one_line(tracking, tmp_path, content, expected):
    path = tmp_path / "broken.csv"
    path.write_bytes(content)
    result = run_step(tracking, "steps.preprocess", "--data_path", str(path), "--target", "b")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: data_path: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
