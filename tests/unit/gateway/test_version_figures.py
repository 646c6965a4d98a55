"""The figures a served version's tags hold, as /metrics gauges by model and version: each tag its own gauge, read
from a real MLflow registry (SQLite) by the route's own function; a tag that holds no number is logged and
skipped, never a failed scrape."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator

import mlflow
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from contract import names
from contract.registry import Registry
from gateway.observability import VERSION_FIGURES, Metrics
from gateway.routes import health
from tests.conftest import registered_versions, temporary_tracking

MODEL = "figured"
# Written out: the alert rules (deploy/prometheus/alerts.yml) and the dashboard name these gauges.
GAUGES = {
    names.TAG_MONITORING_DRIFT_SHARE: "gateway_model_drift_share",
    names.TAG_MONITORING_LIVE_ACCURACY: "gateway_model_live_accuracy",
    names.TAG_MONITORING_ESTIMATED_ACCURACY: "gateway_model_estimated_accuracy",
    names.TAG_TEST_ACCURACY: "gateway_model_test_accuracy",
    names.TAG_TEST_CALIBRATION_ERROR: "gateway_model_test_calibration_error",
    names.TAG_MONITORING_REALISED_COVERAGE: "gateway_model_realised_coverage",
    names.TAG_MONITORING_COVERAGE_TARGET: "gateway_model_coverage_target",
    names.TAG_MONITORING_COVERAGE_ROWS: "gateway_model_coverage_rows",
    names.TAG_MONITORING_LIVE_CALIBRATION_ERROR: "gateway_model_live_calibration_error",
    names.TAG_MONITORING_FEEDBACK_ROWS: "gateway_model_feedback_rows",
    names.TAG_MONITORING_DEMOGRAPHIC_PARITY: "gateway_model_demographic_parity_difference",
    names.TAG_MONITORING_EQUALIZED_ODDS: "gateway_model_equalized_odds_difference",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with temporary_tracking(tmp_path_factory.mktemp("version-figures")) as tracking:
        client = mlflow.MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)
        registered_versions(client, MODEL, 3)
        # version 1: every figure, each its own value, formatted as the monitor step and training write them
        for i, tag in enumerate(GAUGES):
            client.set_model_version_tag(MODEL, "1", tag, f"{0.01 * (i + 1):.6f}")
        # version 2: two numbers and four tags that hold none
        client.set_model_version_tag(MODEL, "2", names.TAG_TEST_ACCURACY, "0.910000")
        client.set_model_version_tag(MODEL, "2", names.TAG_MONITORING_COVERAGE_ROWS, "250")
        client.set_model_version_tag(MODEL, "2", names.TAG_MONITORING_ESTIMATED_ACCURACY, "n/a")
        client.set_model_version_tag(MODEL, "2", names.TAG_MONITORING_REALISED_COVERAGE, "")
        client.set_model_version_tag(MODEL, "2", names.TAG_MONITORING_LIVE_CALIBRATION_ERROR, "nan")
        client.set_model_version_tag(MODEL, "2", names.TAG_MONITORING_DRIFT_SHARE, "0,25")
        yield Registry(client, "champion")


def scrape(metrics: Metrics, registry: Registry, served: list[tuple[str, str]],
           patch: pytest.MonkeyPatch) -> str:
    patch.setattr(health, "MONITORING_REFRESH_SECONDS", 0.0)  # read the registry on every call
    asyncio.run(health.monitoring_gauges(metrics, registry, served))
    return generate_latest(metrics.registry).decode()


def figure(metrics: Metrics, tag: str, version: str) -> float | None:
    return metrics.registry.get_sample_value(GAUGES[tag], {"model": MODEL, "version": version})


def test_each_figure_tag_of_the_contract_has_its_gauge():
    assert {tag: gauge for tag, (gauge, _) in VERSION_FIGURES.items()} == GAUGES


def test_each_tag_of_a_served_version_becomes_its_gauge(registry, monkeypatch):
    metrics = Metrics()
    text = scrape(metrics, registry, [(MODEL, "1")], monkeypatch)
    for i, (tag, gauge) in enumerate(GAUGES.items()):
        assert figure(metrics, tag, "1") == pytest.approx(0.01 * (i + 1)), tag
        assert f'{gauge}{{model="{MODEL}",version="1"}}' in text
    assert figure(metrics, names.TAG_TEST_ACCURACY, "3") is None  # version 3 is not served


def test_a_tag_that_is_no_number_is_logged_and_skipped_and_the_scrape_goes_on(registry, monkeypatch, caplog):
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        text = scrape(metrics, registry, [(MODEL, "1"), (MODEL, "2")], monkeypatch)
    assert figure(metrics, names.TAG_TEST_ACCURACY, "2") == 0.91
    assert figure(metrics, names.TAG_MONITORING_COVERAGE_ROWS, "2") == 250
    for tag in (names.TAG_MONITORING_ESTIMATED_ACCURACY, names.TAG_MONITORING_REALISED_COVERAGE,
                names.TAG_MONITORING_LIVE_CALIBRATION_ERROR, names.TAG_MONITORING_DRIFT_SHARE):
        assert figure(metrics, tag, "2") is None, tag
        assert any(tag in r.getMessage() and "version 2 is not a number" in r.getMessage() for r in caplog.records)
    assert figure(metrics, names.TAG_MONITORING_ESTIMATED_ACCURACY, "1") == pytest.approx(0.03)
    assert 'gateway_model_test_accuracy{model="figured",version="2"} 0.91' in text


def test_a_version_no_longer_served_loses_its_gauges(registry, monkeypatch):
    metrics = Metrics()
    scrape(metrics, registry, [(MODEL, "1"), (MODEL, "2")], monkeypatch)
    scrape(metrics, registry, [(MODEL, "2")], monkeypatch)
    assert all(figure(metrics, tag, "1") is None for tag in GAUGES)
    assert figure(metrics, names.TAG_TEST_ACCURACY, "2") == 0.91


@given(st.one_of(st.text(max_size=30), st.floats(allow_nan=True, allow_infinity=True).map(repr)))
def test_any_tag_value_is_its_finite_number_or_no_gauge(value):
    metrics = Metrics()
    logging.getLogger("gateway.metrics").disabled = True  # hundreds of examples: the warning is tested above
    try:
        metrics.set_version_figures([(MODEL, "1", {names.TAG_MONITORING_DRIFT_SHARE: value})])
    finally:
        logging.getLogger("gateway.metrics").disabled = False
    try:
        expected = float(value)
    except ValueError:
        expected = math.nan
    shown = figure(metrics, names.TAG_MONITORING_DRIFT_SHARE, "1")
    assert shown == expected if math.isfinite(expected) else shown is None
    generate_latest(metrics.registry)
