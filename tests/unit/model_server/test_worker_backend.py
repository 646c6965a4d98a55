"""The model server's side of a worker with several processes: each on its own socket, the least busy
one gets the request, a copy that died is passed over. Real Unix sockets and frames (model_server.wire),
with small frame servers standing in for the worker's processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from model_server import wire
from model_server.backends import WorkerBackend


async def frame_server(path: Path, index: int, seen: list[int], release: asyncio.Event) -> asyncio.AbstractServer:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await wire.read_frame(reader)
            except asyncio.IncompleteReadError:
                return
            seen.append(index)
            await release.wait()  # held until every call has been sent: they overlap
            await wire.write_frame(writer, {"status": 200, "content_type": "text/plain"}, str(index).encode())

    return await asyncio.start_unix_server(serve, path=str(path))


def backend(socket_path: Path, processes: int) -> WorkerBackend:
    return WorkerBackend("m", "1", None, Path("log"), lambda pid: None, socket_path=socket_path,  # type: ignore[arg-type]
                         processes=processes)


def test_overlapping_calls_go_to_different_processes_each_on_its_own_socket(tmp_path):
    async def scenario() -> tuple[list[int], list[bytes]]:
        first = tmp_path / "w.sock"
        paths = wire.process_sockets(first, 2)
        assert paths == [first, tmp_path / "w.sock.1"]
        seen: list[int] = []
        release = asyncio.Event()
        servers = [await frame_server(path, i, seen, release) for i, path in enumerate(paths)]
        worker = backend(first, 2)
        calls = [asyncio.create_task(worker.invoke(b"{}", "application/json")) for _ in range(4)]
        while len(seen) < 4:
            await asyncio.sleep(0.01)
        release.set()
        answers = [(await call).body for call in calls]
        for server in servers:
            server.close()
        return seen, answers

    seen, answers = asyncio.run(scenario())
    assert sorted(seen) == [0, 0, 1, 1] and sorted(answers) == [b"0", b"0", b"1", b"1"]


def test_a_process_that_is_gone_is_passed_over(tmp_path):
    async def scenario() -> list[bytes]:
        first = tmp_path / "w.sock"
        release = asyncio.Event()
        release.set()
        server = await frame_server(first, 0, [], release)  # no process listens on w.sock.1
        worker = backend(first, 2)
        answers = [(await worker.invoke(b"{}", "application/json")).body for _ in range(3)]
        server.close()
        return answers

    assert asyncio.run(scenario()) == [b"0", b"0", b"0"]
