"""The benchmark's verdicts (bench/run.py: evaluate_targets) on the figures of a real run (a short one, kept in
bench_results.json): each target met or not by its own figure, whatever the others."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench.run import evaluate_targets

RUN = json.loads((Path(__file__).parent / "bench_results.json").read_text())


class Verdicts(dict):
    """Each target's verdict, found by the start of its name."""

    def __getitem__(self, start: str) -> bool:
        (met,) = [met for target, met in self.items() if target.startswith(start)]
        return met


def verdicts(results: dict[str, Any]) -> Verdicts:
    return Verdicts({c["target"]: c["met"] for c in evaluate_targets(results)})


def row(results: dict[str, Any], target: str, scenario: str) -> dict[str, Any]:
    (found,) = [r for r in results["load"] if r["target"] == target and r["scenario"] == scenario]
    return found


def test_every_target_has_a_figure_and_a_verdict():
    checks = evaluate_targets(copy.deepcopy(RUN))
    assert all(isinstance(c["value"], int | float) and c["met"] in (True, False, None) for c in checks)
    assert sum(c["met"] is None for c in checks) == 3  # the CPU at 14 and 200 columns, the ceiling: figures only
    assert len({c["target"] for c in checks}) == len(checks)


@pytest.mark.parametrize(("connections", "factor"), [(16, 5), (64, 4)])
def test_bentoml_is_beaten_only_by_the_factor_asked_at_each_load(connections, factor):
    results = copy.deepcopy(RUN)
    gateway = row(results, "c", f"1 row, c={connections}")
    bento = row(results, "e", f"1 row, c={connections}")
    name = f"c={connections}: gateway >= {factor}x BentoML throughput (same run, in turn)"
    gateway["rps"], bento["rps"] = 1000.0, 1000.0 / factor
    assert verdicts(results)[name]
    bento["rps"] = 1000.0 / (factor - 0.01)
    assert not verdicts(results)[name]


def test_the_inference_log_may_cost_five_percent_and_no_more():
    results = copy.deepcopy(RUN)
    on, off = row(results, "c", "log cost, 1 row(s), c=16"), row(results, "d", "log cost, 1 row(s), c=16")
    name = "inference log"
    off["rps"], on["rps"] = 1000.0, 950.0
    assert verdicts(results)[name]
    on["rps"] = 949.0
    assert not verdicts(results)[name]


def test_the_slowest_first_answer_counts():
    results = copy.deepcopy(RUN)
    name = "a version's first answer <= 2 s after it becomes a target"
    results["first_answer"].update(seconds=[0.9, 1.9, 1.0], max_s=1.9)
    assert verdicts(results)[name]
    results["first_answer"].update(seconds=[0.9, 2.1, 1.0], max_s=2.1)
    assert not verdicts(results)[name]


def test_wide_rows_are_held_to_the_p99_and_the_cpu_at_41_columns():
    results = copy.deepcopy(RUN)
    wide, census = row(results, "w200", "200 columns, 1 row, c=64"), row(results, "w41", "41 columns, 1 row, c=64")
    wide["p99_ms"], census["cpu_ms_per_request"] = 49.9, 0.35
    checks = {c["target"]: c["met"] for c in evaluate_targets(results)}
    assert checks["41 columns: gateway CPU ms a request (1 row, c=64) <= 0.35"]
    census["cpu_ms_per_request"] = 0.36
    wide["p99_ms"] = 50.0
    checks = {c["target"]: c["met"] for c in evaluate_targets(results)}
    assert not checks["41 columns: gateway CPU ms a request (1 row, c=64) <= 0.35"]
    assert not checks["200 columns: gateway p99 < 50 ms (1 row, c=64)"]


def test_a_failed_request_anywhere_is_a_target_missed():
    results = copy.deepcopy(RUN)
    for r in results["load"]:
        r["errors"] = 0
    assert verdicts(results)["no failed request under load"]
    row(results, "c", "1 row, c=64")["errors"] = 1
    assert not verdicts(results)["no failed request under load"]


def test_the_gateways_server_changes_only_for_a_quarter_more():
    results = copy.deepcopy(RUN)
    name = "granian / uvicorn, gateway single rows (c=64)"
    results["servers"]["switch_warranted"] = True
    assert not verdicts(results)[name]
    results["servers"]["switch_warranted"] = False
    assert verdicts(results)[name]


def test_missing_rollout_figures_are_a_target_missed():
    results = copy.deepcopy(RUN)
    results["load"] = [r for r in results["load"] if not r["target"].startswith("traffic")]
    assert not verdicts(results)["canary and shadow: measured"]
