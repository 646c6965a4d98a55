"""The supervision of background loops (runtime.supervision): a loop that dies is logged, counted, shown and
restarted with a backoff; one item's failure is logged and counted and the loop goes on."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from runtime.supervision import RESTARTING, RUNNING, STOPPED, Supervisor


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_thread_loop_that_dies_is_logged_counted_shown_and_restarted(caplog):
    supervisor = Supervisor(first_backoff=0.01)
    stop = threading.Event()
    runs = []

    def loop() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("the store vanished")
        stop.wait()  # the second run lives until stopped

    with caplog.at_level(logging.ERROR, "runtime.supervision"):
        thread = supervisor.thread("job-runner", loop, stop)
        wait_until(lambda: len(runs) == 2)
    state = supervisor.report()["job-runner"]
    assert state["state"] == RUNNING and state["restarts"] == 1
    assert state["last_error"] == "ValueError: the store vanished"
    died = [r for r in caplog.records if "job-runner died" in r.getMessage()]
    assert died and died[0].exc_info and "the store vanished" in str(died[0].exc_info[1])  # with its traceback
    assert supervisor.troubled() == {"job-runner": state}
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and supervisor.report()["job-runner"]["state"] == STOPPED


def test_a_thread_loop_that_returns_unasked_is_restarted_and_one_that_was_stopped_is_not():
    supervisor = Supervisor(first_backoff=0.01)
    stop = threading.Event()
    runs = []

    def loop() -> None:
        runs.append(1)
        if len(runs) == 3:
            stop.set()

    supervisor.thread("schedule", loop, stop).join(5)
    assert len(runs) == 3  # returned twice without being stopped: each a death
    assert supervisor.report()["schedule"]["restarts"] == 2
    assert "returned without being stopped" in supervisor.report()["schedule"]["last_error"]
    assert supervisor.report()["schedule"]["state"] == STOPPED


def test_a_task_loop_that_dies_is_restarted_until_cancelled():
    supervisor = Supervisor(first_backoff=0.01)
    runs = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise KeyError("policy")
        await asyncio.sleep(3600)

    async def scenario() -> None:
        task = supervisor.task("rollback-watcher", loop)
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(runs) == 3:
                break
        assert supervisor.report()["rollback-watcher"] | {"last_died_at": None} == {
            "state": RUNNING, "restarts": 2, "items_failed": 0, "last_error": "KeyError: 'policy'",
            "last_died_at": None}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert supervisor.report()["rollback-watcher"]["state"] == STOPPED


def test_the_backoff_doubles_while_a_loop_dies_young_and_starts_over_after_a_healthy_run():
    supervisor = Supervisor(first_backoff=1.0, max_backoff=5.0, healthy_after=60.0)
    assert [supervisor._backoff(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    state = supervisor._started("loop")
    quick = supervisor._died(state, RuntimeError("a"), 0)
    quick = supervisor._died(state, RuntimeError("b"), quick)
    assert quick == 2 and supervisor.report()["loop"]["state"] == RESTARTING
    state.started_at = time.monotonic() - 120  # the next run lived two minutes before dying
    assert supervisor._died(state, RuntimeError("c"), quick) == 1
    report = supervisor.report()["loop"]
    assert report["restarts"] == 3 and report["last_error"] == "RuntimeError: c"


def test_an_item_failure_is_logged_with_its_traceback_and_counted_and_the_loop_is_not_troubled(caplog):
    supervisor = Supervisor()
    supervisor._started("inference-log")
    try:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    except UnicodeDecodeError as err:
        with caplog.at_level(logging.WARNING, "runtime.supervision"):
            supervisor.item_failed("inference-log", "request r-1", err)
    assert supervisor.report()["inference-log"]["items_failed"] == 1
    record = caplog.records[-1]
    assert "request r-1" in record.getMessage() and "invalid start byte" in record.getMessage()
    assert record.exc_info is not None and record.item == "request r-1"
    assert supervisor.troubled() == {}  # a failed item is not a dead loop
