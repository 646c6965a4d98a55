"""The ceiling app (the gateway's request path without its work), the servers' commands, the switch rule,
and stopping a served app's whole process group."""

from __future__ import annotations

import asyncio
import importlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.ceiling import SERVERS, Served, command, median_ratio, switch_warranted
from bench.ceiling_app import CEILING_ANSWER, CEILING_PATH, create_ceiling_app
from contract.settings import Settings
from runtime.processes import pid_alive


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_ceiling_answers_its_constant_through_the_gateways_middleware_and_error_handlers():
    app = create_ceiling_app(Settings(max_body_bytes=1024, access_log=False))
    answer = call(app, "POST", CEILING_PATH, content=b'{"records": [{"age": "9"}]}')
    assert answer.status_code == 200 and answer.content == CEILING_ANSWER
    assert answer.headers["content-type"] == "application/json"
    assert len(answer.headers["x-request-id"]) == 32  # the gateway's RequestContext made it
    too_big = call(app, "POST", CEILING_PATH, content=b"x" * 1025)
    assert too_big.status_code == 413 and "1024" in too_big.json()["detail"]
    wrong_method = call(app, "GET", CEILING_PATH)  # the gateway's own 405 (it names what is allowed)
    assert wrong_method.status_code == 405 and wrong_method.json()["detail"].endswith("allowed: POST")
    counted = app.state.metrics.registry.get_sample_value(
        "gateway_requests_total", {"method": "POST", "route": CEILING_PATH, "status": "200"})
    assert counted == 1


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("app", ["ceiling", "gateway"])
def test_each_server_serves_each_app_from_code_that_exists(server, app):
    line = command(server, app, 19999)
    assert line[:2] == [sys.executable, "-m"]
    if server == "uvicorn":  # as `python -m gateway` starts: the gateway's own entry point, its port from the env
        assert line[2] == {"ceiling": "bench.ceiling_app", "gateway": "gateway"}[app]
        assert importlib.util.find_spec(line[2]) is not None
        return
    # the ASGI interface with lifespan (asginl has none: the gateway's clients, loops and log writer start there)
    assert line[line.index("--interface") + 1] == "asgi" and line[line.index("--port") + 1] == "19999"
    assert line[line.index("--workers") + 1] == "1"  # the micro-batcher and admission counts are per process
    module, _, factory = line[line.index("--factory") + 1].partition(":")
    assert callable(getattr(importlib.import_module(module), factory))


def test_an_unknown_server_is_refused_by_name():
    with pytest.raises(ValueError, match="hypercorn"):
        command("hypercorn", "ceiling", 19999)  # type: ignore[arg-type]


def test_the_switch_needs_a_quarter_more_by_the_median_of_rounds():
    uvicorn = [100.0, 98.0, 102.0]
    assert switch_warranted(uvicorn, [125.0, 124.0, 130.0])
    assert not switch_warranted(uvicorn, [124.0, 124.5, 130.0])
    # one lucky round does not make it: the mean would be 1.33x, the median is 1.0x
    assert not switch_warranted(uvicorn, [200.0, 100.0, 100.0])
    assert median_ratio([50.0, 10.0, 40.0], [100.0, 80.0, 120.0]) == pytest.approx(0.4)


def group_with_a_child(tmp_path: Path, ignore_term: bool) -> tuple[subprocess.Popen, int]:
    """A process group: a leader (ignoring SIGTERM or not) and a child that ignores it, like a server's worker
    stuck in a request."""
    child_pid = tmp_path / "child.pid"
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    leader = (f"import signal, subprocess, sys, time, pathlib\n"
              f"{'signal.signal(signal.SIGTERM, signal.SIG_IGN)' if ignore_term else ''}\n"
              f"child = subprocess.Popen([sys.executable, '-c', {stubborn!r}])\n"
              f"pathlib.Path({str(child_pid)!r}).write_text(str(child.pid))\n"
              f"time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", leader], start_new_session=True)
    deadline = time.monotonic() + 10
    while not (child_pid.exists() and child_pid.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the child's SIG_IGN in place
    return process, int(child_pid.read_text())


@pytest.mark.parametrize("ignore_term", [False, True])
def test_stop_ends_the_whole_group_and_says_how_its_leader_ended(tmp_path, ignore_term):
    process, child = group_with_a_child(tmp_path, ignore_term)
    served = Served("uvicorn", "ceiling", process, "http://127.0.0.1:1", tmp_path / "log")
    status = served.stop(timeout=1.0)
    assert status == (-signal.SIGKILL if ignore_term else -signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child)
