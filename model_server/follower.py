"""Which version each model serves: the registry followed, one reconcile step at a time.

The follower follows (model, alias) pairs: the default model under the serving
policy (``SERVE_ALIAS``, or the newest version in ``SERVE_STAGE``) from the
start, and any other pair from its first request on. Every
``REGISTRY_POLL_SECONDS`` it asks the registry which version each pair names
and moves towards it: the new version is loaded beside the old one, requests
switch to it, and the old one drains. :func:`next_step` is the rule as a pure
function. A pair whose version the pool unloads (least recently used) is no
longer followed until it is asked for again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from contract.errors import first_line
from contract.registry import NotFound
from model_server.backends import Backend
from model_server.pool import ModelPool
from runtime.supervision import Supervisor

log = logging.getLogger("model_server")
# After a version failed to start, the follower waits this long before trying it again.
BACKOFF_SECONDS = 30.0
# A pair is (model name, alias); alias None means the serving policy (SERVE_ALIAS or SERVE_STAGE).
Pair = tuple[str, str | None]
LOOP_NAME = "registry-follower"


@dataclass(frozen=True)
class Observed:
    """What one reconcile step sees of a model."""

    desired: str | None  # what the registry says to serve; None: nothing holds the alias/stage
    lookup_error: str | None  # the registry could not be asked
    serving: str | None  # what is served now
    serving_alive: bool
    backoff: tuple[str, float] | None  # (version that failed to start, until when)
    now: float


@dataclass(frozen=True)
class Step:
    start: str | None = None  # the version to load and switch to; None: nothing to do
    reason: str | None = None  # why nothing is served, when that is the case


def next_step(seen: Observed, nothing_promoted: str) -> Step:
    """The one rule: what to do next, given what the registry says and what is served."""
    desired = seen.desired
    if seen.lookup_error is not None:
        if seen.serving is None:
            return Step(reason=f"registry unreachable: {seen.lookup_error}")
        desired = seen.serving  # keep serving what we serve (and start it again if it died)
    if desired is None:
        # an un-promoted model keeps being served until something else is promoted
        return Step(reason=None if seen.serving else nothing_promoted)
    if seen.serving == desired and seen.serving_alive:
        return Step()
    if seen.backoff and seen.backoff[0] == desired and seen.now < seen.backoff[1]:
        return Step()
    return Step(start=desired)


@dataclass
class Followed:
    """The state of one followed (model, alias) pair."""

    name: str
    alias: str | None
    backend: Backend | None = None
    reason: str = "starting: no version looked up yet"
    switched_at: float | None = None
    backoff: tuple[str, float] | None = None
    missing: bool = False  # the registry has no such model (or no such alias)

    @property
    def serving(self) -> bool:
        return self.backend is not None and self.backend.alive

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "alias": self.alias, "status": "serving" if self.serving else "unavailable",
                "version": self.backend.version if self.serving else None,
                "reason": None if self.serving else self.reason, "switched_at": self.switched_at}


class RegistryFollower:
    def __init__(self, pool: ModelPool, desired_version: Callable[[str, str | None], str | None],
                 serving: str, poll_seconds: float, default: Pair, supervisor: Supervisor | None = None):
        self.pool = pool
        self.supervisor = supervisor or Supervisor()
        # blocking registry call, run in a thread: (name, alias) -> version or None; NotFound if no model
        self.desired_version = desired_version
        self.serving = serving  # the serving policy in words, e.g. "alias 'champion'"
        self.poll_seconds = poll_seconds
        self.default = default
        self.pairs: dict[Pair, Followed] = {}
        # one step at a time a pair: the poll and a request or the gateway's word may start one together, and
        # two would load and retire the same versions twice
        self._steps: dict[Pair, asyncio.Lock] = {}
        pool.on_unload = self._unloaded

    def follow(self, pair: Pair) -> Followed:
        if pair not in self.pairs:
            self.pairs[pair] = Followed(*pair)
        return self.pairs[pair]

    def followed(self, pair: Pair) -> Followed | None:
        return self.pairs.get(pair)

    async def reconcile(self, pair: Pair) -> None:
        """One step towards serving what the registry says for ``pair``."""
        async with self._steps.setdefault(pair, asyncio.Lock()):
            await self._reconcile(pair)

    async def _reconcile(self, pair: Pair) -> None:
        model = self.follow(pair)
        name, alias = pair
        desired, error = None, None
        try:
            desired = await asyncio.to_thread(self.desired_version, name, alias)
            model.missing = False
        except NotFound as err:
            model.missing = True
            model.reason = str(err)
            if pair != self.default:
                return
        except Exception as err:  # noqa: BLE001 (registry unreachable: keep serving what we serve)
            error = first_line(err, 200)
            log.warning("registry unreachable: %s", error)
        if alias is not None and desired is None and error is None and not model.missing:
            model.missing = True  # an alias asked for by name that no version holds
        seen = Observed(desired, error, model.backend.version if model.backend else None,
                        model.serving, model.backoff, time.monotonic())
        holds = self.serving if alias is None else f"alias '{alias}'"
        step = next_step(seen, f"no version of '{name}' holds {holds}")
        if error is not None and model.backend is not None:
            model.reason = f"registry unreachable: {error}"
        if step.reason is not None:
            model.reason = step.reason
        if step.start is not None:
            await self._switch(model, step.start)

    async def _switch(self, model: Followed, version: str) -> None:
        old = model.backend
        if old is not None and not old.alive:
            log.warning("the backend of %s version %s died; restarting it", model.name, old.version)
            model.reason = f"the backend of version {old.version} died; restarting it"
            model.backend = None
        elif old is None:
            model.reason = f"loading version {version} of '{model.name}'"
        try:
            backend = await self.pool.load((model.name, version))
        except Exception as err:  # noqa: BLE001 (reported on /status; tried again after the backoff)
            model.backoff = (version, time.monotonic() + BACKOFF_SECONDS)
            model.reason = f"cannot serve version {version} of '{model.name}': {first_line(err, 300)}"
            log.error(model.reason)
            return
        model.backoff = None
        if (model.name, model.alias) == self.default:
            self.pool.pinned.add((model.name, version))  # what /invocations serves is never unloaded
        model.backend, model.switched_at = backend, time.time()
        log.info("serving %s version %s%s", model.name, version, f" (alias {model.alias})" if model.alias else "")
        if old is not None and old is not backend and not self._uses(old):
            self.pool.retire(old)

    def _uses(self, backend: Backend) -> bool:
        return any(f.backend is backend for f in self.pairs.values())

    def _unloaded(self, backend: Backend) -> None:
        """The pool unloaded ``backend`` to make room: stop following the pairs it served."""
        for pair, followed in list(self.pairs.items()):
            if followed.backend is backend and pair != self.default:
                del self.pairs[pair]

    async def run(self) -> None:
        while True:
            await self.reconcile_all()
            await asyncio.sleep(self.poll_seconds)

    async def reconcile_all(self) -> None:
        """One round over every followed pair: a pair whose step raises keeps what it serves, says why on
        /status, and is tried again next round; the other pairs still move."""
        for pair in list(self.pairs):
            try:
                await self.reconcile(pair)
            except Exception as err:  # noqa: BLE001 (this pair waits for the next round; the others go on)
                followed = self.pairs.get(pair)
                if followed is not None and not followed.serving:
                    followed.reason = f"following the registry failed: {type(err).__name__}: {first_line(err, 300)}"
                self.supervisor.item_failed(LOOP_NAME, f"following {pair[0]} ({pair[1] or 'serving policy'})", err)
