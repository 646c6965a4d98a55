"""The monitor step's artifacts, metrics and tags with any column name and any width, in process.

A name is the user's data: figures and metric keys go under contract.names.store_key, people read the
name (summary, drift table, report, columns.json). What grows with the columns is an artifact, never a tag.
"""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.names import MONITORING_COLUMNS_ARTIFACT, MONITORING_SUMMARY_ARTIFACT, store_key
from pyfunc.cleaning import FeatureSchema
from steps.drift import Rules
from steps.monitor import DRIFT, MAX_FIGURES, column_drift, drift_metrics, figure_path, record, write_artifacts
from steps.versions import Version

MAX_TAG = 8000  # MLflow's limit on a run tag's value
# the characters that broke the step (a `/` made a folder, a `$` mathtext), and any others
NAME = st.text(st.sampled_from(list("/.()\"':#\\ $é日本-_aA0")), min_size=1, max_size=40) | st.text(
    st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=200)
rng = np.random.default_rng(5)


def frames(names: list[str], shift: float) -> tuple[FeatureSchema, pd.DataFrame, pd.DataFrame]:
    """Cleaned samples: the first name a category column whose mix changes, the others numbers moved by
    ``shift`` standard deviations."""
    numeric, categorical = names[1:], names[:1]
    n_ref, n_cur = 300, 200
    reference = {c: rng.normal(0, 1, n_ref) for c in numeric}
    current = {c: rng.normal(shift, 1, n_cur) for c in numeric}
    reference[names[0]] = rng.choice(["$a$", "b/c"], n_ref, p=[0.8, 0.2])
    current[names[0]] = rng.choice(["$a$", "b/c"], n_cur, p=[0.2, 0.8])
    return (FeatureSchema(numeric, categorical, []), pd.DataFrame(reference)[names],
            pd.DataFrame(current)[names])


def monitored(out: Path, names: list[str], shift: float = 3.0) -> dict:
    schema, reference, current = frames(names, shift)
    drifts, absent = column_drift(schema, reference, current, Rules())
    drifted = [d.column for d in drifts if d.drifted]
    summary = {"model_name": "m", "version": "", "rows": len(current), "status": DRIFT,
               "drift_share": len(drifted) / len(drifts), "drifted_features": drifted, "live_metrics": {},
               "feedback_rows": 0, "columns_not_logged": absent}
    version = Version("m", "1", "run", schema, ["no", "yes"], "yes", {})
    write_artifacts(out, summary, drifts, None, {}, version, reference, current)
    return {"summary": summary, "drifts": drifts, "metrics": drift_metrics(drifts, None)}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(NAME, min_size=1, max_size=3, unique=True))
def test_any_column_names_get_a_figure_a_metric_and_their_own_name_where_people_read(names):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        done = monitored(out, names)
        drifted = done["summary"]["drifted_features"]
        assert sorted(drifted) == sorted(names)  # every column moved: every one found
        figures = {p.relative_to(out).as_posix() for p in (out / "figures").iterdir()}
        assert figures == {figure_path(c) for c in names}  # one per column, none elsewhere
        assert json.loads((out / MONITORING_COLUMNS_ARTIFACT).read_text("utf-8")) == {store_key(c): c for c in names}
        assert json.loads((out / MONITORING_SUMMARY_ARTIFACT).read_text("utf-8"))["drifted_features"] == drifted
        table = pd.read_csv(out / "drift_table.csv", dtype=str, keep_default_na=False)
        assert sorted(table["column"]) == sorted(names)
        assert dict(zip(table["store_key"], table["column"], strict=True)) == {store_key(c): c for c in names}
        page = (out / "report.html").read_text("utf-8")
        assert all(f"<figcaption>{html.escape(c)}</figcaption>" in page for c in names)
        assert set(done["metrics"]) == {f"drift_score/{store_key(c)}" for c in names}


def test_a_dollar_sign_in_a_name_or_a_category_is_text_not_mathtext(tmp_path):
    # unbalanced or broken TeX that matplotlib's mathtext parser refuses
    done = monitored(tmp_path, ["$\\frac{$", "a $x^$ b", "cost ($)"])
    assert len(done["summary"]["drifted_features"]) == 3


def test_a_wide_drift_keeps_every_tag_short_and_the_summary_whole_in_its_artifact(tracking, tmp_path):
    names = [f"{i:03d} " + "long/name:é" * 18 for i in range(320)]  # 320 columns of 200 characters
    out = tmp_path / "out"
    out.mkdir()
    done = monitored(out, names)
    summary = done["summary"]
    assert len(summary["drifted_features"]) == 320
    assert len(list((out / "figures").iterdir())) == MAX_FIGURES  # the table and the metrics hold them all
    assert f"first {MAX_FIGURES} of the 320 drifted" in (out / "report.html").read_text("utf-8")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(out))
        record(summary, done["metrics"], run.info.run_id)
    stored = mlflow.MlflowClient().get_run(run.info.run_id)
    assert max(len(v) for v in stored.data.tags.values()) < 1000
    assert stored.data.tags["monitoring_status"] == "drift"
    assert stored.data.metrics["drifted_columns"] == 320
    assert {f"drift_score/{store_key(c)}" for c in names} <= set(stored.data.metrics)
    loaded = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{MONITORING_SUMMARY_ARTIFACT}")
    assert loaded["drifted_features"] == summary["drifted_features"]
    assert len(json.dumps(loaded)) > MAX_TAG  # what the tag once held, cut: here whole
