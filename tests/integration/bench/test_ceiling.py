"""The ceiling (bench/ceiling.py) served for real under each server: it answers, the answer comes from that
server, and SIGTERM to its process group ends it cleanly. No stack: the ceiling does nothing but answer."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from bench.ceiling import SERVERS, start_ceiling
from bench.ceiling_app import CEILING_ANSWER
from tests.conftest import listen_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("server", SERVERS)
def test_the_ceiling_serves_under_each_server_and_stops_on_sigterm(server, tmp_path):
    env = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), "GATEWAY_ACCESS_LOG": "true"}
    served = start_ceiling(server, env, listen_port(), tmp_path)
    try:
        answer = httpx.post(served.endpoint, json={"records": [{"age": "9"}]}, timeout=10)
        assert answer.status_code == 200 and answer.content == CEILING_ANSWER
        assert answer.headers["server"] == server  # the server asked for, not the other one
    finally:
        status = served.stop()
    # uvicorn re-raises the SIGTERM it handled once its shutdown is done; granian exits 0. Never a SIGKILL.
    assert status in (0, -signal.SIGTERM)
    log = served.log.read_text()
    assert '"logger":"gateway.access"' in log and "Traceback" not in log  # the gateway's JSON access lines
