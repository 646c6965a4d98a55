"""Micro-batching: coalescing, order, isolation of a bad caller, size limit."""

from __future__ import annotations

import asyncio

from gateway.batching import Answer, MicroBatcher
from runtime.supervision import Supervisor


class ScoringStub:
    """A scorer that labels each record with its own id, refuses records marked bad, and counts calls."""

    def __init__(self, delay: float = 0.01):
        self.calls: list[int] = []
        self.delay = delay

    async def __call__(self, records):
        self.calls.append(len(records))
        await asyncio.sleep(self.delay)
        if any(r.get("bad") for r in records):
            return Answer(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad row"}, "7")
        return Answer(200, {"predictions": [{"label": r["id"]} for r in records]}, "7")


def run(coro):
    return asyncio.run(coro)


async def with_batcher(scorer, body, **options):
    settings = {"max_rows": 100, "max_wait_ms": 0.0, "concurrency": 1, **options}
    batcher = MicroBatcher(scorer, **settings)
    batcher.start(Supervisor())
    try:
        return await body(batcher)
    finally:
        await batcher.stop()


def test_concurrent_callers_share_calls_and_get_their_own_rows_in_order():
    scorer = ScoringStub()

    async def body(batcher):
        callers = [[{"id": f"{c}-{i}"} for i in range(c % 3 + 1)] for c in range(20)]
        answers = await asyncio.gather(*(batcher.submit(records) for records in callers))
        return callers, answers

    callers, answers = run(with_batcher(scorer, body))
    for records, answer in zip(callers, answers, strict=True):
        assert answer.status == 200 and answer.version == "7"
        assert [p["label"] for p in answer.body["predictions"]] == [r["id"] for r in records]
    assert len(scorer.calls) < 20  # coalesced
    assert sum(scorer.calls) == sum(len(r) for r in callers)


def test_a_bad_caller_does_not_fail_the_others():
    scorer = ScoringStub()

    async def body(batcher):
        callers = [[{"id": "a"}], [{"id": "b", "bad": True}], [{"id": "c"}, {"id": "d"}]]
        return await asyncio.gather(*(batcher.submit(r) for r in [[{"id": "warm"}], *callers]))

    warm, good, bad, good2 = run(with_batcher(scorer, body))
    assert good.status == 200 and good.body["predictions"] == [{"label": "a"}]
    assert bad.status == 400 and bad.body["message"] == "bad row"
    assert good2.status == 200 and [p["label"] for p in good2.body["predictions"]] == ["c", "d"]


def test_batches_never_exceed_the_row_limit():
    scorer = ScoringStub()

    async def body(batcher):
        return await asyncio.gather(*(batcher.submit([{"id": i}, {"id": i}]) for i in range(30)))

    answers = run(with_batcher(scorer, body, max_rows=7))
    assert all(answer.status == 200 for answer in answers)
    assert max(scorer.calls) <= 7 and sum(scorer.calls) == 60


def test_max_wait_holds_a_batch_open_for_latecomers_and_zero_does_not():
    async def body(batcher):
        first = asyncio.create_task(batcher.submit([{"id": 1}]))
        await asyncio.sleep(0.005)
        second = asyncio.create_task(batcher.submit([{"id": 2}]))
        return await asyncio.gather(first, second)

    held = ScoringStub(delay=0)
    run(with_batcher(held, body, max_wait_ms=500))
    assert held.calls == [2]  # the second caller joined the first one's batch
    eager = ScoringStub(delay=0)
    run(with_batcher(eager, body, max_wait_ms=0, concurrency=2))
    assert eager.calls == [1, 1]  # nothing in flight to wait for: each left at once


def test_transport_errors_reach_every_caller_of_the_batch():
    async def broken(records):
        await asyncio.sleep(0.01)
        raise ConnectionError("down")

    async def body(batcher):
        return await asyncio.gather(*(batcher.submit([{"id": i}]) for i in range(5)), return_exceptions=True)

    answers = run(with_batcher(broken, body))
    assert all(isinstance(a, ConnectionError) for a in answers)
