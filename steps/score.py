"""The ``score`` step: batch scoring of a registered model on Apache Spark.

Reads CSV (``.csv``/``.csv.gz``) or Parquet, a file or a folder, from a local
path or any URI Spark can read; scores every row with the registered pyfunc
through ``mlflow.pyfunc.spark_udf`` (the same model and the same cleaning as
``/predict``); writes Parquet with every input column plus ``label``,
``probability``, ``proba_<class>`` and ``error`` (with ``explain=true`` also ``base_value`` and
``contrib_<column>``, the exact TreeSHAP explanation of the predicted class). A row that cannot be scored
(text in a numeric column, say) keeps empty predictions and the reason in
``error``; it does not fail the job.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow.models import Model
from mlflow.types.schema import Schema

from contract.errors import ParameterError, first_line
from contract.names import DEFAULT_MODEL_NAME
from contract.params import ScoreParams, parse_cli
from contract.settings import get_settings
from pyfunc.cleaning import FeatureSchema, column_key
from pyfunc.model import (
    BASE_VALUE_COLUMN,
    CONFIDENCE_COLUMN,
    CONFIDENCE_PARAM,
    ERROR_COLUMN,
    EXPLAIN_PARAM,
    EXPLAINS_COLUMN,
    FEATURE_SCHEMA_FILE,
    ON_INVALID_PARAM,
    PREDICTION_SET_COLUMN,
    contrib_column,
)
from steps.runs import log_params_once, step_run
from steps.sources import local_path

SPARK_TYPES = {"string": "string", "long": "bigint", "integer": "int", "double": "double", "float": "float",
               "boolean": "boolean"}


def model_uri_of(params: ScoreParams) -> str:
    return params.model_uri or f"models:/{DEFAULT_MODEL_NAME}@{get_settings().serve_alias}"


def input_format(location: str) -> str:
    """``parquet`` or ``csv``, from the name or, for a local folder, from the files in it."""
    name = location.rstrip("/").lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    path = local_path(location)
    if path is not None and path.is_dir():
        names = [p.name.lower() for p in path.rglob("*") if p.is_file()]
        if any(n.endswith(".parquet") for n in names):
            return "parquet"
        if any(n.endswith((".csv", ".csv.gz")) for n in names):
            return "csv"
        raise ParameterError("input_path", location, "folder holds no .csv, .csv.gz or .parquet file")
    raise ParameterError("input_path", location, "expected .csv, .csv.gz or .parquet (a file or a folder of them)")


def check_input_path(location: str) -> None:
    path = local_path(location)
    if path is not None and not path.exists():
        raise ParameterError("input_path", location, "no such file or directory")
    input_format(location)


@dataclass(frozen=True)
class ScoredModel:
    """A model version fetched to this machine: where, its input columns, and its outputs."""

    path: Path
    columns: list[str]
    outputs: Schema
    params: list[str]  # the predict params its signature declares


def fetch_model(uri: str) -> ScoredModel:
    """The model at ``uri``, read without loading it here (the Spark workers load it)."""
    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        mlmodel = Model.load(path / "MLmodel")
    except Exception as err:  # any store's failure becomes the caller's one-line message
        raise ParameterError("model_uri", uri, f"cannot load: {first_line(err, 300)}") from None
    schema_file = path / "artifacts" / FEATURE_SCHEMA_FILE
    outputs, params = mlmodel.get_output_schema(), mlmodel.get_params_schema()
    if outputs is None or not schema_file.is_file():
        raise ParameterError("model_uri", uri, "not a model of this project (no output signature or feature schema)")
    return ScoredModel(path, FeatureSchema.from_json(schema_file.read_text(encoding="utf-8")).columns, outputs,
                       [spec.name for spec in params.params] if params else [])


def output_columns(model: ScoredModel, explain: bool, confidence: float = 0.0) -> list[tuple[str, str]]:
    """(name, Spark type) of what the model adds to a row: its signature's outputs, the prediction sets and the
    explanation's columns when asked for, then ``error``."""
    columns = [(spec.name, SPARK_TYPES.get(spec.type.name, "string")) for spec in model.outputs.inputs]
    if confidence:
        columns += [(PREDICTION_SET_COLUMN, f"array<{dict(columns)['label']}>"), (CONFIDENCE_COLUMN, "double")]
    if explain:
        # explains: what base_value and the contributions add up to (the served or the uncalibrated score)
        columns += [(EXPLAINS_COLUMN, "string"), (BASE_VALUE_COLUMN, "double"),
                    *((contrib_column(c), "double") for c in model.columns)]
    return [*columns, (ERROR_COLUMN, "string")]


def quoted(name: str) -> str:
    """A column name as Spark SQL reads it, whatever it holds: in backticks, a backtick in it doubled (bare,
    ``a.b`` would be field ``b`` of a struct ``a``)."""
    return "`" + name.replace("`", "``") + "`"


def result_type(columns: list[tuple[str, str]]) -> str:
    """The Spark struct of :func:`output_columns`."""
    return ", ".join(f"{quoted(name)} {kind}" for name, kind in columns)


SPARK_LOG_CONFIG = Path(__file__).with_name("log4j2-score.properties")
# PySpark 4.3 warns at every pandas UDF that it does not fully support pandas 3; the step checks its
# answers against pyfunc.predict (tests/integration/steps), so the warning only buries the summary.
PYSPARK_PANDAS_WARNING = "PySpark does not yet fully support pandas"


def quiet_third_parties() -> None:
    """Keep the step's output to its own lines: no PySpark pandas warnings (here and in Spark's Python
    workers), no MLflow download bars, no advice against ``env_manager="local"`` (the point here)."""
    warnings.filterwarnings("ignore", message=PYSPARK_PANDAS_WARNING, category=FutureWarning)
    os.environ["PYTHONWARNINGS"] = f"ignore:{PYSPARK_PANDAS_WARNING}:FutureWarning"  # the workers
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logging.getLogger("mlflow.pyfunc").addFilter(lambda record: 'env_manager="local"' not in record.getMessage())


def start_spark(master: str):  # noqa: ANN201 (pyspark is imported late: it is slow to import)
    # Spark's Python workers must be this interpreter (with pandas, mlflow, our code), not the system's.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(master).appName("tabular-classifier score")
             .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={SPARK_LOG_CONFIG.as_uri()}")
             .config("spark.ui.enabled", "false")
             # no progress bars over the step's own output (its summary is the last line)
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def read_input(spark, location: str):  # noqa: ANN001, ANN201
    # In a folder, only the data files (not a README or a _SUCCESS marker beside them).
    if input_format(location) == "parquet":
        return spark.read.option("pathGlobFilter", "*.parquet").parquet(location)
    # Every cell as text, as the CSV holds it (the model's cleaning reads numbers itself);
    # RFC 4180 quoting, as pandas and the preprocess step read it.
    return spark.read.option("pathGlobFilter", "*.{csv,csv.gz,CSV,CSV.GZ}").csv(
        location, header=True, inferSchema=False, escape='"', multiLine=True)


def run_score(params: ScoreParams) -> dict[str, float]:
    check_input_path(params.input_path)
    model = fetch_model(model_uri_of(params))
    needed = model.columns
    if params.explain and EXPLAIN_PARAM not in model.params:
        raise ParameterError("explain", "true", "the model was trained before models could explain their "
                             "predictions; train a new version")
    if params.confidence and CONFIDENCE_PARAM not in model.params:
        raise ParameterError("confidence", str(params.confidence), "the model was trained before models gave "
                             "prediction sets; train a new version")
    columns = output_columns(model, params.explain, params.confidence)
    outputs = result_type(columns)
    output_names = [name for name, _ in columns]

    from pyspark.sql import functions as F  # noqa: N812

    spark = start_spark(params.spark_master)
    try:
        frame = read_input(spark, params.input_path)
        frame = frame.toDF(*[column_key(c) for c in frame.columns])  # the header rule training applied
        # A gzipped CSV is one partition, so one core: spread the rows over all of them.
        cores = spark.sparkContext.defaultParallelism
        if frame.rdd.getNumPartitions() < cores:
            frame = frame.repartition(cores)
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ParameterError("input_path", params.input_path,
                                 f"lacks column(s) the model needs: {', '.join(map(repr, missing))}")
        clashing = [c for c in output_names if c in frame.columns]
        if clashing:
            raise ParameterError("input_path", params.input_path,
                                 f"has column(s) named like the output: {', '.join(map(repr, clashing))}; rename them")
        udf = mlflow.pyfunc.spark_udf(spark, str(model.path), result_type=outputs, env_manager="local",
                                      params={ON_INVALID_PARAM: "report", EXPLAIN_PARAM: params.explain,
                                              **({CONFIDENCE_PARAM: params.confidence} if params.confidence else {})})
        # Columns reach the model by name only inside a struct; its own column named unlike any input's.
        answer = "_prediction"
        while answer in frame.columns:
            answer += "_"
        scored = frame.withColumn(answer, udf(F.struct(*[F.col(quoted(c)) for c in needed])))
        # spark_udf casts a string field holding any text with astype(str), so a missing value
        # in a mixed batch arrives as "None" or "nan": made null again here, and a row with an
        # error gets no prediction at all.
        raw_error = F.col(quoted(answer)).getField(ERROR_COLUMN)
        error = F.when(raw_error.isin("None", "nan", ""), None).otherwise(raw_error)
        scored = scored.select(
            *[F.col(quoted(c)) for c in frame.columns],
            *[F.when(error.isNull(), F.col(quoted(answer)).getField(c)).alias(c) for c in output_names[:-1]],
            error.alias(ERROR_COLUMN))
        started = time.perf_counter()
        scored.write.mode("overwrite").parquet(params.output_path)
        seconds = time.perf_counter() - started
        written = spark.read.parquet(params.output_path)
        rows = written.count()
        failed = written.filter(F.col(quoted(ERROR_COLUMN)).isNotNull()).count()
    finally:
        spark.stop()
    return {"rows": rows, "rows_with_error": failed, "score_seconds": seconds,
            "rows_per_second": rows / seconds if seconds else 0.0}


def main(argv: list[str] | None = None) -> None:
    quiet_third_parties()
    with step_run("score"):
        (params,) = parse_cli(argv, ScoreParams)
        log_params_once({"model_uri": model_uri_of(params), "input_path": params.input_path,
                         "output_path": params.output_path, "spark_master": params.spark_master,
                         "explain": params.explain, "confidence": params.confidence})
        figures = run_score(params)
        mlflow.log_metrics(figures)
        mlflow.set_tag("output_path", params.output_path)
        print(f"scored {figures['rows']:.0f} rows ({figures['rows_with_error']:.0f} with an error) into "
              f"{params.output_path} at {figures['rows_per_second']:.0f} rows/s")


if __name__ == "__main__":
    main()
