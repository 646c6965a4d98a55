"""The loaded versions, keyed by (model name, version): loading, draining, unloading.

A version is loaded once, whoever asks: the registry follower for the version
it serves, or a request naming a version. Versions the follower serves are
pinned; the others are unloaded, least recently used first, when more than
``MODEL_SERVER_MAX_LOADED`` would be loaded. A version taken out of service
keeps answering the requests it has (``MODEL_SERVER_DRAIN_SECONDS``, then
until none is in flight) before its process is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from model_server.backends import Backend
from runtime.tasks import cancel_all

log = logging.getLogger("model_server")
Key = tuple[str, str]  # (model name, version)
# After a version failed to load, requests for it are refused this long before it is tried again.
RETRY_AFTER_FAILURE_SECONDS = 30.0


@dataclass(frozen=True)
class Loading:
    """A version is being loaded: come back later."""

    key: Key


@dataclass(frozen=True)
class Failed:
    """The last attempt to load a version failed, and why."""

    key: Key
    reason: str
    until: float


class ModelPool:
    def __init__(self, start: Callable[[str, str], Awaitable[Backend]], max_loaded: int, drain_seconds: float,
                 drain_timeout: float):
        self._start = start
        self.max_loaded = max_loaded
        self.drain_seconds = drain_seconds
        self.drain_timeout = drain_timeout
        self.loaded: dict[Key, Backend] = {}
        self.pinned: set[Key] = set()
        self._loading: dict[Key, asyncio.Task[Backend]] = {}
        self._failed: dict[Key, Failed] = {}
        self.draining: set[Backend] = set()
        self._tasks: set[asyncio.Task] = set()  # background work, kept so it is not collected mid-way
        self.on_unload: Callable[[Backend], None] = lambda backend: None  # told of each version unloaded

    def lookup(self, key: Key) -> Backend | Loading | Failed:
        """The backend of ``key`` if it serves; otherwise start loading it (unless it failed lately)."""
        backend = self.loaded.get(key)
        if backend is not None and backend.alive:
            backend.last_used = time.monotonic()
            return backend
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() < failed.until:
            return failed
        self.background(self.load(key))
        return Loading(key)

    async def load(self, key: Key) -> Backend:
        """The backend of ``key``, loading it if needed (one load per key however many ask)."""
        backend = self.loaded.get(key)
        if backend is not None and backend.alive:
            return backend
        if backend is not None:  # its process died: start a new one
            log.warning("the backend of %s version %s died; starting it again", *key)
            self.loaded.pop(key)
            await backend.close()
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key))
            self._loading[key] = task
        return await asyncio.shield(task)

    async def _load(self, key: Key) -> Backend:
        try:
            await self._make_room()
            log.info("loading %s version %s", *key)
            backend = await self._start(*key)
        except Exception as err:
            self._failed[key] = Failed(key, f"cannot serve version {key[1]} of '{key[0]}': {err}",
                                       time.monotonic() + RETRY_AFTER_FAILURE_SECONDS)
            raise
        finally:
            self._loading.pop(key, None)
        self._failed.pop(key, None)
        self.loaded[key] = backend
        return backend

    def failure(self, key: Key) -> Failed | None:
        return self._failed.get(key)

    async def _make_room(self) -> None:
        """Unload unpinned versions, least recently used first, until one more fits."""
        while len(self.loaded) + len(self._loading) > self.max_loaded:
            idle = [b for k, b in self.loaded.items() if k not in self.pinned and not b.in_flight]
            if not idle:
                return  # everything loaded is in use: go over the limit rather than fail a request
            oldest = min(idle, key=lambda b: b.last_used)
            log.info("unloading %s version %s (least recently used)", oldest.name, oldest.version)
            self.loaded.pop((oldest.name, oldest.version))
            self.on_unload(oldest)
            await oldest.close()

    def retire(self, backend: Backend) -> None:
        """Take ``backend`` out of the pool; stop it once its requests are done."""
        key = (backend.name, backend.version)
        if self.loaded.get(key) is backend:  # not when a new process of the same version replaced it
            self.loaded.pop(key)
            self.pinned.discard(key)
        self.background(self._drain(backend))

    async def _drain(self, backend: Backend) -> None:
        self.draining.add(backend)
        try:
            await asyncio.sleep(self.drain_seconds)
            deadline = time.monotonic() + self.drain_timeout
            while backend.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await backend.close()
        finally:
            self.draining.discard(backend)

    def background(self, work: Awaitable) -> None:
        """Run ``work`` in the background, for as long as the pool lives."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background load failed: %s", task.exception())

    async def close(self) -> None:
        # taken before the tasks are cancelled: a cancelled drain forgets its backend on the way out
        backends = [*self.loaded.values(), *self.draining]
        for err in await cancel_all([*self._tasks, *self._loading.values()]):
            log.warning("a task of the pool failed while it closed: %s", err)
        for backend in [*backends, *self.loaded.values()]:  # and any load that finished meanwhile
            await backend.close()
        self.loaded.clear()
