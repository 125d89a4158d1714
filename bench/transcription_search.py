"""Transcript search latency per query class over a realistic synthetic corpus.

    .venv/bin/python bench/transcription_search.py                  # 0.1 M calls (quick)
    .venv/bin/python bench/transcription_search.py --calls 1000000 --calls 5000000 --rounds 3

Target (issue 15 item 4): p95 <= 100 ms for every query class at 5 M transcripts.

The corpus sounds like a control room: each call has 100-300 words (60 % the caller's,
then the handler's) drawn from Zipf-distributed function words, control-room vocabulary,
numbers ("two thousand", "23", "half past ten"), 20,000 place names (alone and as street
names: "Kalmorden Road") and 30,000 vehicle registrations ("AB12 CDE"). Each distinct
word or phrase is normalised once by the real index code (``index_terms``: numbers,
codes, spellings) and calls are assembled from the normalised atoms, so building 5 M
calls (about a billion words) takes minutes rather than hours; the index rows carry word
times and confidences but no separate display text (snippets show the normalised terms).
Calls arrive 30 s apart (5 M calls: 4.75 years); one in 7 is a 999, one in 10 has an
incident number, 60 handlers, 100,000 caller numbers.

Rows go in through the store's own index writer (``transcription.store.add_index_rows``:
the time partitions, their FTS5 tables and the fuzzy vocabulary) on a bench-only fast
connection (``synchronous=OFF``, no journal: a crash mid-build means deleting the file).
The database is built once per size at ``--dir`` (default /tmp) and reused: a 5 M
corpus needs ~25 GB of disk and ~40 min on two busy cores; ``--max-build-seconds`` bounds it.

Each query class runs ``--queries`` different queries per round; each of ``--rounds``
rounds prints its p50/p95, and the summary line gives min / median / max of them over the
rounds, with the load average before and after (latency on a shared machine is an upper
bound), and beside it the p95 of the CPU time the searching thread used (median over
rounds: what the search costs, whatever else runs). "complete" is the share of searches
that read every partition they could (the others stopped at their budget or with enough
newest matches, and said how far back they looked); "partitions/q" how many each read.
A class over 100 ms p95 (median over rounds) makes the run exit 1.
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
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from store import calls  # noqa: E402
from store.db import Database  # noqa: E402
from transcription import store as tstore  # noqa: E402
from transcription.search import TranscriptSearch  # noqa: E402

COMMON = ("the a is and to of at he she it there my i you they on in with was for "
          "that this be have not we his her are just what your where now please okay yes no "
          "so but been got can do can't don't um er right him them out up down here").split()
CONTROL = ("police officer ambulance fire address road street lane avenue close drive "
           "house flat door window garden car van bike vehicle driver registration "
           "burglary knife fight alarm crash broken drunk shouting stolen threatening "
           "neighbour phone bag shop school park station injured bleeding weapon missing "
           "child dog noise smoke party male female white black wearing jacket hoodie "
           "jeans tall short hair running towards away behind outside inside near "
           "junction roundabout bus stop pub carpark alley collision injury breathing "
           "conscious unconscious screaming argument partner husband wife boyfriend "
           "girlfriend mother father son daughter baby elderly worried scared hurt "
           "assault robbery theft damage arson abandoned suspicious loitering "
           "minutes ago just now tonight yesterday morning afternoon evening").split()
MEDIUM = [w for w in CONTROL[40:] if w.isalpha()]  # each in ~1-5 % of calls
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "twenty", "thirty", "forty", "fifty", "hundred", "two thousand", "twenty three",
           "forty five", "half past ten", "quarter to six"] + [str(i) for i in range(1, 200)]
_SYL = ("kal mor den bur ton ham wick ley ford by worth field ster ing ash brook dale mere "
        "wal ling shaw cot ridge bourne win thorp holm stan ber cas tle nor ches").split()
STREETS = ("road", "street", "lane", "avenue", "close", "drive", "way", "crescent")
_LETTERS = "ABCDEFGHJKLMNOPRSTUVWXY"
LINES = ["999", "101"]
HANDLERS = [f"h{i}" for i in range(60)]
BASE = 1.7e9
STEP = 30.0
"""Seconds between calls."""


def _names(n: int = 20000) -> list[str]:
    rng = random.Random(3)
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(_SYL) for _ in range(rng.choice((2, 3, 3)))))
    return sorted(out)


NAMES = _names()
_NAME_SET = set(NAMES)


def _registrations(n: int = 30000) -> list[str]:
    rng = random.Random(5)
    return [f"{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}{rng.randrange(10, 75)} "
            f"{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}" for _ in range(n)]


REGS = _registrations()


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


class Corpus:
    """Normalised atoms (a word or a few: "two thousand", "AB12 CDE") with probabilities."""

    def __init__(self) -> None:
        texts: list[str] = []
        weights: list[np.ndarray] = []

        def group(words: list[str], share: float, zipf: bool = False) -> None:
            texts.extend(words)
            w = 1.0 / np.arange(1, len(words) + 1) ** 1.1 if zipf else np.ones(len(words))
            weights.append(share * w / w.sum())

        group(COMMON, 0.62, zipf=True)
        group(CONTROL, 0.28, zipf=True)
        group(NUMBERS, 0.05)
        group(NAMES, 0.03)
        group([f"{n} {STREETS[i % len(STREETS)]}" for i, n in enumerate(NAMES)], 0.015)
        group(REGS, 0.005)
        p = np.concatenate(weights)
        self.p = p / p.sum()
        atoms = [tstore.index_terms([("caller", 0.0, 1.0, t, 0.9, [])]) for t in texts]
        self.terms = [" ".join(i.term for i in a) for a in atoms]
        self.nterms = np.array([len(a) for a in atoms])

    def calls(self, seed: int, count: int) -> list[tuple[str, bytes, str]]:
        """(terms, times blob, display) of ``count`` calls of 100-300 words, as the call
        index stores them (``encode_index``): terms 0.45 s apart, confidence 0.9."""
        rng = np.random.default_rng(seed)
        sizes = rng.integers(100, 301, count)
        idx = rng.choice(len(self.terms), size=int(sizes.sum()), p=self.p)
        out, pos = [], 0
        for n in sizes.tolist():
            sel = idx[pos:pos + n]
            pos += n
            k = int(self.nterms[sel].sum())
            ncaller = int(self.nterms[sel[: int(n * 0.6)]].sum())
            start = np.arange(k, dtype=np.float32) * np.float32(0.45) + np.float32(2.0)
            t = np.empty(2 * k, dtype="<f4")
            t[0::2], t[1::2] = start, start + np.float32(0.35)
            info = bytes([90]) * ncaller + bytes([128 | 90]) * (k - ncaller)
            out.append((" ".join([self.terms[i] for i in sel.tolist()]), t.tobytes() + info, ""))
        return out


_CORPUS: Corpus | None = None


def _chunk(args: tuple[int, int]) -> tuple[int, list[tuple[str, bytes, str]], Counter[str]]:
    first, count = args
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = Corpus()
    rows = _CORPUS.calls(first, count)
    vocab: Counter[str] = Counter()
    for r in rows:
        vocab.update(tstore.vocabulary_terms(r[0]))
    return first, rows, vocab


def build(path: str, first: int, n: int, max_seconds: float, batch: int = 20000) -> int:
    """Append calls ``first .. first+n-1`` (stops early after ``max_seconds``), generated
    by two worker processes while this one writes."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-400000")
    t0 = time.monotonic()
    made = 0
    jobs = [(s, min(batch, first + n - s)) for s in range(first, first + n, batch)]
    with multiprocessing.Pool(2) as pool:
        for start, rows, vocab in pool.imap(_chunk, jobs):
            if time.monotonic() - t0 > max_seconds:
                print(f"  build stopped after {max_seconds:.0f} s (--max-build-seconds)")
                pool.terminate()
                break
            ids = range(start, start + len(rows))
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO calls(call_id, line, caller, state, arrived_at, handler_id,"
                " incident_number) VALUES (?,?,?,?,?,?,?)",
                [(f"c{j:08d}", LINES[j % 7 != 0], f"0770{j % 100000:06d}", "ended", BASE + j * STEP,
                  HANDLERS[j % len(HANDLERS)], f"INC-{j}" if j % 10 == 0 else None) for j in ids])
            tstore.add_index_rows(conn, [(f"c{j:08d}", BASE + j * STEP, *r) for j, r in zip(ids, rows, strict=True)])
            tstore.vocab_add(conn, vocab)
            conn.execute("COMMIT")
            made += len(rows)
            if made % 200000 == 0:
                print(f"  built {first + made:,} calls in {time.monotonic() - t0:.0f} s", flush=True)
    tstore.optimize_partitions(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return made


def classes(rng: random.Random, total: int, n: int) -> list[tuple[str, list[tuple[str, dict]]]]:
    """(label, queries) of each query class: n different queries each."""
    span = total * STEP

    def day() -> dict:
        d = BASE + rng.uniform(0, max(span - 86400, 1))
        return {"since": d, "until": d + 86400}

    def name() -> str:
        return rng.choice(NAMES)

    return [
        ("single word: place name", [(name(), {}) for _ in range(n)]),
        ("single word: control room", [(rng.choice(MEDIUM), {}) for _ in range(n)]),
        ("single word: common", [(rng.choice(COMMON[:15]), {}) for _ in range(n)]),
        ("two words AND: place + word", [(f"{name()} {rng.choice(MEDIUM)}", {}) for _ in range(n)]),
        ("two words AND: control room", [(f"{rng.choice(MEDIUM)} {rng.choice(MEDIUM)}", {})
                                         for _ in range(n)]),
        ("phrase: street name", [(f'"{(i := rng.randrange(len(NAMES))) and NAMES[i]} '
                                  f'{STREETS[i % len(STREETS)]}"', {}) for _ in range(n)]),
        ("phrase: common words", [(f'"{rng.choice(COMMON[:8])} {rng.choice(CONTROL[:12])}"', {})
                                  for _ in range(n)]),
        ("registration (code)", [(rng.choice(REGS), {}) for _ in range(n)]),
        ("fuzzy: misspelt place name", [(misspell(rng, name()), {}) for _ in range(n)]),
        ("filter line=999 + word", [(rng.choice(MEDIUM), {"line": "999"}) for _ in range(n)]),
        ("filter 1 day + word", [(rng.choice(MEDIUM), day()) for _ in range(n)]),
        ("filter 1 day + place name", [(name(), day()) for _ in range(n)]),
        ("filter caller + word", [(rng.choice(MEDIUM), {"caller": f"0770{rng.randrange(100000):06d}"})
                                  for _ in range(n)]),
        ("filter handler + day + common", [(rng.choice(COMMON[:10]), {"handler_id": rng.choice(HANDLERS), **day()})
                                           for _ in range(n)]),
        ("filter incident + word", [(rng.choice(MEDIUM), {"incident": f"INC-{10 * rng.randrange(total // 10)}"})
                                    for _ in range(n)]),
    ]


def pct(lat: list[float], q: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(search: TranscriptSearch, total: int, n: int, rounds: int) -> bool:
    per: dict[str, list[tuple[float, float]]] = {}
    info: dict[str, Counter[str]] = {}
    loads = [os.getloadavg()[0]]
    for r in range(rounds):
        rng = random.Random(7 + r)
        for label, queries in classes(rng, total, n):
            lat, cpu, hits = [], [], 0
            for q, filters in queries:
                t, c0 = time.perf_counter(), time.thread_time()
                res = search.search(q, **filters)
                lat.append((time.perf_counter() - t) * 1000)
                cpu.append((time.thread_time() - c0) * 1000)
                hits += len(res)
                c = info.setdefault(label, Counter())
                c["hits"] += len(res)
                c["queries"] += 1
                c["complete"] += getattr(res, "complete", True)
                c["partitions"] += getattr(res, "partitions_searched", 0)
            per.setdefault(label, []).append((pct(lat, 0.5), pct(lat, 0.95), pct(cpu, 0.95)))
        loads.append(os.getloadavg()[0])
    ok = True
    print(f"{'query class':<32} {'p50 ms min/med/max':>22} {'p95 ms min/med/max':>22}"
          "  cpu p95  hits/q complete partitions/q")
    for label, vals in per.items():
        p50 = sorted(v[0] for v in vals)
        p95 = sorted(v[1] for v in vals)
        cpu95 = statistics.median(v[2] for v in vals)
        c = info[label]
        med95 = statistics.median(p95)
        ok &= med95 <= 100
        print(f"{label:<32} {p50[0]:6.1f} {statistics.median(p50):6.1f} {p50[-1]:6.1f}"
              f"   {p95[0]:6.1f} {med95:6.1f} {p95[-1]:6.1f}  {cpu95:7.1f}  {c['hits'] / c['queries']:5.1f}"
              f" {100 * c['complete'] / c['queries']:5.0f}% {c['partitions'] / c['queries']:6.1f}"
              f"{'' if med95 <= 100 else '  OVER 100 ms'}")
    print(f"load average (1 min) during the rounds: {', '.join(f'{v:.1f}' for v in loads)}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, action="append",
                    help="corpus size (repeatable: 100000, 1000000, 5000000); default 100000")
    ap.add_argument("--dir", default="/tmp", help="where the corpora are built and kept")
    ap.add_argument("--db", default="", help="use this database file (built or extended to --calls)")
    ap.add_argument("--queries", type=int, default=20, help="queries per class per round")
    ap.add_argument("--rounds", type=int, default=3, help="0: build only")
    ap.add_argument("--max-build-seconds", type=float, default=3600)
    a = ap.parse_args()
    sizes = a.calls or [100_000]
    print(f"machine: {os.cpu_count()} CPUs; {Path('/proc/cpuinfo').read_text().split('model name')[1].split(chr(10))[0].strip(': ') if Path('/proc/cpuinfo').exists() else ''}")
    ok = True
    for size in sizes:
        path = a.db or os.path.join(a.dir, f"controlroom-search-{size}-v4.sqlite3")
        db = Database(path)
        db.migrate(calls.COMPONENT, calls.MIGRATIONS)
        tstore.migrate(db)
        have = db.query_one("SELECT count(*) FROM calls")[0]
        if have < size:  # built once, then reused; a smaller one (--db) is extended
            db.close()  # the build changes the journal mode: no other connection may be open
            t0 = time.monotonic()
            made = build(path, have, size - have, a.max_build_seconds)
            dt = time.monotonic() - t0
            print(f"built {made:,} calls in {dt:.0f} s ({made / max(dt, 1e-9):,.0f} calls/s);"
                  f" db {os.path.getsize(path) / 1e9:.1f} GB; load average {os.getloadavg()[0]:.1f}")
            db = Database(path)
        total = db.query_one("SELECT count(*) FROM calls")[0]
        search = TranscriptSearch(db)
        parts = getattr(search, "partitions", lambda: [])()
        print(f"\n== {total:,} transcripts at {path} ({len(parts)} index partitions);"
              f" {a.queries} queries per class, {a.rounds} rounds")
        if a.rounds > 0:
            ok &= run(search, total, a.queries, a.rounds)
        db.close()
    if not ok:
        print("FAILED: some query class has p95 over 100 ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
