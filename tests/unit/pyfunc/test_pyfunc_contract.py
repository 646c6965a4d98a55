"""The served model's contract, on a model trained and registered in process (real MLflow store).

Raw rows go in exactly as a CSV or a JSON client sends them; out come ``label``
(in the label's own type), ``probability`` and ``proba_<class>`` columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from pyfunc.cleaning import InvalidInputError, clean_raw_frame
from pyfunc.model import TabularClassifier
from pyfunc.pipeline import load_pipeline
from contract.params import DataParams, ForestParams, ModelParams, SplitParams
from steps.preprocess import run_preprocess
from steps.train import train_and_register
from tests.conftest import mixed_frame, temporary_tracking

FEATURES = ["age", "hours", "colour", "city"]


def train_in_process(frame: pd.DataFrame, tmp, name: str, **forest) -> str:
    csv = tmp / f"{name}.csv"
    frame.to_csv(csv, index=False)
    with mlflow.start_run() as prepared:
        run_preprocess(DataParams(data_path=str(csv), target="label", drop_columns=()))
    with mlflow.start_run():
        return train_and_register(
            SplitParams(splits_uri=f"{prepared.info.artifact_uri}/splits"),
            ModelParams(model_name=name),
            ForestParams(**{"n_estimators": 25, "n_jobs": 1, **forest}),
        )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A binary text-labelled and a multiclass integer-labelled model, loaded from the registry."""
    root = tmp_path_factory.mktemp("contract")
    with temporary_tracking(root):
        binary = train_in_process(mixed_frame(seed=1), root, "binary-text")
        multi = train_in_process(mixed_frame(seed=2, labels=(3, 7, 11)), root, "multi-int")
        uris = {"binary": f"models:/binary-text/{binary}", "multi": f"models:/multi-int/{multi}"}
        loaded = {kind: mlflow.pyfunc.load_model(uri) for kind, uri in uris.items()}
        yield {**loaded, "local_binary": mlflow.artifacts.download_artifacts(uris["binary"])}


RAW_ROWS = pd.DataFrame(
    [
        {"age": "39", "hours": " 40.5 ", "colour": "red", "city": " Oslo "},  # numbers as text
        {"age": 52, "hours": 38.0, "colour": "blue", "city": "Lima"},  # typed JSON
        {"age": "?", "hours": "", "colour": "?", "city": ""},  # every value missing
        {"age": 30, "hours": "?", "colour": "ultraviolet", "city": "Atlantis"},  # unseen categories
    ],
    dtype=object,
)


@pytest.mark.parametrize(("kind", "classes"), [("binary", ["no", "yes"]), ("multi", [3, 7, 11])])
def test_raw_rows_get_a_label_and_probabilities(models, kind, classes):
    out = models[kind].predict(RAW_ROWS)
    assert list(out.columns) == ["label", "probability", *[f"proba_{c}" for c in classes]]
    assert len(out) == len(RAW_ROWS)
    proba = out[[f"proba_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    best = models[kind].unwrap_python_model()._rule.best(proba)  # binary: the threshold; else argmax
    np.testing.assert_allclose(out["probability"], proba[np.arange(len(proba)), best])
    assert [classes[i] for i in best] == out["label"].tolist()
    # labels come back in their own type: text stays text, integers stay integers
    assert {type(v) for v in out["label"].tolist()} == {type(classes[0])}


def test_text_numbers_and_typed_numbers_predict_the_same(models):
    as_text = RAW_ROWS.iloc[[0]].copy()
    typed = pd.DataFrame([{"age": 39, "hours": 40.5, "colour": "red", "city": "Oslo"}], dtype=object)
    pd.testing.assert_frame_equal(models["binary"].predict(as_text), models["binary"].predict(typed))


def test_predictions_equal_the_pipeline_on_cleaned_input(models, tmp_path):
    model = models["binary"]
    artifacts = model.unwrap_python_model()
    assert isinstance(artifacts, TabularClassifier)
    frame = mixed_frame(seed=9)[FEATURES]
    out = model.predict(frame)
    schema, pipeline = artifacts._schema, artifacts._pipeline
    assert artifacts._calibration.method != "none"  # served: the pipeline's probabilities, calibrated
    expected = artifacts._calibration.apply(pipeline.predict_proba(clean_raw_frame(frame, schema)))
    np.testing.assert_array_equal(out[["proba_no", "proba_yes"]].to_numpy(), expected)


@pytest.mark.parametrize("kind", ["binary", "multi"])
@pytest.mark.parametrize("coverage", ["marginal", "per_class"])
def test_a_confidence_adds_each_rows_conformal_set(models, kind, coverage):
    model = models[kind]
    inner = model.unwrap_python_model()
    frame = mixed_frame(seed=11)[FEATURES]
    plain = model.predict(frame)
    out = model.predict(frame, params={"confidence": 0.8, "set_coverage": coverage})
    pd.testing.assert_frame_equal(out.drop(columns=["prediction_set", "confidence"]), plain)
    classes = inner._compiled.classes
    proba = plain[[f"proba_{c}" for c in classes]].to_numpy()
    scores = inner._conformal.by_class if coverage == "per_class" else [inner._conformal.overall] * len(classes)
    for row, answer in zip(proba, out.to_dict(orient="records"), strict=True):
        # a class is in the set exactly when 1 - its probability is within its quantile of held-out scores
        expected = [c for k, c in enumerate(classes) if 1 - row[k] <= scores[k].quantile(0.8)]
        assert answer["prediction_set"] == expected and answer["confidence"] == 0.8
        assert all(type(c) is type(answer["label"]) for c in answer["prediction_set"])
    assert not model.predict(frame, params={"confidence": 0.0}).columns.isin(["prediction_set"]).any()


@pytest.mark.parametrize("params", [{"confidence": 1.0}, {"confidence": -0.1}, {"set_coverage": "rows"}])
def test_a_confidence_out_of_range_is_named(models, params):
    with pytest.raises(InvalidInputError, match=next(iter(params))):
        models["binary"].predict(RAW_ROWS, params={"confidence": 0.9, **params})


def test_extra_columns_are_ignored(models):
    with_extra = RAW_ROWS.assign(label="yes", comment="anything")
    pd.testing.assert_frame_equal(models["binary"].predict(with_extra), models["binary"].predict(RAW_ROWS))


def test_a_missing_column_is_named(models):
    with pytest.raises(InvalidInputError, match="'city'") as err:
        models["binary"].predict(RAW_ROWS.drop(columns=["city"]))
    assert err.value.columns == ["city"]


def test_text_in_a_numeric_column_is_named(models):
    bad = RAW_ROWS.copy()
    bad.loc[1, "hours"] = "forty"
    with pytest.raises(InvalidInputError, match="'hours' row 1: 'forty'"):
        models["binary"].predict(bad)


def test_on_invalid_report_puts_the_reason_in_an_error_column_and_scores_the_rest(models):
    bad = RAW_ROWS.copy()
    bad.loc[1, "hours"] = "forty"
    bad.loc[3, "age"] = 1e300
    reported = models["binary"].predict(bad, params={"on_invalid": "report"})
    assert [e if isinstance(e, str) else None for e in reported["error"]] == [
        None, "invalid value(s): column 'hours': 'forty' is not a number", None,
        "invalid value(s): column 'age': 1e+300 is not a finite number"]
    assert reported.loc[[1, 3], ["label", "probability", "proba_no", "proba_yes"]].isna().all().all()
    good = models["binary"].predict(bad.loc[[0, 2]])
    pd.testing.assert_frame_equal(reported.loc[[0, 2], good.columns].astype(good.dtypes), good)
    # a clean batch takes the normal path: same predictions, no error anywhere
    clean = models["binary"].predict(RAW_ROWS, params={"on_invalid": "report"})
    pd.testing.assert_frame_equal(clean.drop(columns="error"), models["binary"].predict(RAW_ROWS))
    assert clean["error"].isna().all()
    # a missing column is the whole input's problem: still raised
    with pytest.raises(InvalidInputError, match="'city'"):
        models["binary"].predict(bad.drop(columns=["city"]), params={"on_invalid": "report"})


def test_the_logged_model_carries_signature_example_and_skops_pipeline(models):
    model = models["binary"]
    # no input schema on purpose (steps/train.py: model_signature): the columns are in feature_schema.json
    assert model.metadata.get_input_schema() is None
    local = Path(models["local_binary"])
    schema = json.loads((local / "artifacts" / "feature_schema.json").read_text())
    assert schema["numeric"] + schema["categorical"] == ["age", "hours", "colour", "city"]
    assert model.metadata.get_output_schema().input_names() == [
        "label", "probability", "proba_no", "proba_yes"
    ]
    assert model.metadata.get_params_schema().to_dict() == [
        {"name": "on_invalid", "type": "string", "default": "raise", "shape": None},
        {"name": "explain", "type": "boolean", "default": False, "shape": None},
        {"name": "explain_classes", "type": "string", "default": "predicted", "shape": None},
        {"name": "confidence", "type": "double", "default": 0.0, "shape": None},
        {"name": "set_coverage", "type": "string", "default": "marginal", "shape": None}]
    example = json.loads((local / "input_example.json").read_text())
    assert example["columns"] == ["age", "hours", "colour", "city"]
    # the pipeline is stored with skops (no pickle) and loads with our trusted types only
    assert load_pipeline(local / "artifacts" / "pipeline.skops") is not None
    assert not list(local.rglob("*.pkl"))


def test_records_path_answers_exactly_like_predict(models):
    inner = models["binary"].unwrap_python_model()
    records = RAW_ROWS.to_dict(orient="records")
    expected = models["binary"].predict(RAW_ROWS).to_dict(orient="records")
    assert inner.predict_records(records) == expected


@pytest.mark.parametrize("kind", ["binary", "multi"])
def test_table_path_answers_like_the_records_path_whatever_the_column_order_and_spaces(models, kind):
    """A CSV body read column by column: its header as copied from a file (a space after each comma), in
    another order, with a column the model does not use; cells as text, as a CSV holds them."""
    inner = models[kind].unwrap_python_model()
    text = RAW_ROWS.map(lambda v: str(v))
    records = text.to_dict(orient="records")
    names = [" city", " note", "age", " hours", " colour"]
    columns = [tuple(text["city"]), ("x",) * len(text), tuple(text["age"]), tuple(text["hours"]),
               tuple(text["colour"])]
    assert inner.predict_table(names, columns) == inner.predict_records(records)


def test_input_columns_name_what_the_model_reads_and_the_table_path_takes_them_as_named(models):
    """What a server may read of a body and nothing else (model_server/protocol.py: RecordsReader)."""
    inner = models["binary"].unwrap_python_model()
    records = RAW_ROWS.to_dict(orient="records")
    columns = inner.input_columns
    assert sorted(columns) == ["age", "city", "colour", "hours"]
    assert inner.predict_table(columns, [tuple(r[c] for r in records) for c in columns]) == \
        inner.predict_records(records)
    assert TabularClassifier().input_columns == []  # not loaded: nothing to read


def test_table_path_names_missing_columns_and_the_unknown_ones_like_the_records_path(models):
    inner = models["binary"].unwrap_python_model()
    with pytest.raises(InvalidInputError) as table:
        inner.predict_table(["age", "hours", "colour", "town"], [("39",), ("40",), ("red",), ("Oslo",)])
    with pytest.raises(InvalidInputError) as records:
        inner.predict_records([{"age": "39", "hours": "40", "colour": "red", "town": "Oslo"}])
    assert table.value.message == records.value.message and "'city'" in table.value.message
    assert "'town'" in table.value.message


def test_records_path_names_missing_and_nested_values(models):
    inner = models["binary"].unwrap_python_model()
    records = RAW_ROWS.to_dict(orient="records")
    del records[2]["city"]
    with pytest.raises(InvalidInputError, match="missing required column.*'city'"):
        inner.predict_records(records)
    records = RAW_ROWS.to_dict(orient="records")
    records[1]["colour"] = ["red", "blue"]
    with pytest.raises(InvalidInputError, match="'colour' row 1") as err:
        inner.predict_records(records)
    assert err.value.columns == ["colour"]


@pytest.mark.parametrize("kind", ["binary", "multi"])
def test_explain_param_adds_base_value_and_a_contribution_per_input_column(models, kind):
    model = models[kind]
    plain = model.predict(RAW_ROWS)
    explained = model.predict(RAW_ROWS, params={"explain": True})
    pd.testing.assert_frame_equal(explained[plain.columns], plain)  # the predictions are unchanged
    contrib = [f"contrib_{c}" for c in FEATURES]
    assert list(explained.columns) == [*plain.columns, "explains", "base_value", *contrib]
    # a forest's probability is not additive in log-odds, so no calibration map keeps its sums: the explanation
    # is of the forest's own (uncalibrated) probability, and says so
    assert set(explained["explains"]) == {"uncalibrated_probability"}
    inner = model.unwrap_python_model()
    classes = inner._compiled.classes
    own = pd.DataFrame(inner._compiled.predict_proba(RAW_ROWS), columns=[str(c) for c in classes])
    predicted = own.to_numpy()[np.arange(len(own)), pd.Index(classes).get_indexer(plain["label"])]
    # local accuracy: the predicted class's probability, from the base value and the columns' shares
    np.testing.assert_allclose(explained["base_value"] + explained[contrib].sum(axis=1), predicted, rtol=0, atol=1e-9)
    every = model.predict(RAW_ROWS, params={"explain": True, "explain_classes": "all"})
    for i, row in every.iterrows():
        assert set(row["explanations"]) == {str(c) for c in classes}
        for label, part in row["explanations"].items():
            assert list(part["contributions"]) == FEATURES
            total = part["base_value"] + sum(part["contributions"].values())
            assert total == pytest.approx(own.loc[i, label], abs=1e-9)
        predicted = row["explanations"][str(row["label"])]
        assert predicted["base_value"] == row["base_value"]
        assert [predicted["contributions"][c] for c in FEATURES] == row[contrib].tolist()


@pytest.fixture(scope="module")
def boosted(tmp_path_factory):
    """Gradient boosting, binary (calibrated by a sigmoid of its log-odds) and multiclass (by a temperature)."""
    root = tmp_path_factory.mktemp("boosted")
    with temporary_tracking(root):
        made = {kind: train_in_process(mixed_frame(seed=3, **labels), root, f"boosted-{kind}",
                                       model_type="hist_gradient_boosting", max_iter=30)
                for kind, labels in (("binary", {}), ("multi", {"labels": (3, 7, 11)}))}
        yield {kind: mlflow.pyfunc.load_model(f"models:/boosted-{kind}/{v}") for kind, v in made.items()}


@pytest.mark.parametrize("kind,method", [("binary", "sigmoid"), ("multi", "temperature")])
def test_calibrated_log_odds_explanations_add_up_to_the_served_probabilities(boosted, kind, method):
    """An affine map of a sum over trees keeps it a sum: the explanation is of the served (calibrated) answer."""
    model = boosted[kind]
    inner = model.unwrap_python_model()
    assert inner._calibration.method == method
    frame = mixed_frame(seed=12)[FEATURES]
    served = model.predict(frame)
    every = model.predict(frame, params={"explain": True, "explain_classes": "all"})
    assert set(every["explains"]) == {"log_odds"}
    classes = [str(c) for c in inner._compiled.classes]
    for i, row in every.iterrows():
        scores = np.array([row["explanations"][c]["base_value"] + sum(row["explanations"][c]["contributions"].values())
                           for c in classes])
        # binary: each class's log-odds; multiclass: scores whose softmax is the probabilities
        proba = 1 / (1 + np.exp(-scores)) if kind == "binary" else np.exp(scores) / np.exp(scores).sum()
        np.testing.assert_allclose(proba, served.loc[i, [f"proba_{c}" for c in classes]].to_numpy(float), atol=1e-9)
    assert not np.allclose(inner._compiled.predict_proba(frame), served.filter(like="proba_").to_numpy(float))


def test_explain_composes_with_on_invalid_report_and_refuses_unknown_classes(models):
    bad = RAW_ROWS.copy()
    bad.loc[1, "hours"] = "forty"
    reported = models["binary"].predict(bad, params={"explain": True, "on_invalid": "report"})
    assert reported["error"].notna().tolist() == [False, True, False, False]
    assert reported.loc[1, ["base_value", "contrib_age", "label"]].isna().all()
    good = models["binary"].predict(bad.loc[[0, 2, 3]], params={"explain": True})
    pd.testing.assert_frame_equal(reported.loc[[0, 2, 3], good.columns].astype(good.dtypes), good)
    with pytest.raises(InvalidInputError, match="explain_classes must be one of predicted, all"):
        models["binary"].predict(RAW_ROWS, params={"explain": True, "explain_classes": "some"})


def test_labels_follow_the_stored_threshold_on_every_path(models):
    binary = models["binary"]
    rule = binary.unwrap_python_model()._rule
    assert 0 < rule.threshold < 1 and rule.positive_index == 1  # "yes", the rarer class, chosen at training
    decision = json.loads((Path(models["local_binary"]) / "artifacts" / "decision.json").read_text())
    assert decision == {"positive_class": "yes", "threshold": rule.threshold}
    rows = pd.concat([RAW_ROWS, mixed_frame(n=600, seed=21)[FEATURES]], ignore_index=True)  # on both sides
    framed = binary.predict(rows)
    expected = np.where(framed["proba_yes"] >= rule.threshold, "yes", "no")
    assert framed["label"].tolist() == expected.tolist()
    # rows where argmax would answer otherwise: between the threshold and 0.5
    between = (framed["proba_yes"] - 0.5) * (framed["proba_yes"] - rule.threshold) < 0
    assert set(expected) == {"yes", "no"} and between.any(), rule.threshold
    assert framed["probability"].tolist() == framed.apply(lambda r: r[f"proba_{r['label']}"], axis=1).tolist()
    records = binary.unwrap_python_model().predict_records(rows.to_dict(orient="records"))
    assert [r["label"] for r in records] == expected.tolist()
    # a multiclass target keeps the most probable class
    multi = models["multi"].predict(RAW_ROWS)
    probabilities = multi[["proba_3", "proba_7", "proba_11"]].to_numpy()
    assert multi["label"].tolist() == [[3, 7, 11][i] for i in probabilities.argmax(axis=1)]
