#!/usr/bin/env python3
"""Forwards connections to 127.0.0.1:PORT to a unix socket, for HTTP tools that speak only TCP.

    tcp-unix-bridge.py UNIX_SOCKET PORT_FILE

Listens on an ephemeral loopback port, writes the port number to PORT_FILE once it accepts
connections, and copies bytes both ways for each connection (one unix connection per TCP
connection; a half-close is passed on). Runs until killed. Standard library only.
"""

import asyncio
import os
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def serve(unix_path: str, tcp_reader, tcp_writer) -> None:
    try:
        unix_reader, unix_writer = await asyncio.open_unix_connection(unix_path)
    except OSError as e:
        print(f"tcp-unix-bridge: cannot connect to {unix_path}: {e}", file=sys.stderr)
        tcp_writer.close()
        return
    try:
        await asyncio.gather(pipe(tcp_reader, unix_writer), pipe(unix_reader, tcp_writer))
    finally:
        for w in (unix_writer, tcp_writer):
            w.close()


async def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} UNIX_SOCKET PORT_FILE")
    unix_path, port_file = sys.argv[1], sys.argv[2]
    server = await asyncio.start_server(
        lambda r, w: serve(unix_path, r, w), host="127.0.0.1", port=0
    )
    port = server.sockets[0].getsockname()[1]
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, port_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
