"""A store that goes silent (no reset, no answer) never holds the event loop long.

Real PostgreSQL behind a TCP relay in this process that can be *frozen*: it keeps every
connection open and accepts new ones but forwards nothing, as a path whose packets are
dropped looks to the node (the cluster test tests/cluster/test_store_cut.py cuts a real
route in a network namespace). On the event loop: the first write after the freeze fails
within the loop deadline (the watchdog), every later write and read fails at once (the
breaker), and after the thaw the prober reaches the store and the spool is written in
order, nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from typing import Any

import pytest

from harness import postgres as pg
from store import Database, outbox
from store.pg import LOOP_DEADLINE, PgDatabase
from store.spool import SpooledWriter

pytestmark = pytest.mark.realparts


class FreezableRelay:
    """127.0.0.1:port -> upstream; :attr:`frozen` stops all forwarding (connections stay
    open, new ones are accepted and hang)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.frozen = threading.Event()
        self.stop = threading.Event()
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.srv.settimeout(0.2)
        while not self.stop.is_set():
            try:
                a, _ = self.srv.accept()
            except OSError:
                continue
            b = socket.create_connection(self.upstream)
            self.socks += [a, b]
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        while not self.stop.is_set():
            if self.frozen.is_set():
                time.sleep(0.02)
                continue
            r, _, _ = select.select([a, b], [], [], 0.05)
            for s in r:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for x in (a, b):
                        with contextlib.suppress(OSError):
                            x.close()
                    return
                peer[s].sendall(data)

    def close(self) -> None:
        self.stop.set()
        for s in [self.srv, *self.socks]:
            with contextlib.suppress(OSError):
                s.close()


def _unit(n: int, call_id: str) -> Any:
    def write(conn: Any) -> None:
        conn.execute("INSERT INTO t VALUES (?, ?)", (n, call_id))
        outbox.append(conn, call_id=call_id, line="999", type=f"call.e{n}",
                      payload={"event_id": f"{call_id}-{n}"})
    return write


def test_a_silent_store_costs_the_loop_one_bounded_wait_then_nothing_and_loses_nothing(
) -> None:
    if not pg.available():
        pytest.skip("PostgreSQL is not installed")
    with pg.Postgres() as server:
        url = server.database("silent")
        relay = FreezableRelay((server.host, server.port))
        try:
            asyncio.run(_scenario(url.replace(f":{server.port}/", f":{relay.port}/")
                                  .replace(f"@{server.host}:", "@127.0.0.1:"), relay))
        finally:
            relay.close()


async def _scenario(url: str, relay: FreezableRelay) -> None:
    db = Database(url)  # made on the loop: its statements are the watched ones
    assert isinstance(db, PgDatabase)
    try:
        db.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)
        db.execute("CREATE TABLE t (n INTEGER, call_id TEXT)")
        w = SpooledWriter(db)
        assert w.write(_unit(0, "c1"), call_id="c1") is True

        relay.frozen.set()
        took: list[float] = []
        for n in range(1, 21):
            t0 = time.perf_counter()
            assert w.write(_unit(n, f"c{1 + n % 2}"), call_id=f"c{1 + n % 2}") is False
            took.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)
        # the first write waits for the watchdog; the breaker answers every later one
        assert took[0] < LOOP_DEADLINE + 0.25, took
        assert max(took[1:]) < 0.02, took
        assert not db.reachable and w.degraded and w.depth == 20
        t0 = time.perf_counter()
        with pytest.raises(db.OperationalError, match="store unreachable"):
            db.query_one("SELECT COUNT(*) FROM t")
        assert time.perf_counter() - t0 < 0.02
        assert w.flush() == 0  # still away: nothing moves, nothing touches the network

        await asyncio.sleep(1.0)  # the prober tries meanwhile, in its own thread
        assert not db.reachable
        relay.frozen.clear()
        deadline = time.monotonic() + 15
        while not db.reachable and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert db.reachable
        while w.depth:
            assert w.flush() > 0
        assert not w.degraded and w.lost == 0
        rows = [tuple(r) for r in db.query("SELECT n, call_id FROM t ORDER BY n")]
        assert rows == [(0, "c1")] + [(n, f"c{1 + n % 2}") for n in range(1, 21)]
        for cid in ("c1", "c2"):  # per-call order kept, gap-free
            seqs = [r.seq for r in outbox.for_call(db, cid)]
            assert seqs == list(range(1, len(seqs) + 1))
        assert db.breaker.opened == 1
    finally:
        db.close()
