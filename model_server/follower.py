"""Which version each model serves: the registry followed, one reconcile step at a time.

Every ``REGISTRY_POLL_SECONDS`` the follower asks the registry which version
holds the serving alias (or is newest in the serving stage) and moves towards
it: the new version is loaded beside the old one, requests switch to it, and
the old one drains. :func:`next_step` is the rule as a pure function.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from contract.errors import first_line
from model_server.backends import Backend
from model_server.pool import ModelPool

log = logging.getLogger("model_server")
# After a version failed to start, the follower waits this long before trying it again.
BACKOFF_SECONDS = 30.0


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
    """The state of one followed model."""

    name: str
    backend: Backend | None = None
    reason: str = "starting: no version looked up yet"
    switched_at: float | None = None
    backoff: tuple[str, float] | None = None

    @property
    def serving(self) -> bool:
        return self.backend is not None and self.backend.alive


class RegistryFollower:
    def __init__(self, pool: ModelPool, desired_version: Callable[[str], str | None], following: str,
                 poll_seconds: float):
        self.pool = pool
        self.desired_version = desired_version  # blocking registry call: run in a thread
        self.following = following  # e.g. "alias 'champion'", for messages
        self.poll_seconds = poll_seconds
        self.models: dict[str, Followed] = {}

    def follow(self, name: str) -> Followed:
        if name not in self.models:
            self.models[name] = Followed(name)
        return self.models[name]

    async def reconcile(self, name: str) -> None:
        """One step towards serving what the registry says for ``name``."""
        model = self.follow(name)
        desired, error = None, None
        try:
            desired = await asyncio.to_thread(self.desired_version, name)
        except Exception as err:  # noqa: BLE001 (registry unreachable: keep serving what we serve)
            error = first_line(err, 200)
            log.warning("registry unreachable: %s", error)
        seen = Observed(desired, error, model.backend.version if model.backend else None,
                        model.serving, model.backoff, time.monotonic())
        step = next_step(seen, f"no version of '{name}' holds {self.following}")
        if error is not None and model.backend is not None:
            model.reason = f"registry unreachable: {error}"
        if step.reason is not None:
            model.reason = step.reason
        if step.start is None:
            return
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
        self.pool.pinned.add((model.name, version))
        model.backend, model.switched_at = backend, time.time()
        log.info("serving %s version %s", model.name, version)
        if old is not None and old is not backend:
            self.pool.retire(old)

    async def run(self) -> None:
        while True:
            for name in list(self.models):
                await self.reconcile(name)
            await asyncio.sleep(self.poll_seconds)
