"""Transcript search latency over many synthetic transcripts (target p95 <= 100 ms).

    .venv/bin/python bench/transcription_search.py [--calls 1000000] [--db PATH] [--queries 40]

Builds (or reuses) a database of N calls, each with a caller and a handler
segment of Zipf-distributed words plus a few rare "incident" words (and, in one call of
four, a place name from NAMES), indexed by the real transcription migrations and the
call index (transcription.store.index_terms: normalisation, FTS5 + triggers, the fuzzy
vocabulary), then times TranscriptSearch.search for rare, medium and common terms,
phrases, prefixes, filtered searches and misspelt names (one edit away from a name:
found through the fuzzy and phonetic expansion). Rows are
generated with executemany in batches on a bench-only fast connection (see build());
the database is cached at /tmp/controlroom-search-N.sqlite3 and reused by later runs;
the build is bounded by --max-build-seconds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collections import Counter  # noqa: E402

from store import calls  # noqa: E402
from store.db import Database  # noqa: E402
from transcription import store as tstore  # noqa: E402
from transcription.search import TranscriptSearch  # noqa: E402

COMMON = ("the a is and to of at he she it there my i you they on in with was for "
          "police what your address where now please okay yes no help ambulance car "
          "house road street door outside man woman someone think saw just").split()
MEDIUM = ("burglary knife fight fire alarm crash window broken drunk shouting stolen "
          "threatening neighbour garden van bike phone bag shop school park station "
          "injured bleeding weapon missing child dog noise smoke party").split()
RARE = [f"zeta{i:05d}" for i in range(20000)]  # each appears in ~N/20000 calls
LINES = ["999", "101"]
HANDLERS = [f"h{i}" for i in range(60)]
_SYL = ("kal mor den bur ton ham wick ley ford by worth field ster ing ash brook dale mere "
        "wal ling shaw cot ridge bourne win thorp holm stan ber cas tle nor ches").split()


def _names(n: int = 5000) -> list[str]:
    rng = random.Random(3)
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(_SYL) for _ in range(rng.choice((2, 3, 3)))))
    return sorted(out)


NAMES = _names()  # place names, each in ~50 calls per 1M


def misspell(rng: random.Random, word: str) -> str:
    """One edit (substitution, deletion, transposition) that is not another name."""
    while True:
        i = rng.randrange(1, len(word) - 1)
        op = rng.choice("sdt")
        if op == "s":
            w = word[:i] + rng.choice("aeioulnrst") + word[i + 1:]
        elif op == "d":
            w = word[:i] + word[i + 1:]
        else:
            w = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        if w != word and w not in _NAME_SET:
            return w


_NAME_SET = set(NAMES)


VOCAB = np.array(COMMON + MEDIUM + RARE)
_P = np.concatenate([
    0.80 * (w := 1.0 / np.arange(1, len(COMMON) + 1) ** 1.1) / w.sum(),  # Zipf-like
    np.full(len(MEDIUM), 0.19 / len(MEDIUM)),
    np.full(len(RARE), 0.01 / len(RARE)),
])


def _texts(rng: np.random.Generator, count: int, words: int) -> list[str]:
    idx = rng.choice(len(VOCAB), size=(count, words), p=_P / _P.sum())
    return [" ".join(row) for row in VOCAB[idx].tolist()]


def _index_rows(calls_segs: list[tuple[str, list]]) -> tuple[list[tuple], Counter[str]]:
    """Call index rows of a chunk of calls (in a worker process: normalisation is Python)."""
    rows, vocab = [], Counter()
    for cid, segs in calls_segs:
        text, blob, display = tstore.encode_index(tstore.index_terms(segs))
        rows.append((cid, text, blob, display))
        vocab.update(tstore.vocabulary_terms(text))
    return rows, vocab


def build(path: str, first: int, n: int, max_seconds: float, batch: int = 50000) -> int:
    """Append calls ``first .. first+n-1`` (stops early after ``max_seconds``).

    Bench only, for speed: its own connection with ``synchronous=OFF`` and no rollback
    journal (a crash mid-build means deleting the file and building again), one
    transaction per ``batch`` calls through the real triggers, FTS5 automerge off while
    loading and one ``optimize`` at the end; automerge and WAL are restored afterwards,
    so the searched index is laid out as a merged production index.
    """
    rng = np.random.default_rng(42 + first)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB: FTS5 merges re-read recent pages
    conn.execute("INSERT INTO transcription_call_fts(transcription_call_fts, rank) VALUES ('automerge', 0)")
    names_rng = np.random.default_rng(1000 + first)  # apart: the other texts stay as before
    pool = multiprocessing.Pool(2)
    t0 = time.monotonic()
    made = 0
    base = 1.7e9
    while made < n and time.monotonic() - t0 < max_seconds:
        k = min(batch, n - made)
        call_rows, tr_rows, seg_rows = [], [], []
        callers, handlers = _texts(rng, k, 14), _texts(rng, k, 10)
        named = names_rng.random(k) < 0.25
        picks = names_rng.integers(0, len(NAMES), k)
        callers = [f"{c} {NAMES[p]}" if m else c for c, m, p in zip(callers, named, picks, strict=True)]
        per_call = []
        for i, j in enumerate(range(first + made, first + made + k)):
            cid = f"c{j:08d}"
            at = base + j * 30.0
            call_rows.append((cid, LINES[j % 7 == 0], f"0770{j % 100000:06d}", "ended", at,
                              HANDLERS[j % len(HANDLERS)], f"INC-{j}" if j % 10 == 0 else None))
            caller, handler = callers[i], handlers[i]
            tr_rows.append((cid, "bench", "synthetic", "en", f"caller: {caller}\nhandler: {handler}",
                            0.9, 60.0, None, at))
            seg_rows.append((cid, "handler", 0.5, 3.0, handler, 0.9, "[]"))
            seg_rows.append((cid, "caller", 3.5, 9.0, caller, 0.9, "[]"))
            per_call.append((cid, [("handler", 0.5, 3.0, handler, 0.9, []),
                                   ("caller", 3.5, 9.0, caller, 0.9, [])]))
        chunks = [per_call[i:i + 2500] for i in range(0, len(per_call), 2500)]
        pending = pool.map_async(_index_rows, chunks)  # normalised while the rows go in
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO calls(call_id, line, caller, state, arrived_at, handler_id,"
                         " incident_number) VALUES (?,?,?,?,?,?,?)", call_rows)
        conn.executemany("INSERT INTO transcription_transcripts VALUES (?,?,?,?,?,?,?,?,?)", tr_rows)
        conn.executemany('INSERT INTO transcription_segments(call_id, channel, start, "end", text,'
                         " confidence, words) VALUES (?,?,?,?,?,?,?)", seg_rows)
        index_rows, vocab = [], Counter()
        for rows, v in pending.get():
            index_rows += rows
            vocab.update(v)
        conn.executemany("INSERT INTO transcription_call_index(call_id, terms, times, display)"
                         " VALUES (?,?,?,?)", index_rows)
        tstore.vocab_add(conn, vocab)
        conn.execute("COMMIT")
        made += k
        if made % 100000 == 0:
            print(f"  built {made:,} calls in {time.monotonic() - t0:.0f} s", flush=True)
    pool.close()
    t1 = time.monotonic()
    for t in ("transcription_call_fts",):
        conn.execute(f"INSERT INTO {t}({t}) VALUES ('optimize')")
        conn.execute(f"INSERT INTO {t}({t}, rank) VALUES ('automerge', 4)")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    print(f"  fts optimize {time.monotonic() - t1:.0f} s", flush=True)
    return made


def time_queries(search: TranscriptSearch, label: str, queries: list[tuple[str, dict]]) -> None:
    lat = []
    hits = 0
    how: set[str] = set()
    for q, filters in queries:
        t = time.perf_counter()
        res = search.search(q, **filters)
        lat.append((time.perf_counter() - t) * 1000)
        hits += len(res)
        how |= {h.scoring + (f" within newest {h.ranked_within_recent}" if h.ranked_within_recent else "")
                + ("" if h.match == "exact" else f" {h.match}") for h in res}
    lat.sort()
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    print(f"{label:<34} n={len(lat):3d} p50={statistics.median(lat):7.1f} ms  p95={p95:7.1f} ms"
          f"  max={lat[-1]:7.1f} ms  mean hits={hits / len(lat):.1f}  "
          f"{'OK' if p95 <= 100 else 'OVER 100 ms'}  [{', '.join(sorted(how))}]")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--db", default="")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--max-build-seconds", type=float, default=900)
    a = ap.parse_args()
    # Cached between runs: the default file is reused (and extended) when it exists.
    path = a.db or f"/tmp/controlroom-search-{a.calls}-v2.sqlite3"  # v2: call index, names
    db = Database(path)
    db.migrate(calls.COMPONENT, calls.MIGRATIONS)
    tstore.migrate(db)
    have = db.query_one("SELECT count(*) FROM transcription_transcripts")[0]
    if have < a.calls:
        db.close()  # the build changes the journal mode: no other connection may be open
        t0 = time.monotonic()
        made = build(path, have, a.calls - have, a.max_build_seconds)
        dt = time.monotonic() - t0
        print(f"built {made:,} calls ({2 * made:,} segments) in {dt:.0f} s "
              f"({made / max(dt, 1e-9):,.0f} calls/s); db {os.path.getsize(path) / 1e6:,.0f} MB; "
              f"load average {os.getloadavg()[0]:.1f}")
        db = Database(path)
    total = db.query_one("SELECT count(*) FROM transcription_transcripts")[0]
    print(f"searching {total:,} transcripts at {path}; load average {os.getloadavg()[0]:.1f}")
    search = TranscriptSearch(db)
    rng = random.Random(7)
    n = a.queries
    print(f"(bounded ranking: at most {search.max_candidates} newest matching segments are "
          f"ranked; filters leaving <= {search.calls_first_max} calls are applied first; "
          f"queries whose words occur > {search.max_idf_scan:,} times get estimated IDFs)")
    time_queries(search, "rare word (~12 calls per 1M)", [(rng.choice(RARE), {}) for _ in range(n)])
    time_queries(search, "rare word, line=999", [(rng.choice(RARE), {"line": "999"}) for _ in range(n)])
    time_queries(search, "medium word (~14% of calls)", [(rng.choice(MEDIUM), {}) for _ in range(n)])
    time_queries(search, "two medium words (AND)",
                 [(f"{rng.choice(MEDIUM)} {rng.choice(MEDIUM)}", {}) for _ in range(n)])
    time_queries(search, "medium word + handler + 1 day",
                 [(rng.choice(MEDIUM), {"handler_id": rng.choice(HANDLERS),
                                        "since": 1.7e9 + (d := rng.randrange(total * 30)),
                                        "until": 1.7e9 + d + 86400}) for _ in range(n)])
    time_queries(search, "medium word + caller",
                 [(rng.choice(MEDIUM), {"caller": f"0770{rng.randrange(100000):06d}"}) for _ in range(n)])
    time_queries(search, "prefix (burg*)", [("burg*", {}) for _ in range(max(5, n // 4))])
    time_queries(search, "common word (~most calls)", [(rng.choice(COMMON[:10]), {}) for _ in range(max(5, n // 4))])
    time_queries(search, "phrase of common words", [('"police what"', {}) for _ in range(max(5, n // 4))])
    time_queries(search, "common word + medium word",
                 [(f"{rng.choice(COMMON[:10])} {rng.choice(MEDIUM)}", {}) for _ in range(max(5, n // 4))])
    time_queries(search, "common word + rare word",
                 [(f"{rng.choice(COMMON[:10])} {rng.choice(RARE)}", {}) for _ in range(max(5, n // 4))])
    named = [(misspell(rng, w), w) for w in rng.sample(NAMES, n)]
    time_queries(search, "misspelt name (one edit)", [(q, {}) for q, _ in named])
    found = sum(any(w in " ".join(f["text"] for f in h.fragments) for h in search.search(q))
                for q, w in named)
    print(f"{'':<34} misspelt names whose calls were found: {found} of {n}")
    time_queries(search, "common word + handler + 1 day",
                 [(rng.choice(COMMON[:10]), {"handler_id": rng.choice(HANDLERS),
                                             "since": 1.7e9 + (d := rng.randrange(total * 30)),
                                             "until": 1.7e9 + d + 86400}) for _ in range(max(5, n // 4))])
    db.close()


if __name__ == "__main__":
    main()
