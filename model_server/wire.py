"""Frames between the model server and its workers, over a Unix socket.

A frame is two big-endian 32-bit lengths, a JSON header and a body:
``[header length][body length][header][body]``. Requests carry ``{"op": ...,
"content_type": ...}`` and the HTTP body as it came; replies carry
``{"status": ..., "content_type": ...}`` and the HTTP body to send back. No
parsing happens on the way: the model server passes bytes, the worker reads them.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import orjson

_LENGTHS = struct.Struct("!II")
MAX_HEADER = 64 * 1024


async def write_frame(writer: asyncio.StreamWriter, header: dict[str, Any], body: bytes) -> None:
    encoded = orjson.dumps(header)
    writer.write(_LENGTHS.pack(len(encoded), len(body)) + encoded + body)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """One frame; raises ``asyncio.IncompleteReadError`` when the other side has closed."""
    header_length, body_length = _LENGTHS.unpack(await reader.readexactly(_LENGTHS.size))
    if header_length > MAX_HEADER:
        raise ValueError(f"frame header of {header_length} bytes")
    header = orjson.loads(await reader.readexactly(header_length))
    return header, await reader.readexactly(body_length)


def process_sockets(socket_path: Path, processes: int) -> list[Path]:
    """The sockets of a worker's processes: the first process's is ``socket_path``, the others'
    ``<socket_path>.<index>``."""
    return [socket_path, *(socket_path.with_name(f"{socket_path.name}.{i}") for i in range(1, processes))]
