"""The canary rollback verdict (contract.traffic.RollbackRule, applied by gateway.rollouts), at its edges.

tests/integration/gateway/test_rollouts.py rolls a failing canary back on real processes; here each rule
is judged on its own: exactly at a threshold, just over it, too few requests, a served version with no
error or no successful answer.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contract.settings import Settings
from contract.traffic import RollbackRule
from gateway.observability import Metrics
from gateway.rollouts import Rollouts, Window

RULE = RollbackRule(min_requests=20, max_error_rate_delta=0.05, max_p99_ratio=3.0)


def figures(requests: int = 100, error_rate: float = 0.0, p99_ms: float | None = 100.0) -> dict:
    return {"requests": requests, "error_rate": error_rate, "p99_ms": p99_ms}


def test_the_error_rate_rule_at_its_edges():
    served = figures(error_rate=0.10)
    assert RULE.verdict(served, figures(error_rate=0.15)) is None  # exactly the allowed delta over: stays
    reason = RULE.verdict(served, figures(error_rate=0.1501))
    assert reason == "canary error rate 0.150 exceeds the served version's 0.100 by more than 0.05"
    assert RULE.verdict(served, figures(error_rate=0.0)) is None  # better than served: stays
    # a served version that never fails: the canary may fail up to the delta, not one request more
    assert RULE.verdict(figures(error_rate=0.0), figures(error_rate=0.05)) is None
    assert RULE.verdict(figures(error_rate=0.0), figures(error_rate=0.06)) is not None
    # with no delta allowed, any error above the served version's is too many
    strict = RollbackRule(20, 0.0, 3.0)
    assert strict.verdict(figures(error_rate=0.0), figures(error_rate=0.0)) is None
    assert strict.verdict(figures(error_rate=0.0), figures(error_rate=0.01)) is not None


def test_the_p99_rule_at_its_edges():
    served = figures(p99_ms=100.0)
    assert RULE.verdict(served, figures(p99_ms=300.0)) is None  # exactly the ratio: stays
    assert RULE.verdict(served, figures(p99_ms=300.1)) == ("canary p99 300.1 ms exceeds 3.0 times the served "
                                                           "version's 100.0 ms")
    assert RULE.verdict(served, figures(p99_ms=1.0)) is None  # faster: stays
    # a zero baseline: nothing is more than three times nothing but something
    assert RULE.verdict(figures(p99_ms=0.0), figures(p99_ms=0.0)) is None
    assert RULE.verdict(figures(p99_ms=0.0), figures(p99_ms=0.5)) is not None
    # no successful answer on one side (every answer failed): no p99 to compare; the error rule judges
    assert RULE.verdict(figures(p99_ms=None), figures(p99_ms=5000.0)) is None
    assert RULE.verdict(figures(error_rate=1.0, p99_ms=None), figures(p99_ms=5000.0)) is None
    assert "error rate" in RULE.verdict(figures(), figures(error_rate=1.0, p99_ms=None))


def test_too_few_requests_on_either_side_are_not_judged():
    failing = figures(requests=19, error_rate=1.0, p99_ms=10_000.0)
    assert RULE.verdict(figures(requests=100), failing) is None
    assert RULE.verdict(figures(requests=19), figures(error_rate=1.0, p99_ms=10_000.0)) is None
    assert RULE.verdict(figures(requests=0, error_rate=0.0, p99_ms=None), failing) is None
    at_minimum = figures(requests=20, error_rate=1.0, p99_ms=None)
    assert RULE.verdict(figures(requests=20), at_minimum) is not None  # exactly the minimum: judged


def test_both_rules_broken_name_the_error_rate():
    reason = RULE.verdict(figures(), figures(error_rate=0.5, p99_ms=10_000.0))
    assert reason is not None and reason.startswith("canary error rate")


@given(requests=st.integers(20, 2000), data=st.data())
def test_a_canary_exactly_at_the_delta_stays_and_one_more_error_rolls_it_back(requests, data):
    """Error rates as the window counts them (errors / requests), the delta a whole number of requests:
    rounding never decides."""
    allowed = data.draw(st.integers(0, requests - 1), label="errors allowed over the served version")
    served_errors = data.draw(st.integers(0, requests - allowed - 1), label="served errors")
    rule = RollbackRule(20, allowed / requests, 3.0)
    served = figures(requests, served_errors / requests)
    assert rule.verdict(served, figures(requests, (served_errors + allowed) / requests)) is None
    assert rule.verdict(served, figures(requests, (served_errors + allowed + 1) / requests)) is not None


@given(served_ms=st.floats(0.01, 60_000), ratio=st.floats(1.01, 100))
def test_a_canary_exactly_at_the_p99_ratio_stays(served_ms, ratio):
    rule = RollbackRule(20, 0.05, ratio)
    assert rule.verdict(figures(p99_ms=served_ms), figures(p99_ms=ratio * served_ms)) is None
    assert rule.verdict(figures(p99_ms=served_ms), figures(p99_ms=ratio * served_ms * 1.001)) is not None


def window(answers: list[tuple[bool, float]]) -> dict:
    observed = Window(60.0)
    for failed, seconds in answers:
        observed.add(failed, seconds)
    return observed.figures()


def test_the_gateway_judges_its_windows_by_the_rule_with_its_settings():
    settings = Settings(_env_file=None, rollout_min_requests=10, rollout_max_error_rate_delta=0.2,
                        rollout_max_p99_ratio=2.0)
    rollouts = Rollouts(None, settings, Metrics())  # the verdict reads no registry
    served = window([(False, 0.010)] * 10)
    assert rollouts.verdict(served, window([(True, 0.010)] * 2 + [(False, 0.010)] * 8)) is None  # 0.2: at it
    assert "error rate" in rollouts.verdict(served, window([(True, 0.010)] * 3 + [(False, 0.010)] * 7))
    assert rollouts.verdict(served, window([(False, 0.020)] * 10)) is None  # twice as slow: at the ratio
    assert "p99" in rollouts.verdict(served, window([(False, 0.021)] * 10))
    assert rollouts.verdict(served, window([(True, 0.010)] * 9)) is None  # nine: too few to judge
