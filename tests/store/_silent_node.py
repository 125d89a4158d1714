"""The node side of tests/store/test_pg_silent.py, run in a network namespace.

    python -m tests.store._silent_node URL

Talks to the test over stdin/stdout, one line each: prints ``SILENT READY`` (or
``SILENT`` and a JSON object of figures; other lines are logs) and waits for a line (``CUT``, ``RESTORED``) before each phase. Everything on
an asyncio loop, as in ``controlroom serve``; a ticker task measures how long the loop
is held (the largest gap between its 10 ms ticks).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from store import Database, outbox
from store.pg import PgDatabase
from store.spool import SpooledWriter


class Ticker:
    def __init__(self) -> None:
        self.max_gap = 0.0
        self._last = time.perf_counter()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - self._last)
            self._last = now

    def reset(self) -> None:
        self.max_gap, self._last = 0.0, time.perf_counter()


def _unit(n: int, call_id: str) -> Any:
    def write(conn: Any) -> None:
        conn.execute("INSERT INTO t VALUES (?, ?)", (n, call_id))
        outbox.append(conn, call_id=call_id, line="999", type=f"call.e{n}",
                      payload={"event_id": f"{call_id}-{n}"})
    return write


async def _line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


def _say(obj: Any) -> None:
    # marked: the store's log lines go to stdout too
    print("SILENT", obj if isinstance(obj, str) else json.dumps(obj), flush=True)


async def _until_reachable(db: PgDatabase, timeout: float) -> float:
    t0 = time.monotonic()
    while not db.reachable and time.monotonic() - t0 < timeout:
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def main(url: str) -> None:
    ticker = Ticker()
    tick = asyncio.create_task(ticker.run())
    db = Database(url)  # made on the loop: the loop's statements are the watched ones
    assert isinstance(db, PgDatabase)
    try:
        db.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)
        db.execute("CREATE TABLE t (n INTEGER, call_id TEXT)")
        w = SpooledWriter(db)
        run = asyncio.create_task(w.run())
        assert w.write(_unit(0, "c1"), call_id="c1") is True

        # Phase 1: the loop writes and reads through a cut.
        _say("READY")
        assert await _line() == "CUT"
        ticker.reset()
        took: list[float] = []
        for n in range(1, 21):
            t0 = time.perf_counter()
            w.write(_unit(n, f"c{1 + n % 2}"), call_id=f"c{1 + n % 2}")
            took.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        read_error = ""
        try:
            db.query_one("SELECT COUNT(*) FROM t")
        except db.Error as exc:
            read_error = str(exc)
        read_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # the prober tries meanwhile, in its own thread
        _say({"took": took, "read_s": read_s, "read_error": read_error,
              "reachable": db.reachable, "degraded": w.degraded, "depth": w.depth,
              "loop_max_gap_s": ticker.max_gap, "reason": db.breaker.reason})
        assert await _line() == "RESTORED"
        back_s = await _until_reachable(db, 20)
        t0 = time.monotonic()
        while w.depth and time.monotonic() - t0 < 20:  # run() retries at once (on_reachable)
            await asyncio.sleep(0.02)
        rows = [list(r) for r in db.query("SELECT n, call_id FROM t ORDER BY n")]
        seqs = {c: [r.seq for r in outbox.for_call(db, c)] for c in ("c1", "c2")}
        _say({"reachable_after_s": back_s, "flushed_after_s": time.monotonic() - t0,
              "rows": rows, "seqs": seqs, "lost": w.lost, "degraded": w.degraded,
              "opened": db.breaker.opened})

        # Phase 2: a thread's statement on a cut path (the threads' connection, no
        # watchdog): bounded by the TCP options; the loop is not held meanwhile.
        assert (await asyncio.to_thread(db.query_one, "SELECT 1"))[0] == 1
        _say("READY")
        assert await _line() == "CUT"
        ticker.reset()
        t0 = time.perf_counter()
        thread_error = ""
        try:
            await asyncio.to_thread(db.query_one, "SELECT 2")
        except db.Error as exc:
            thread_error = str(exc)
        thread_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            db.query_one("SELECT 3")
            loop_error = ""
        except db.Error as exc:
            loop_error = str(exc)
        _say({"thread_s": thread_s, "thread_error": thread_error,
              "loop_read_s": time.perf_counter() - t0, "loop_error": loop_error,
              "reachable": db.reachable, "loop_max_gap_s": ticker.max_gap,
              "opened": db.breaker.opened})
        assert await _line() == "RESTORED"
        back_s = await _until_reachable(db, 20)
        ok = (await asyncio.to_thread(db.query_one, "SELECT 4"))[0] == 4
        _say({"reachable_after_s": back_s, "thread_ok": ok,
              "loop_ok": db.query_one("SELECT 5")[0] == 5})
        run.cancel()
    finally:
        tick.cancel()
        db.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
