"""How a model's requests are shared between its versions: the traffic policy, kept in the registry.

One policy per registered model, stored as its tag ``traffic_policy`` (JSON), so
every gateway replica, and a restarted one, applies the same:

- ``single``: the serving alias answers everything (the default);
- ``canary``: ``percent`` of the requests answer from the version holding
  ``alias``; a request goes one way as a whole (never split), chosen by a
  stable hash of its ``sticky_key`` column's value (the first row's) or, without
  one, of its request id, so the same key lands on the same version on every
  replica and after restarts;
- ``shadow``: the serving alias answers; the version holding ``alias`` scores the
  same rows after the answer is sent, and its answers are logged, not returned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from contract.names import CHALLENGER_ALIAS

TAG_TRAFFIC = "traffic_policy"
DEFAULT_CANARY_PERCENT = 10.0
Mode = Literal["single", "canary", "shadow"]


@dataclass(frozen=True)
class TrafficPolicy:
    mode: Mode = "single"
    alias: str | None = None
    percent: float | None = None
    sticky_key: str | None = None

    @classmethod
    def canary_default(cls) -> TrafficPolicy:
        return cls("canary", CHALLENGER_ALIAS, DEFAULT_CANARY_PERCENT)

    def problems(self, serving_alias: str) -> list[tuple[str, str]]:
        """(field, what is wrong) for a policy a user asked for; empty when it is sound."""
        found = []
        if self.mode == "single":
            extra = [k for k in ("alias", "percent", "sticky_key") if getattr(self, k) is not None]
            found += [(k, "only for mode canary or shadow") for k in extra]
            return found
        if not self.alias:
            found.append(("alias", f"mode {self.mode} needs the alias of the version to try"))
        elif self.alias == serving_alias:
            found.append(("alias", f"'{serving_alias}' is the serving alias: name the version to try beside it"))
        if self.mode == "canary" and (self.percent is None or not 0 < self.percent < 100):
            found.append(("percent", "mode canary needs a share of requests above 0 and below 100"))
        if self.mode == "shadow":
            found += [(k, "only for mode canary") for k in ("percent", "sticky_key") if getattr(self, k) is not None]
        return found

    def to_tag(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)

    @classmethod
    def from_tag(cls, text: str | None) -> TrafficPolicy:
        """The policy a tag holds; a missing or unreadable tag is ``single`` (serving is never stopped by it)."""
        if not text:
            return cls()
        try:
            data: dict[str, Any] = json.loads(text)
            policy = cls(**data)
        except (ValueError, TypeError):
            return cls()
        return policy if policy.mode in ("single", "canary", "shadow") else cls()


def share(key: str) -> float:
    """A stable place of ``key`` in [0, 100): the same on every machine and in every process."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def to_canary(policy: TrafficPolicy, key: str) -> bool:
    """Whether a request keyed ``key`` goes to the canary version."""
    return policy.mode == "canary" and policy.percent is not None and share(key) < policy.percent


# The figures are ratios and percentiles in binary floating point, where 7/20 + 0.05 < 8/20: a canary exactly
# at a threshold must not be rolled back by a rounding error.
ROUNDING = 1e-9


@dataclass(frozen=True)
class RollbackRule:
    """When a canary is rolled back (settings ``ROLLOUT_MIN_REQUESTS``, ``ROLLOUT_MAX_ERROR_RATE_DELTA``,
    ``ROLLOUT_MAX_P99_RATIO``)."""

    min_requests: int
    max_error_rate_delta: float
    max_p99_ratio: float

    def verdict(self, served: Mapping[str, Any], canary: Mapping[str, Any]) -> str | None:
        """Why the canary must go, or None. ``served``, ``canary``: a version's figures in the window
        (``requests``, ``error_rate``, ``p99_ms``, None when no answer succeeded). Fewer than
        ``min_requests`` for either version: too few to judge. The error rate is the stronger reason and
        is named first; a p99 is compared only when both versions have one."""
        if min(served["requests"], canary["requests"]) < self.min_requests:
            return None
        if canary["error_rate"] - served["error_rate"] > self.max_error_rate_delta + ROUNDING:
            return (f"canary error rate {canary['error_rate']:.3f} exceeds the served version's "
                    f"{served['error_rate']:.3f} by more than {self.max_error_rate_delta}")
        slow = (canary["p99_ms"] is not None and served["p99_ms"] is not None
                and canary["p99_ms"] > self.max_p99_ratio * served["p99_ms"] * (1 + ROUNDING))
        if slow:
            return (f"canary p99 {canary['p99_ms']:.1f} ms exceeds {self.max_p99_ratio} times the served "
                    f"version's {served['p99_ms']:.1f} ms")
        return None
