"""A shadow's figures (gateway/rollouts.py: ShadowComparison): the rows compared, and the requests it skipped."""

from __future__ import annotations

import time

import pytest

from gateway.rollouts import ShadowComparison

SERVED = [{"label": "yes", "proba_yes": 0.8, "proba_no": 0.2}, {"label": "no", "proba_yes": 0.4, "proba_no": 0.6}]


def test_a_shadow_that_did_not_answer_is_counted_with_its_reason_beside_the_rows_compared():
    shadow = ShadowComparison(seconds=60)
    shadow.skip("503: loading version 2 of 'm'; retry shortly")
    assert shadow.figures() == {"rows": 0, "agreement": None, "mean_abs_probability_difference": None,
                                "skipped": 1, "last_skip_reason": "503: loading version 2 of 'm'; retry shortly"}
    other = {"label": "yes", "proba_yes": 0.6, "proba_no": 0.4}
    shadow.add(SERVED, [other, other])
    shadow.skip("the model server did not answer")
    figures = shadow.figures()
    assert (figures["rows"], figures["agreement"], figures["skipped"]) == (2, 0.5, 2)
    assert figures["mean_abs_probability_difference"] == pytest.approx(0.2)
    assert figures["last_skip_reason"] == "the model server did not answer"


def test_skips_leave_the_window_with_the_rows():
    shadow = ShadowComparison(seconds=0.05)
    shadow.skip("loading")
    shadow.add(SERVED, SERVED)
    time.sleep(0.1)
    assert shadow.figures() == {"rows": 0, "agreement": None, "mean_abs_probability_difference": None,
                                "skipped": 0, "last_skip_reason": None}


def test_a_shadow_request_the_model_server_did_not_answer_is_counted_as_skipped(tmp_path):
    """The predictor's shadow call, against a model server that is not there: skipped, with why."""
    import asyncio

    from contract.settings import Settings
    from gateway.model_client import ModelServerClient, Rows, Target
    from gateway.observability import Metrics
    from gateway.predictor import Predicted, Predictor
    from gateway.rollouts import Rollouts

    async def scenario() -> dict:
        settings = Settings(_env_file=None, stack_dir=tmp_path, model_server_url="http://127.0.0.1:9")
        metrics = Metrics()
        client = ModelServerClient(settings, metrics)
        rollouts = Rollouts(None, settings, metrics)  # no registry: a shadow's figures need none
        try:
            predictor = Predictor(settings, client, metrics, None, rollouts)
            served = Predicted("1", SERVED[:1], ["k-0"], "k")
            await predictor._shadow(Rows(records=[{"age": "39"}]), Target("m", alias="challenger"), served)
            return rollouts.figures("m", {})["shadow_comparison"]
        finally:
            await rollouts.close()
            await client.close()

    figures = asyncio.run(scenario())
    assert (figures["rows"], figures["skipped"], figures["last_skip_reason"]) == (
        0, 1, "the model server did not answer")
