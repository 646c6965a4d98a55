"""Rollouts in the gateway: the traffic policy of each model applied to its requests, and watched.

- The policy (``contract.traffic``) is read from the registry and kept for
  ``REGISTRY_POLL_SECONDS``, so every replica applies a change within seconds
  and a request never waits on the registry.
- Canary: a request goes to the version holding the policy's alias or to the
  served one, as a whole, by the stable hash of its key. If the canary version
  fails it (a 5xx), the served version answers instead: the caller sees no
  failure, the canary's error is counted.
- Shadow: after the served version's answer is sent, the shadow version scores
  the same rows; its answers are logged under the same prediction ids (role
  ``shadow``) and compared with the served ones (agreement of labels, mean
  absolute difference of probabilities).
- Every answer of a version counts in a window of ``ROLLOUT_WINDOW_SECONDS``:
  requests, errors, latencies. During a canary, with at least
  ``ROLLOUT_MIN_REQUESTS`` requests for each version in the window, the canary
  is rolled back automatically (the policy returns to single, the model gets
  the tags ``rolled_back_at`` and ``rollback_reason``, and
  ``gateway_rollouts_rolled_back_total`` counts it) when its error rate exceeds
  the served version's by more than ``ROLLOUT_MAX_ERROR_RATE_DELTA`` or its p99
  latency exceeds ``ROLLOUT_MAX_P99_RATIO`` times the served version's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.errors import first_line
from contract.model_output import PROBA_PREFIX
from contract.names import TAG_ROLLBACK_REASON, TAG_ROLLED_BACK_AT
from contract.registry import Registry
from contract.settings import Settings
from contract.tables import column_name
from contract.traffic import RollbackRule, TrafficPolicy
from gateway.observability import Metrics
from runtime.supervision import Supervisor
from runtime.tasks import cancel_all

log = logging.getLogger("gateway.rollouts")
MAX_SAMPLES = 20_000  # answers kept per version and model in the window, at most
MAX_MODELS = 1000  # models whose policy is kept
WATCH_NAME = "rollback-watcher"


@dataclass
class Window:
    """The answers of one version of a model in the last ``seconds``: (time, failed, seconds taken)."""

    seconds: float
    answers: deque[tuple[float, bool, float]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))

    def add(self, failed: bool, latency: float) -> None:
        self.answers.append((time.monotonic(), failed, latency))

    def recent(self) -> list[tuple[float, bool, float]]:
        edge = time.monotonic() - self.seconds
        while self.answers and self.answers[0][0] < edge:
            self.answers.popleft()
        return list(self.answers)

    def figures(self) -> dict[str, Any]:
        answers = self.recent()
        latencies = [latency for _, failed, latency in answers if not failed]
        return {"requests": len(answers),
                "error_rate": sum(failed for _, failed, _ in answers) / len(answers) if answers else 0.0,
                "p50_ms": float(np.percentile(latencies, 50) * 1000) if latencies else None,
                "p99_ms": float(np.percentile(latencies, 99) * 1000) if latencies else None}


@dataclass
class ShadowComparison:
    """The shadow version's answers set against the served version's, row by row, in the window."""

    seconds: float
    rows: deque[tuple[float, bool, float]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    # requests the shadow did not answer (still loading, failed): compared rows alone would hide them
    skipped: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))

    def skip(self, reason: str) -> None:
        self.skipped.append((time.monotonic(), reason))

    def add(self, served: list[dict[str, Any]], shadow: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for mine, theirs in zip(served, shadow, strict=False):
            keys = [k for k in mine if k.startswith(PROBA_PREFIX)]
            difference = float(np.mean([abs(mine[k] - theirs.get(k, 0.0)) for k in keys])) if keys else 0.0
            self.rows.append((now, mine.get("label") == theirs.get("label"), difference))

    def figures(self) -> dict[str, Any]:
        edge = time.monotonic() - self.seconds
        for kept in (self.rows, self.skipped):
            while kept and kept[0][0] < edge:
                kept.popleft()
        skipped = {"skipped": len(self.skipped), "last_skip_reason": self.skipped[-1][1] if self.skipped else None}
        if not self.rows:
            return {"rows": 0, "agreement": None, "mean_abs_probability_difference": None, **skipped}
        return {"rows": len(self.rows), "agreement": sum(a for _, a, _ in self.rows) / len(self.rows),
                "mean_abs_probability_difference": sum(d for _, _, d in self.rows) / len(self.rows), **skipped}


def request_key(policy: TrafficPolicy, records: list[dict[str, Any]], request_id: str | None) -> str:
    """What a canary request is routed by: its sticky column's value (the first row's), or its request id."""
    if policy.sticky_key and records:
        wanted = column_name(policy.sticky_key)
        for column, value in records[0].items():
            if column_name(column) == wanted:
                return f"{wanted}={value}"
    return request_id or ""


class Rollouts:
    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics,
                 supervisor: Supervisor | None = None):
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.supervisor = supervisor or Supervisor()
        self._policies: dict[str, tuple[TrafficPolicy, float]] = {}
        self.windows: dict[tuple[str, str], Window] = {}
        self.shadows: dict[str, ShadowComparison] = {}
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    # --- the policy -----------------------------------------------------------------------
    def policy(self, name: str) -> TrafficPolicy:
        """The model's policy as last read; read again in the background once it is older than a poll."""
        known = self._policies.get(name)
        if known is None or time.monotonic() - known[1] > self.settings.registry_poll_seconds:
            self._background(self._refresh(name))
        return known[0] if known else TrafficPolicy()

    async def _refresh(self, name: str) -> None:
        if name in self._refreshing:
            return
        self._refreshing.add(name)
        try:
            policy = await asyncio.to_thread(self.registry.traffic, name)
        except Exception as err:  # noqa: BLE001 (no such model, or the registry is down: the last policy stands)
            log.debug("traffic policy of '%s' not read again, the last one stands: %s", name, first_line(err, 300))
            policy = self._policies.get(name, (TrafficPolicy(), 0.0))[0]
        finally:
            self._refreshing.discard(name)
        if len(self._policies) >= MAX_MODELS and name not in self._policies:
            self._policies.pop(next(iter(self._policies)))
        self._policies[name] = (policy, time.monotonic())

    def set_policy(self, name: str, policy: TrafficPolicy) -> None:
        """A change made through this replica applies here at once."""
        self._policies[name] = (policy, time.monotonic())

    # --- what happened ------------------------------------------------------------------
    def observe(self, name: str, version: str | None, failed: bool, seconds: float) -> None:
        if version is None:
            return
        key = (name, version)
        if key not in self.windows:
            if len(self.windows) >= MAX_MODELS:
                self.windows.pop(next(iter(self.windows)))
            self.windows[key] = Window(self.settings.rollout_window_seconds)
        self.windows[key].add(failed, seconds)

    def compare_shadow(self, name: str, served: list[dict[str, Any]], shadow: list[dict[str, Any]]) -> None:
        self._shadow(name).add(served, shadow)

    def skip_shadow(self, name: str, reason: str) -> None:
        """A request the shadow version did not answer, and why (loading, failing, unreachable)."""
        self._shadow(name).skip(reason)

    def _shadow(self, name: str) -> ShadowComparison:
        return self.shadows.setdefault(name, ShadowComparison(self.settings.rollout_window_seconds))

    def figures(self, name: str, versions: dict[str, str]) -> dict[str, Any]:
        """Per role (served, canary or shadow): the version, its requests, error rate, p50 and p99 in the window."""
        out: dict[str, Any] = {}
        for role, version in versions.items():
            window = self.windows.get((name, version))
            out[role] = {"version": version, **(window.figures() if window else Window(1).figures())}
        if name in self.shadows:
            out["shadow_comparison"] = self.shadows[name].figures()
        return out

    # --- the automatic rollback ---------------------------------------------------------
    def verdict(self, served: dict[str, Any], canary: dict[str, Any]) -> str | None:
        """Why the canary must go, or None (the rule: contract.traffic.RollbackRule)."""
        s = self.settings
        rule = RollbackRule(s.rollout_min_requests, s.rollout_max_error_rate_delta, s.rollout_max_p99_ratio)
        return rule.verdict(served, canary)

    async def watch(self, versions_of: Any) -> None:
        """Every second, roll back each canary whose figures say so. ``versions_of(name)`` -> (served, canary)."""
        while True:
            await asyncio.sleep(1.0)
            await self.check_canaries(versions_of)

    def start_watch(self, versions_of: Any) -> asyncio.Task:
        """The watch as a supervised background task (restarted, counted and named in /ready if it dies)."""
        return self.supervisor.task(WATCH_NAME, lambda: self.watch(versions_of))

    async def check_canaries(self, versions_of: Any) -> None:
        """One round of the watch: each canary checked on its own, so one that cannot be checked (its
        registry entry unreadable) is logged and counted and the others are still rolled back."""
        for name, (policy, _) in list(self._policies.items()):
            if policy.mode != "canary":
                continue
            try:
                served, canary = await versions_of(name, policy.alias)
                if served is None or canary is None or served == canary:
                    continue
                figures = self.figures(name, {"served": served, "canary": canary})
                reason = self.verdict(figures["served"], figures["canary"])
                if reason:
                    await self.roll_back(name, reason)
            except Exception as err:  # noqa: BLE001 (this canary is checked again next round; the others go on)
                self.supervisor.item_failed(WATCH_NAME, f"checking the canary of '{name}'", err)

    async def roll_back(self, name: str, reason: str) -> None:
        def write() -> None:
            # the why first, the switch last: whoever reads the policy back as single also reads the reason
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.registry.client.set_registered_model_tag(name, TAG_ROLLED_BACK_AT, stamp)
            self.registry.client.set_registered_model_tag(name, TAG_ROLLBACK_REASON, reason)
            self.registry.set_traffic(name, TrafficPolicy())

        try:
            await asyncio.to_thread(write)
        except Exception as err:  # noqa: BLE001 (the registry is down: tried again next second)
            log.error("automatic rollback of '%s' failed: %s", name, first_line(err, 300))
            return
        self.set_policy(name, TrafficPolicy())
        self.metrics.rollbacks.labels(self.metrics.labels.model(name)).inc()
        log.warning("canary of '%s' rolled back: %s", name, reason, extra={"model": name, "reason": reason})

    # --- background work ----------------------------------------------------------------
    def _background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # shadow scoring: the answer was sent already
            self.supervisor.item_failed(WATCH_NAME, f"shadow task {task.get_coro().__qualname__}",
                                        task.exception())

    def run_later(self, work: Any) -> None:
        """Work after an answer is sent (shadow scoring), kept until it ends."""
        self._background(work)

    async def close(self) -> None:
        await cancel_all(self._tasks)  # a failure among them was counted by _finished as it ended
