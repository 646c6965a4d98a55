"""The registry follower under faults: one followed model whose step raises does not stop the others, and the
follower loop that dies anyway is restarted and shown on /status (with stand-in backends, as test_pool)."""

from __future__ import annotations

import asyncio
import logging

from contract.settings import Settings
from model_server.app import ModelServer
from model_server.follower import Pair, RegistryFollower
from tests.unit.model_server.test_pool import Starter, pool

DEFAULT: Pair = ("a", None)
PAIRS: list[Pair] = [DEFAULT, ("b", "champion"), ("c", "champion")]


def follower(desired) -> RegistryFollower:
    follows = RegistryFollower(pool(Starter()), desired, "alias 'champion'", 60.0, DEFAULT)
    for pair in PAIRS:
        follows.follow(pair)
    return follows


def serving(follows: RegistryFollower) -> dict[str, str | None]:
    return {f.name: f.backend.version if f.serving else None for f in follows.pairs.values()}


def test_a_model_whose_lookup_raises_says_why_and_the_next_model_is_served(caplog):
    def desired(name: str, alias: str | None) -> str:
        if name == "b":
            raise ConnectionError("registry answered garbage for 'b'")
        return "1"

    follows = follower(desired)
    with caplog.at_level(logging.WARNING):
        asyncio.run(follows.reconcile_all())
    assert serving(follows) == {"a": "1", "b": None, "c": "1"}
    assert "garbage" in follows.pairs[("b", "champion")].reason
    assert any("garbage" in r.getMessage() for r in caplog.records)


class Faulty(RegistryFollower):
    """One pair's reconcile step raises past its own handling (a bug in one step, say)."""

    async def reconcile(self, pair: Pair) -> None:
        if pair[0] == "b":
            raise TypeError("'NoneType' object is not subscriptable")
        await super().reconcile(pair)


def test_a_model_whose_step_raises_is_counted_and_the_round_goes_on_to_the_next(caplog):
    follows = Faulty(pool(Starter()), lambda name, alias: "2", "alias 'champion'", 60.0, DEFAULT)
    for pair in PAIRS:
        follows.follow(pair)
    with caplog.at_level(logging.WARNING):
        asyncio.run(follows.reconcile_all())
    assert serving(follows) == {"a": "2", "b": None, "c": "2"}
    assert "TypeError" in follows.pairs[("b", "champion")].reason  # /status says why b is not served
    assert follows.supervisor.report()["registry-follower"]["items_failed"] == 1
    assert any("following b" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_follower_loop_that_dies_is_restarted_and_shown_on_status(tmp_path):
    settings = Settings(_env_file=None, stack_dir=tmp_path, mlflow_tracking_uri="http://127.0.0.1:9")
    deaths = []

    async def dies_once() -> None:
        deaths.append(1)
        if len(deaths) == 1:
            raise RuntimeError("the follower tripped")
        await asyncio.sleep(3600)

    async def no_rollouts() -> None:
        pass

    async def scenario() -> dict:
        server = ModelServer(settings)
        server.supervisor.first_backoff = 0.01
        server.follower.run = dies_once  # the loop, not the registry, fails
        server.launcher.keep_spare = lambda: None  # neither a spare process nor the rollouts' registry lookup:
        server.follow_rollouts = no_rollouts  # beside the loop, and with no registry here they only wait
        task = asyncio.create_task(server.run())
        try:
            for _ in range(500):
                await asyncio.sleep(0.01)
                if len(deaths) == 2:
                    break
            return server.status()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.close()

    status = asyncio.run(scenario())
    loop = status["background"]["registry-follower"]
    assert loop["state"] == "running" and loop["restarts"] == 1
    assert loop["last_error"] == "RuntimeError: the follower tripped"


def test_steps_of_one_pair_taken_together_load_the_new_version_and_retire_the_old_once():
    """The registry poll and the gateway's word (POST /models/{name}/follow) may start a step of one pair at
    the same moment: one promotion must not be carried out twice."""
    async def scenario() -> None:
        start, desired, retired = Starter(), {"version": "1"}, []
        models = pool(start)
        follows = RegistryFollower(models, lambda name, alias: desired["version"], "alias 'champion'", 60.0, DEFAULT)
        await follows.reconcile(DEFAULT)
        retire = models.retire
        models.retire = lambda backend: (retired.append(backend.version), retire(backend))
        desired["version"] = "2"
        await asyncio.gather(follows.reconcile(DEFAULT), follows.reconcile(DEFAULT))
        assert follows.pairs[DEFAULT].backend.version == "2" and retired == ["1"]
        assert start.started == [("a", "1"), ("a", "2")]

    asyncio.run(scenario())
