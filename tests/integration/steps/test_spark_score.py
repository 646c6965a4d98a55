"""The ``score`` entry point: a real ``mlflow run -e score`` on a local Spark session."""

from __future__ import annotations

import gzip
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.conftest import ODD_NAMES, Tracking, census_rows, mixed_frame, temporary_tracking
from tests.integration.helpers import assert_succeeded, mlflow_run, run_step

pytestmark = pytest.mark.integration

MODEL = "spark-test"
BAD_ROWS = {17: ("age", "forty"), 400: ("wage_per_hour", "1e400"), 2999: ("capital_gains", "12 000")}


def dirty_input(n: int = 3000, seed: int = 7) -> pd.DataFrame:
    """Census rows as raw text, made dirty the ways real exports are, and a few rows no model can score."""
    rng = np.random.default_rng(seed)
    frame = census_rows(2000 + n).tail(n).reset_index(drop=True)
    frame.insert(0, "row_id", [str(i) for i in range(n)])
    cells = frame.columns.drop(["row_id", "income"])
    for marker in ("?", "", "  "):
        for _ in range(n // 10):
            frame.loc[int(rng.integers(n)), str(rng.choice(cells))] = marker
    frame.loc[rng.integers(n, size=n // 10), "age"] = frame["age"].map(lambda v: f" {v} ")
    frame.loc[rng.integers(n, size=n // 20), "education"] = "Unheard-of degree"
    for row, (column, value) in BAD_ROWS.items():
        frame.loc[row, column] = value
    return frame


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Tracking:
    root = tmp_path_factory.mktemp("spark")
    with temporary_tracking(root) as store:
        training = root / "train.csv"
        census_rows(2000).to_csv(training, index=False)
        assert_succeeded(mlflow_run(store, f"data_path={training}", f"model_name={MODEL}", "n_estimators=20"))
        mlflow.MlflowClient().set_registered_model_alias(MODEL, "champion", "1")
        yield store


@pytest.fixture(scope="module")
def raw(tracking: Tracking) -> pd.DataFrame:
    return dirty_input()


def score(tracking: Tracking, input_path: Path, output_path: Path, *params: str) -> pd.DataFrame:
    result = mlflow_run(tracking, f"model_uri=models:/{MODEL}@champion", f"input_path={input_path}",
                        f"output_path={output_path}", "spark_master=local[2]", *params, entry_point="score")
    assert_succeeded(result)
    return pd.read_parquet(output_path).sort_values("row_id", key=lambda s: s.astype(int)).reset_index(drop=True)


def expected_predictions(raw: pd.DataFrame) -> pd.DataFrame:
    """What the pyfunc answers in one process for the rows it can score."""
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    good = raw.drop(index=list(BAD_ROWS))
    return model.predict(good)


def assert_matches_pyfunc(scored: pd.DataFrame, raw: pd.DataFrame) -> None:
    assert len(scored) == len(raw)
    expected = expected_predictions(raw)
    got = scored.drop(index=list(BAD_ROWS))
    assert got["error"].isna().all()
    assert got["label"].tolist() == expected["label"].tolist()
    for column in [c for c in expected.columns if c != "label"]:
        np.testing.assert_array_equal(got[column].to_numpy(dtype=float), expected[column].to_numpy(dtype=float))
    for row, (column, value) in BAD_ROWS.items():
        assert repr(value) in scored.loc[row, "error"] and repr(column) in scored.loc[row, "error"]
        assert pd.isna(scored.loc[row, "label"]) and pd.isna(scored.loc[row, "probability"])


def test_csv_scoring_on_spark_matches_pyfunc_exactly_and_reports_bad_rows(tracking, raw, tmp_path):
    """Compressed, and with a header written ``row_id, age, class_of_worker, ...`` (a space after each comma):
    the columns are found by the rule training applied to its own header."""
    source = tmp_path / "input.csv.gz"
    header, rows = raw.to_csv(index=False).split("\n", 1)
    with gzip.open(source, "wt") as out:
        out.write(", ".join(header.split(",")) + "\n" + rows)
    assert gzip.open(source, "rt").readline().startswith("row_id, age, ")
    scored = score(tracking, source, tmp_path / "scores.parquet")
    assert_matches_pyfunc(scored, raw)
    # every input column comes back, with the caller's own values (Spark reads an empty cell as null)
    for column in raw.columns:
        assert scored[column].fillna("").tolist() == raw[column].tolist(), column
    run = mlflow.MlflowClient().search_runs([tracking.experiment_id], "tags.mlflow.project.entryPoint = 'score'")[0]
    assert run.data.metrics["rows"] == len(raw) and run.data.metrics["rows_with_error"] == len(BAD_ROWS)


def test_a_parquet_folder_scores_the_same_and_explain_adds_the_models_own_explanations(tracking, raw, tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    half = len(raw) // 2
    raw.iloc[:half].to_parquet(folder / "part-0.parquet", index=False)
    raw.iloc[half:].to_parquet(folder / "part-1.parquet", index=False)
    scored = score(tracking, folder, tmp_path / "out.parquet", "explain=true", "confidence=0.9")
    assert_matches_pyfunc(scored, raw)
    # explain=true: base_value and contrib_<column>, the numbers the pyfunc gives for the same rows; confidence:
    # the prediction sets it gives
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    expected = model.predict(raw.drop(index=list(BAD_ROWS)), params={"explain": True, "confidence": 0.9})
    got_sets = scored.drop(index=list(BAD_ROWS))["prediction_set"].map(list)
    assert got_sets.tolist() == expected["prediction_set"].tolist() and (scored.loc[
        list(BAD_ROWS), "prediction_set"].isna().all())
    contrib = [c for c in expected.columns if c.startswith("contrib_")]
    assert contrib == [f"contrib_{c}" for c in model.unwrap_python_model()._schema.columns]  # one an input column
    got = scored.drop(index=list(BAD_ROWS))
    for column in ["base_value", *contrib]:
        assert got[column].tolist() == expected[column].tolist(), column
    assert scored.loc[list(BAD_ROWS), "base_value"].isna().all()
    # a forest's explanations add up to its own probability of the predicted class, calibrated or not after
    calibrated = model.unwrap_python_model()._calibration.method != "none"
    assert set(got["explains"]) == {"uncalibrated_probability" if calibrated else "probability"}
    own = model.unwrap_python_model()._compiled.predict_proba(raw.drop(index=list(BAD_ROWS)))
    classes = list(model.unwrap_python_model()._compiled.classes)
    predicted = own[np.arange(len(own)), [classes.index(label) for label in got["label"]]]
    np.testing.assert_allclose(got["base_value"] + got[contrib].sum(axis=1), predicted, atol=1e-9)


@pytest.mark.parametrize(("args", "expected"), [
    (["--spark_master", "nonsense"], "spark_master='nonsense'"),
    (["--explain", "maybe"], "explain='maybe': expected true or false"),
    (["--input_path", "/no/such/file.csv"], "input_path='/no/such/file.csv': no such file"),
    (["--input_path", "MLproject"], "input_path='MLproject': expected .csv"),
    (["--model_uri", "models:/no-such-model/1"], "model_uri='models:/no-such-model/1': cannot load"),
])
def test_bad_parameters_fail_with_one_line_naming_them(tracking, args, expected):
    result = run_step(tracking, "steps.score", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_input_without_the_model_columns_fails_with_one_line_naming_them(tracking, tmp_path):
    source = tmp_path / "few.csv"
    pd.DataFrame({"age": ["40"], "sex": ["Male"]}).to_csv(source, index=False)
    result = run_step(tracking, "steps.score", "--model_uri", f"models:/{MODEL}@champion",
                      "--input_path", str(source), "--output_path", str(tmp_path / "out"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: input_path=") and "lacks column(s)" in last and "'education'" in last, last


def test_a_model_with_odd_column_names_scores_csv_with_explanations(tracking, tmp_path):
    """Names are data (issue 33): ``.`` (a struct's field to Spark SQL), a backtick, ``"``, ``/``, ``:``, ``#``,
    accents, 200 characters; an input column named like the step's own scratch column, too."""
    training = tmp_path / "odd.csv"
    mixed_frame(n=300, seed=4).rename(columns=ODD_NAMES).to_csv(training, index=False)
    assert_succeeded(mlflow_run(tracking, f"data_path={training}", "target=label", "model_name=spark-odd",
                                "n_estimators=8"))
    raw = mixed_frame(n=40, seed=5).drop(columns=["label"]).rename(columns=ODD_NAMES)
    raw.insert(0, "_prediction", [str(i) for i in range(len(raw))])
    source = tmp_path / "input.csv"
    raw.to_csv(source, index=False)
    result = mlflow_run(tracking, "model_uri=models:/spark-odd/1", f"input_path={source}",
                        f"output_path={tmp_path / 'out.parquet'}", "spark_master=local[2]", "explain=true",
                        entry_point="score")
    assert_succeeded(result)
    scored = pd.read_parquet(tmp_path / "out.parquet").sort_values("_prediction", key=lambda s: s.astype(int))
    scored = scored.reset_index(drop=True)
    expected = mlflow.pyfunc.load_model("models:/spark-odd/1").predict(raw, params={"explain": True})
    assert sorted(c for c in expected.columns if c.startswith("contrib_")) == \
        sorted(f"contrib_{c}" for c in ODD_NAMES.values())
    for column in raw.columns:
        assert scored[column].fillna("").tolist() == raw[column].tolist(), column
    assert scored["error"].isna().all() and scored["label"].tolist() == expected["label"].tolist()
    for column in [c for c in expected.columns if c not in ("label", "explains")]:
        np.testing.assert_array_equal(scored[column].to_numpy(dtype=float), expected[column].to_numpy(dtype=float))
