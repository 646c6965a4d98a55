"""Batch scoring benchmark: `make bench-spark` (or `python -m bench.spark_score --help`).

Scores the same raw rows (default: the full census-income test split, about
100,000 rows, when ../shared/datasets has it; otherwise the embedded sample
repeated to --rows) three ways, in one run on this machine:
  (a) one call of pyfunc.predict on the whole frame, in one process;
  (b) the same in one process end to end: read the CSV with pandas, predict, write Parquet;
  (c) the `score` step: Spark (`local[*]`) reading the CSV, spark_udf, writing Parquet.
Prints rows per second and writes bench/results/spark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd

from contract.settings import PROJECT_DIR
from contract.params import DataParams, ForestParams, ModelParams, ScoreParams, SplitParams
from steps.preprocess import run_preprocess
from steps.score import run_score
from steps.train import train_and_register

SAMPLE = PROJECT_DIR / "data" / "census-income-sample.csv.gz"
FULL_TEST = PROJECT_DIR.parent / "shared" / "datasets" / "census-income" / "test.csv.gz"
MODEL = "bench-spark"


def train_model(root: Path) -> str:
    """The default model (100 trees) on the embedded sample, registered in a store under ``root``."""
    with mlflow.start_run() as prepared:
        run_preprocess(DataParams(data_path=str(SAMPLE)))
    with mlflow.start_run():
        version = train_and_register(SplitParams(splits_uri=f"{prepared.info.artifact_uri}/splits"),
                                     ModelParams(model_name=MODEL), ForestParams())
    return f"models:/{MODEL}/{version}"


def input_rows(rows: int) -> tuple[pd.DataFrame, str]:
    if FULL_TEST.exists():
        frame = pd.read_csv(FULL_TEST, dtype=str, keep_default_na=False)
        return frame.head(rows), f"census-income test split ({FULL_TEST})"
    sample = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    repeats = -(-rows // len(sample))
    return pd.concat([sample] * repeats, ignore_index=True).head(rows), "embedded sample, repeated"


def timed(call) -> tuple[float, object]:  # noqa: ANN001
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def run(rows: int, out: Path) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("bench-spark")
    try:
        print("training the default model ...", flush=True)
        uri = train_model(root)
        frame, source = input_rows(rows)
        csv = root / "input.csv.gz"
        frame.to_csv(csv, index=False)
        model = mlflow.pyfunc.load_model(uri)
        model.predict(frame.head(100))  # warm up (compilation, caches)
        print(f"scoring {len(frame)} rows in one process ...", flush=True)
        predict_s, _ = timed(lambda: model.predict(frame))

        def end_to_end() -> None:
            raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
            pd.concat([raw, model.predict(raw)], axis=1).to_parquet(root / "pandas.parquet")

        pandas_s, _ = timed(end_to_end)
        print("scoring with Spark local[*] ...", flush=True)
        spark_total_s, figures = timed(lambda: run_score(ScoreParams(
            model_uri=uri, input_path=str(csv), output_path=str(root / "spark.parquet"), spark_master="local[*]")))
        results = {
            "rows": len(frame), "source": source, "cores": os.cpu_count(),
            "pyfunc_predict": {"seconds": predict_s, "rows_per_s": len(frame) / predict_s},
            "pandas_end_to_end": {"seconds": pandas_s, "rows_per_s": len(frame) / pandas_s},
            "spark_job": {"seconds": figures["score_seconds"], "rows_per_s": figures["rows_per_second"],
                          "rows_with_error": figures["rows_with_error"]},
            "spark_with_startup": {"seconds": spark_total_s, "rows_per_s": len(frame) / spark_total_s},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


def report(results: dict) -> str:
    lines = [f"{results['rows']} rows ({results['source']}), {results['cores']} cores"]
    names = {"pyfunc_predict": "pyfunc.predict, one call, one process",
             "pandas_end_to_end": "one process: read CSV, predict, write Parquet",
             "spark_job": "Spark local[*]: read CSV, spark_udf, write Parquet",
             "spark_with_startup": "the same, with Spark start-up and model load"}
    for key, name in names.items():
        entry = results[key]
        lines.append(f"  {name:52} {entry['seconds']:8.2f} s {entry['rows_per_s']:12,.0f} rows/s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows to score (default 100,000)")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "bench" / "results" / "spark.json")
    args = parser.parse_args()
    print(report(run(args.rows, args.out)))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
