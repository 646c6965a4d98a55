"""Prometheus collectors both deployables export: their background loops (runtime/supervision.py), read at
scrape time, under each service's own metric prefix."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class SupervisionCollector(Collector):
    """A service's background loops: restarts after a death, items failed and set aside, and whether each runs
    now (``<prefix>_background_loop_restarts``, ``_items_failed``, ``_loop_up``, by loop)."""

    def __init__(self, report: Callable[[], dict[str, dict[str, Any]]], prefix: str = "gateway"):
        self._report = report
        self._prefix = prefix

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        p = self._prefix
        restarts = CounterMetricFamily(f"{p}_background_loop_restarts", "Background loops that died (logged "
                                       "with their traceback) and were restarted, by loop", labels=["loop"])
        failed = CounterMetricFamily(f"{p}_background_items_failed", "Items a background loop failed or set "
                                     "aside and went on (a job, a log entry, a rollout check, a version to "
                                     "follow), by loop", labels=["loop"])
        up = GaugeMetricFamily(f"{p}_background_loop_up", "1 while a background loop runs, 0 while it waits "
                               "to be restarted or is stopped, by loop", labels=["loop"])
        for loop, state in self._report().items():
            restarts.add_metric([loop], state["restarts"])
            failed.add_metric([loop], state["items_failed"])
            up.add_metric([loop], 1 if state["state"] == "running" else 0)
        yield from (restarts, failed, up)


class LoadedVersionsCollector(Collector):
    """The model server's versions, read at scrape time: each loaded one (``model_server_loaded_model_info``),
    its calls in flight, and whether a warm spare worker waits for the next load."""

    def __init__(self, loaded: Callable[[], Iterable[dict[str, Any]]], spare: Callable[[], int | None]):
        self._loaded = loaded
        self._spare = spare

    def collect(self) -> Iterable[GaugeMetricFamily]:
        info = GaugeMetricFamily("model_server_loaded_model_info", "1 for each version loaded, by model name and "
                                 "version", labels=["name", "version"])
        in_flight = GaugeMetricFamily("model_server_in_flight", "Calls being answered, by model name and version",
                                      labels=["name", "version"])
        for backend in self._loaded():
            labels = [str(backend["name"]), str(backend["version"])]
            info.add_metric(labels, 1)
            in_flight.add_metric(labels, backend["in_flight"])
        spare = GaugeMetricFamily("model_server_spare_worker", "1 while a warm spare worker waits for a load")
        spare.add_metric([], 1 if self._spare() else 0)
        yield from (info, in_flight, spare)
