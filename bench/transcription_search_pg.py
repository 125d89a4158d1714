"""Transcript search latency on PostgreSQL (transcription/pgsearch.py) next to SQLite.

    .venv/bin/python bench/transcription_search_pg.py [--calls 10000] [--url postgresql://...]

Builds (or reuses) the SQLite bench database of ``bench/transcription_search.py`` (its
realistic corpus, in the SQLite store's time partitions), copies its calls, call index
rows and vocabulary into a PostgreSQL database (a throw-away cluster from
``harness.postgres`` unless ``--url``; the tsvector is generated there from the same
normalised terms, one GIN index), then times the same query classes on both stores
(p50/p95 min/median/max over ``--rounds``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import transcription_search as b  # noqa: E402

from store import calls  # noqa: E402
from store.db import Database  # noqa: E402
from transcription import store as tstore  # noqa: E402
from transcription.search import TranscriptSearch  # noqa: E402

TABLES = {
    "calls": "call_id, line, caller, state, arrived_at, handler_id, incident_number",
    "transcription_call_index": "id, call_id, terms, times, display",
    "transcription_vocab": "term, phonetic, head, len, calls",
}


def copy(src: Database, dst: Database, batch: int = 5000) -> None:
    for table, cols in TABLES.items():
        rows = src.query(f"SELECT {cols} FROM {table}")
        n = len(cols.split(","))
        with dst.transaction() as conn:
            for i in range(0, len(rows), batch):
                conn.executemany(f"INSERT INTO {table}({cols}) VALUES ({','.join('?' * n)})",
                                 [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                                  for r in rows[i:i + batch]])
    dst.execute("ANALYZE")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--url", default="")
    ap.add_argument("--queries", type=int, default=10, help="queries per class per round")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    path = f"/tmp/controlroom-search-{a.calls}-v4.sqlite3"
    lite = Database(path)
    lite.migrate(calls.COMPONENT, calls.MIGRATIONS)
    tstore.migrate(lite)
    have = lite.query_one("SELECT count(*) FROM calls")[0]
    if have < a.calls:
        lite.close()
        b.build(path, have, a.calls - have, 1800)
        lite = Database(path)
    cluster = None
    url = a.url
    if not url:
        from harness.postgres import Postgres

        cluster = Postgres().__enter__()
        url = cluster.database("bench")
    pg = Database(url)
    pg.migrate(calls.COMPONENT, calls.MIGRATIONS, postgresql=calls.PG_MIGRATIONS)
    tstore.migrate(pg)
    try:
        if pg.query_one("SELECT count(*) FROM transcription_call_index")[0] == 0:
            t0 = time.monotonic()
            copy(lite, pg)
            print(f"copied {a.calls:,} calls into PostgreSQL in {time.monotonic() - t0:.0f} s")
        total = lite.query_one("SELECT count(*) FROM calls")[0]
        for name, db in (("sqlite", lite), ("postgresql", pg)):
            print(f"\n== {name}: {total:,} transcripts; load average {os.getloadavg()[0]:.1f}")
            b.run(TranscriptSearch(db), total, a.queries, a.rounds)
    finally:
        pg.close()
        lite.close()
        if cluster is not None:
            cluster.__exit__(None, None, None)


if __name__ == "__main__":
    main()
