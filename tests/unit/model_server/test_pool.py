"""The pool of loaded versions (model_server.pool), with stand-in backends: loads, drains, unloads."""

from __future__ import annotations

import asyncio

import pytest

from model_server.pool import Failed, Loading, ModelPool


class FakeBackend:
    def __init__(self, name: str, version: str):
        self.name, self.version = name, version
        self.in_flight = 0
        self.last_used = 0.0
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed

    async def close(self) -> None:
        self.closed = True


class Starter:
    def __init__(self, fail: set[str] = frozenset()):
        self.started: list[tuple[str, str]] = []
        self.fail = fail

    async def __call__(self, name: str, version: str) -> FakeBackend:
        self.started.append((name, version))
        await asyncio.sleep(0.01)
        if version in self.fail:
            raise RuntimeError("no such artifact")
        return FakeBackend(name, version)


def pool(start: Starter, max_loaded: int = 4, drain: float = 0.0) -> ModelPool:
    return ModelPool(start, max_loaded=max_loaded, drain_seconds=drain, drain_timeout=1.0)


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_for_one_version_load_it_once():
    async def scenario():
        start = Starter()
        models = pool(start)
        first, second = await asyncio.gather(models.load(("m", "1")), models.load(("m", "1")))
        assert first is second and start.started == [("m", "1")]
    run(scenario())


def test_lookup_answers_loading_then_the_backend():
    async def scenario():
        models = pool(Starter())
        assert models.lookup(("m", "1")) == Loading(("m", "1"))
        await asyncio.sleep(0.05)
        assert isinstance(models.lookup(("m", "1")), FakeBackend)
    run(scenario())


def test_a_failed_load_is_reported_and_not_retried_at_once():
    async def scenario():
        start = Starter(fail={"9"})
        models = pool(start)
        assert models.lookup(("m", "9")) == Loading(("m", "9"))
        await asyncio.sleep(0.05)
        failed = models.lookup(("m", "9"))
        assert isinstance(failed, Failed) and "no such artifact" in failed.reason
        assert start.started == [("m", "9")]  # the second lookup did not start it again
    run(scenario())


def test_the_least_recently_used_unpinned_idle_version_is_unloaded_first():
    async def scenario():
        models = pool(Starter(), max_loaded=2)
        served = await models.load(("m", "1"))
        models.pinned.add(("m", "1"))
        old = await models.load(("m", "2"))
        busy = await models.load(("m", "3"))  # over the limit: 2 goes (1 is pinned)
        assert old.closed and not served.closed and set(models.loaded) == {("m", "1"), ("m", "3")}
        busy.in_flight = 1
        await models.load(("m", "4"))  # nothing idle to unload: over the limit rather than fail
        assert not busy.closed and len(models.loaded) == 3
    run(scenario())


def test_a_retired_version_finishes_its_requests_before_it_stops():
    async def scenario():
        models = pool(Starter(), drain=0.05)
        backend = await models.load(("m", "1"))
        backend.in_flight = 1
        models.retire(backend)
        assert ("m", "1") not in models.loaded
        await asyncio.sleep(0.1)
        assert not backend.closed  # still answering its request
        backend.in_flight = 0
        await asyncio.sleep(0.2)
        assert backend.closed
    run(scenario())


@pytest.mark.parametrize("drain", [0.0, 5.0])
def test_closing_the_pool_stops_every_backend_even_one_draining(drain):
    async def scenario():
        models = pool(Starter(), drain=drain)
        served = await models.load(("m", "2"))
        draining = await models.load(("m", "1"))
        models.retire(draining)
        await asyncio.sleep(0.01)
        await models.close()
        assert served.closed and draining.closed
    run(scenario())


def test_retiring_a_dead_process_does_not_unpin_its_replacement():
    async def scenario():
        models = pool(Starter())
        old = await models.load(("m", "1"))
        await old.close()  # its process died
        new = await models.load(("m", "1"))
        models.pinned.add(("m", "1"))
        models.retire(old)
        assert models.loaded[("m", "1")] is new and ("m", "1") in models.pinned
    run(scenario())
