"""The gateway's client of the model server, against real sockets on 127.0.0.1: an answer read as sent, and
every way of not answering (refused, silent, cut off) one :class:`Unreachable`, within MODEL_SERVER_TIMEOUT."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from contract.predict_body import MAX_ROWS_HEADER
from contract.settings import Settings
from gateway.model_client import ModelServerClient, Rows, Target, Unreachable
from gateway.observability import Metrics
from tests.conftest import listen_port

TIMEOUT = 0.5  # MODEL_SERVER_TIMEOUT of these tests


def http_answer(status: int, body: bytes, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *(f"{k.replace('_', '-')}: {v}"
                                                                       for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def serving(reply: bytes | None, seen: list[bytes] | None = None) -> asyncio.Server:
    """A server that reads one request and sends ``reply`` (None: says nothing; b"": closes at once)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        request = head + await reader.readexactly(length)
        if seen is not None:
            seen.append(request)
        if reply is None:
            await asyncio.sleep(30)
        elif reply:
            writer.write(reply)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def client_of(port: int) -> ModelServerClient:
    settings = Settings(_env_file=None, model_server_url=f"http://127.0.0.1:{port}", model_server_timeout=TIMEOUT,
                        model_server_connect_timeout=TIMEOUT, batching=False)
    return ModelServerClient(settings, Metrics())


async def against(reply: bytes | None, call, seen: list[bytes] | None = None):  # noqa: ANN001
    server = await serving(reply, seen)
    client = client_of(server.sockets[0].getsockname()[1])
    try:
        return await call(client)
    finally:
        await client.close()
        server.close()


def test_an_answer_is_read_with_its_status_version_and_body_and_the_call_says_what_it_sends():
    seen: list[bytes] = []
    body = orjson.dumps({"predictions": [{"label": "a"}]})
    answer = asyncio.run(against(http_answer(200, body, X_Model_Version="7"),
                                 lambda c: c.invoke([{"x": "1"}], Target("churn", version="3")), seen))
    assert (answer.status, answer.version, answer.body) == (200, "7", {"predictions": [{"label": "a"}]})
    head, _, sent = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /models/churn/versions/3/invocations HTTP/1.1")
    assert b"content-type: application/json" in head.lower()
    assert orjson.loads(sent) == {"dataframe_records": [{"x": "1"}]}


def test_a_body_passed_on_unread_carries_the_gateways_contract_for_the_model_server_to_check_before_scoring():
    seen: list[bytes] = []
    rows = Rows(body=b'{"records": [{"x": "1"}]}', media="application/json")
    asyncio.run(against(http_answer(200, b'{"predictions": []}'), lambda c: c.send_body(rows, Target("churn")), seen))
    head = seen[0].partition(b"\r\n\r\n")[0].lower()
    assert f"{MAX_ROWS_HEADER.lower()}: {Settings(_env_file=None).max_predict_rows}".encode() in head.split(b"\r\n")


def test_a_refusal_that_is_not_json_keeps_its_status_and_retry_after_and_its_text_as_message():
    answer = asyncio.run(against(http_answer(503, b"loading, come back", Retry_After="2"),
                                 lambda c: c.invoke([], Target("churn"))))
    assert (answer.status, answer.retry_after, answer.body) == (503, "2", {"message": "loading, come back"})


@pytest.mark.parametrize("reply", [None, b""], ids=["silent", "closed"])
def test_a_model_server_that_does_not_answer_is_unreachable_within_the_timeout(reply):
    started = time.monotonic()
    with pytest.raises(Unreachable):
        asyncio.run(against(reply, lambda c: c.invoke([{"x": "1"}], Target("churn"))))
    assert time.monotonic() - started < TIMEOUT + 5  # bounded by MODEL_SERVER_TIMEOUT, not the server's 30 s


def test_nothing_listening_is_unreachable_and_the_status_says_why():
    async def call() -> tuple[str | dict, bool]:
        client = client_of(listen_port())  # free, and below the ports anything else is handed meanwhile
        try:
            status = await client.status()
            try:
                await client.invoke([], Target("churn"))
            except Unreachable:
                return status, True
            return status, False
        finally:
            await client.close()

    status, unreachable = asyncio.run(call())
    assert unreachable
    assert isinstance(status, str) and status.startswith("model server unreachable at http://127.0.0.1:")


def test_the_status_is_the_model_servers_body_or_why_it_is_not_one():
    status = asyncio.run(against(http_answer(200, b'{"status": "serving"}'), lambda c: c.status()))
    assert status == {"status": "serving"}
    status = asyncio.run(against(http_answer(200, b"[1, 2]"), lambda c: c.status()))
    assert status.endswith("answered [1, 2]")
    status = asyncio.run(against(None, lambda c: c.status()))
    assert status.startswith("model server unreachable") and "Timeout" in status
