"""The model server's reconcile rule (model_server.follower.next_step), as a pure function."""

from __future__ import annotations

from model_server.follower import Observed, Step, next_step

NONE_HOLDS = "no version of 'm' holds alias 'champion'"


def seen(desired="2", serving="1", alive=True, error=None, backoff=None, now=100.0) -> Observed:
    return Observed(desired, error, serving, alive, backoff, now)


def test_a_promotion_starts_the_new_version():
    assert next_step(seen(), NONE_HOLDS) == Step(start="2")


def test_what_is_served_and_alive_is_left_alone():
    assert next_step(seen(desired="1"), NONE_HOLDS) == Step()


def test_a_dead_backend_of_the_served_version_is_started_again():
    assert next_step(seen(desired="1", alive=False), NONE_HOLDS) == Step(start="1")


def test_nothing_promoted_and_nothing_served_says_why():
    assert next_step(seen(desired=None, serving=None, alive=False), NONE_HOLDS) == Step(reason=NONE_HOLDS)


def test_an_unpromoted_model_keeps_being_served():
    assert next_step(seen(desired=None), NONE_HOLDS) == Step()


def test_a_registry_outage_keeps_serving_and_restarts_a_dead_backend():
    assert next_step(seen(desired=None, error="connection refused"), NONE_HOLDS) == Step()
    assert next_step(seen(desired=None, error="down", alive=False), NONE_HOLDS) == Step(start="1")
    assert next_step(seen(desired=None, serving=None, alive=False, error="down"), NONE_HOLDS) == Step(
        reason="registry unreachable: down")


def test_a_version_that_failed_to_start_waits_out_its_backoff():
    assert next_step(seen(backoff=("2", 130.0)), NONE_HOLDS) == Step()
    assert next_step(seen(backoff=("2", 130.0), now=131.0), NONE_HOLDS) == Step(start="2")
    assert next_step(seen(backoff=("3", 130.0)), NONE_HOLDS) == Step(start="2")  # another version: no wait
