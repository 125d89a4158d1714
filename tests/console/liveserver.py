"""Run the console app on a real loopback port in a background thread (for browser tests).

The browser tests use Playwright's sync API in the test thread; the server and its
FakeBackend live on their own event loop here. Anything that touches the backend
must go through :meth:`LiveServer.call` so it runs on the server's loop.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from console.live import HUB


class LiveServer:
    """The console on 127.0.0.1:<free port>, stopped by :meth:`stop`."""

    def __init__(self, app_factory: Callable[[], web.Application],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context``: serve HTTPS (``url`` then starts with ``https://``)."""
        self._factory = app_factory
        self._ssl = ssl_context
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="console-liveserver", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.app = self._factory()
            self.runner = web.AppRunner(self.app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self._ssl)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.loop.run_until_complete(asyncio.wait_for(self.app[HUB].ready.wait(), 5))
        except BaseException as e:  # surface start-up failures in the test thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError("console live server did not start")
        if self._error is not None:
            raise self._error
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run ``fn`` (sync or async) on the server loop and return its result."""
        async def run() -> Any:
            r = fn(*args, **kw)
            if asyncio.iscoroutine(r):
                r = await r
            return r
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        if self._error is None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.close()
