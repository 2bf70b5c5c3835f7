"""A TCP forwarder on loopback that a test can cut and restore, to fake an outage.

The machine's PostgreSQL and RabbitMQ are shared with other people, so tests never stop them.
Instead the services under test reach each dependency through a `TcpProxy`: `cut()` drops every
live connection (as a crash or restart of the server would) and resets every new one until
`restore()`. The proxy runs its own event loop in a daemon thread, so it keeps forwarding while
the test blocks on synchronous calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    """What the proxy has seen since it started."""

    accepted: int = 0
    refused: int = 0
    dropped: int = 0
    cuts: int = 0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN, as a vanished server would look to a client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forward 127.0.0.1:<port> to target_host:target_port until cut."""

    def __init__(
        self, target_host: str, target_port: int, *, name: str = "proxy", listen_port: int = 0
    ) -> None:
        self.name = name
        self.target_host = target_host
        self.target_port = target_port
        self._listen_port = listen_port
        self.stats = ProxyStats()
        self._cut = False
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pending: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @classmethod
    def for_url(cls, url: str, *, name: str = "proxy") -> TcpProxy:
        """A proxy in front of the host and port of `url` (not started)."""
        parts = urlsplit(url)
        default = {
            "amqp": 5672,
            "postgresql": 5432,
            "postgresql+asyncpg": 5432,
            "http": 80,
            "https": 443,
        }
        port = parts.port or default.get(parts.scheme, 80)
        return cls(parts.hostname or "127.0.0.1", port, name=name)

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's, credentials and path kept."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return parts._replace(netloc=netloc).geturl()

    @property
    def is_cut(self) -> bool:
        """Whether the proxy is refusing connections."""
        return self._cut

    @property
    def live_connections(self) -> int:
        """How many client connections are being forwarded now."""
        return len(self._pairs)

    def start(self) -> Self:
        """Bind a port and start forwarding in a background thread."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", self._listen_port)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"tcpproxy-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def _call(self, coro_fn: object) -> None:
        if self._loop is None or not self._loop.is_running():
            raise RuntimeError(f"{self.name} proxy is not running")
        future = asyncio.run_coroutine_threadsafe(coro_fn, self._loop)  # type: ignore[arg-type]
        future.result(timeout=10)

    def cut(self) -> None:
        """Drop every live connection and reset new ones until `restore()`."""
        self._call(self._do_cut())

    def restore(self) -> None:
        """Forward new connections again."""
        self._cut = False

    def close(self) -> None:
        """Stop listening, drop every connection and end the thread."""
        if self._loop is None or not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _do_cut(self) -> None:
        self._cut = True
        self.stats.cuts += 1
        self._drop_all()

    def _drop_all(self) -> None:
        for client, upstream in list(self._pairs):
            _reset(client)
            upstream.transport.abort()
            self.stats.dropped += 1
        self._pairs.clear()
        for writer in list(self._pending):
            _reset(writer)
        self._pending.clear()

    async def _shutdown(self) -> None:
        self._cut = True
        if self._server is not None:
            self._server.close()
        self._drop_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.stats.refused += 1
            _reset(writer)
            return
        self._pending.add(writer)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), timeout=5
            )
        except (OSError, TimeoutError):
            self._pending.discard(writer)
            _reset(writer)
            return
        self._pending.discard(writer)
        if self._cut:
            # Cut while we were connecting upstream.
            self.stats.refused += 1
            _reset(writer)
            up_writer.transport.abort()
            return
        self.stats.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            # One side finished or failed: the whole connection is over.
            writer.transport.abort()
