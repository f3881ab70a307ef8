"""Prometheus metrics of a running mount, served on 127.0.0.1:PORT when `metrics_port` is set.

A deliberately small HTTP responder on the mount's trio loop: every GET answers the text exposition format
built from the same counters `pfs stats` shows, so the two never disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

_HELP = {
    "ops": ("pfs_ops_total", "counter", "FUSE requests served, by operation"),
}


def render(counters: dict) -> str:
    lines = []
    for key, value in sorted(counters.items()):
        if isinstance(value, dict):
            name, kind, text = _HELP.get(key, (f"pfs_{key}_total", "counter", key))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{op="{op}"}} {count}' for op, count in sorted(value.items())]
        elif isinstance(value, int | float):
            kind = "counter" if _is_counter(key) else "gauge"
            name = f"pfs_{key}" + ("_total" if kind == "counter" else "")
            lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


def _is_counter(key: str) -> bool:
    return not key.startswith(("memory_", "rss", "uptime", "pending"))


async def serve(port: int, counters: Callable[[], dict]) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                body = render(counters()).encode()
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                await stream.send_all(head.encode() + body)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    log.info("serving metrics on http://127.0.0.1:%d/metrics", port)
    await trio.serve_tcp(answer, port, host="127.0.0.1")
