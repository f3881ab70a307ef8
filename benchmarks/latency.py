"""A network delay in front of the benchmark server: what a real object store's round trip costs.

On loopback a GET answers in well under a millisecond, so nothing that waits on the store shows; a real
object store takes 10-50 ms to a request's first byte. `python -m benchmarks run --latency MS` puts this
proxy between every client and the server: each chunk of every answer is held back MS milliseconds from
the moment the server sent it (requests pass at once), so a request's round trip grows by MS while
throughput stays the server's. A process of its own (asyncio, one thread), so its CPU is not any client's;
the kernel's netem would do this without a process, but this kernel has no netem.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

from testservers.s3 import free_port

CHUNK = 256 << 10


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def take() -> None:
        while True:
            data = await reader.read(CHUNK)
            held.put_nowait((loop.time() + delay, data))
            if not data:
                return

    async def give() -> None:
        while True:
            due, data = await held.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    await asyncio.gather(take(), give())


async def _serve(port: int, target: int, delay: float) -> None:
    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(_pipe(client_r, server_w, 0.0), _pipe(server_r, client_w, delay))
        except (ConnectionError, OSError):
            pass
        finally:
            client_w.close()
            server_w.close()

    running: set[asyncio.Task] = set()  # asyncio holds its tasks weakly: a closed client's would be lost

    def connected(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(connection(client_r, client_w))
        running.add(task)
        task.add_done_callback(running.discard)

    server = await asyncio.start_server(connected, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def delayed(target: int, delay_ms: float) -> Iterator[int]:
    """A proxy to 127.0.0.1:`target` adding `delay_ms` to every round trip, for the block; yields its port."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.latency", str(port), str(target), str(delay_ms)]
    process = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), _connect(port):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the latency proxy did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def _connect(port: int) -> Iterator[None]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("target", type=int)
    parser.add_argument("delay_ms", type=float)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.target, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
