"""Transcripts, their segments, the FTS5 index and the durable job queue (SQLite).

Tables (component ``transcription``):

* ``transcription_transcripts``: one final transcript per call (engine, model, text).
* ``transcription_segments``: its segments (channel, start, end, text, confidence,
  words JSON ``[word, start, end, conf]``).
* ``transcription_call_index``: the whole call as one document of normalised terms
  (``transcription/normalise.py``), each with its time, channel, confidence and the
  words as transcribed, and the call's time (``at``); it is indexed in time partitions
  (``transcription_partitions``: at most :data:`PARTITION_ROWS` consecutive rows each,
  their span of times), each an external-content FTS5 table
  ``transcription_call_fts_pN`` written by :func:`index_call` / :func:`add_index_rows`,
  so a search reads the newest first and its cost does not grow with the backlog;
  ``transcription_vocab`` the distinct indexed words with phonetic keys (for the
  search's fuzzy and phonetic expansion).
* ``transcription_gazetteer``: the force's place and street names. A transcript word
  (or two adjacent words) that sounds like one of them but is written otherwise ("Hobon",
  "king standing") also indexes the name, right after those words, with their times
  (:class:`~transcription.normalise.Gazetteer`); the search marks calls found only so
  as ``gazetteer`` matches, ranked after exact ones.
* ``transcription_transcript_versions``: transcripts replaced by a retranscription.
* ``transcription_jobs``: the final-transcription queue. A job is a row, so it
  survives restarts; a job found ``running`` at start-up was interrupted by a crash or a
  stop and goes back to ``queued``.

No foreign key to ``calls``: ``transcribe``/``retranscribe`` may store transcripts of
recordings whose call row lives elsewhere; search LEFT JOINs ``calls`` for its filters.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from store.db import Database

from .engines import Hypothesis
from .normalise import Gazetteer, phonetic_key, terms

log = structlog.get_logger("transcription.store")

COMPONENT = "transcription"

MIGRATIONS = [
    """
    CREATE TABLE transcription_transcripts (
        call_id TEXT PRIMARY KEY,
        engine TEXT NOT NULL,
        model TEXT NOT NULL,
        language TEXT NOT NULL DEFAULT '',
        text TEXT NOT NULL,
        confidence REAL,
        duration REAL,
        recording_path TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE transcription_segments (
        id INTEGER PRIMARY KEY,
        call_id TEXT NOT NULL,
        channel TEXT NOT NULL CHECK (channel IN ('caller', 'handler')),
        start REAL NOT NULL,
        "end" REAL NOT NULL,
        text TEXT NOT NULL,
        confidence REAL,
        words TEXT
    );
    CREATE INDEX transcription_segments_call ON transcription_segments(call_id, start);
    CREATE VIRTUAL TABLE transcription_fts USING fts5(
        text, content='transcription_segments', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER transcription_segments_ai AFTER INSERT ON transcription_segments BEGIN
        INSERT INTO transcription_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER transcription_segments_ad AFTER DELETE ON transcription_segments BEGIN
        INSERT INTO transcription_fts(transcription_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER transcription_segments_au AFTER UPDATE ON transcription_segments BEGIN
        INSERT INTO transcription_fts(transcription_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
        INSERT INTO transcription_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TABLE transcription_jobs (
        call_id TEXT PRIMARY KEY,
        recording_path TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        enqueued_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX transcription_jobs_state ON transcription_jobs(state, enqueued_at);
    """,
    # 2: prefix indexes (2-4 characters) for "burg*" searches: without them FTS5 merges
    # the doclists of every matching term, ~0.5 s on a million transcripts.
    """
    DROP TRIGGER transcription_segments_ai;
    DROP TRIGGER transcription_segments_ad;
    DROP TRIGGER transcription_segments_au;
    DROP TABLE transcription_fts;
    CREATE VIRTUAL TABLE transcription_fts USING fts5(
        text, content='transcription_segments', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2', prefix='2 3 4'
    );
    INSERT INTO transcription_fts(transcription_fts) VALUES ('rebuild');
    CREATE TRIGGER transcription_segments_ai AFTER INSERT ON transcription_segments BEGIN
        INSERT INTO transcription_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER transcription_segments_ad AFTER DELETE ON transcription_segments BEGIN
        INSERT INTO transcription_fts(transcription_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER transcription_segments_au AFTER UPDATE ON transcription_segments BEGIN
        INSERT INTO transcription_fts(transcription_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
        INSERT INTO transcription_fts(rowid, text) VALUES (new.id, new.text);
    END;
    """,
    # 3: job priority (the line's; lower first), so 999 transcripts reach the CAD first
    # when a surge leaves a backlog of final jobs.
    """
    ALTER TABLE transcription_jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    DROP INDEX transcription_jobs_state;
    CREATE INDEX transcription_jobs_next ON transcription_jobs(state, priority, enqueued_at);
    """,
    # 4: the whole call as one document of normalised terms (transcription/normalise.py)
    # with each term's time, channel, confidence and original words, so words from two
    # segments match together and a hit's offset is its first matched word; the
    # vocabulary of indexed words with phonetic keys (fuzzy and phonetic expansion); the
    # previous versions of retranscribed transcripts. Filled by ensure_index().
    """
    CREATE TABLE transcription_call_index (
        id INTEGER PRIMARY KEY,
        call_id TEXT NOT NULL UNIQUE,
        terms TEXT NOT NULL,
        times BLOB NOT NULL,
        display TEXT NOT NULL
    );
    CREATE VIRTUAL TABLE transcription_call_fts USING fts5(
        terms, content='transcription_call_index', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2', prefix='2 3 4'
    );
    CREATE TRIGGER transcription_call_index_ai AFTER INSERT ON transcription_call_index BEGIN
        INSERT INTO transcription_call_fts(rowid, terms) VALUES (new.id, new.terms);
    END;
    CREATE TRIGGER transcription_call_index_ad AFTER DELETE ON transcription_call_index BEGIN
        INSERT INTO transcription_call_fts(transcription_call_fts, rowid, terms)
        VALUES ('delete', old.id, old.terms);
    END;
    CREATE TRIGGER transcription_call_index_au AFTER UPDATE ON transcription_call_index BEGIN
        INSERT INTO transcription_call_fts(transcription_call_fts, rowid, terms)
        VALUES ('delete', old.id, old.terms);
        INSERT INTO transcription_call_fts(rowid, terms) VALUES (new.id, new.terms);
    END;
    CREATE TABLE transcription_vocab (
        term TEXT PRIMARY KEY,
        phonetic TEXT NOT NULL,
        head TEXT NOT NULL,
        len INTEGER NOT NULL,
        calls INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX transcription_vocab_phonetic ON transcription_vocab(phonetic);
    CREATE INDEX transcription_vocab_head ON transcription_vocab(head, len);
    CREATE TABLE transcription_transcript_versions (
        id INTEGER PRIMARY KEY,
        call_id TEXT NOT NULL,
        engine TEXT NOT NULL,
        model TEXT NOT NULL,
        language TEXT NOT NULL,
        text TEXT NOT NULL,
        confidence REAL,
        duration REAL,
        recording_path TEXT,
        created_at REAL NOT NULL,
        replaced_at REAL NOT NULL,
        segments TEXT NOT NULL
    );
    CREATE INDEX transcription_transcript_versions_call ON transcription_transcript_versions(call_id, id);
    CREATE TABLE transcription_index_state (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
    """,
    # 5: the per-segment FTS5 index is no longer searched (the call index of migration 4
    # is): drop it and its triggers, halving the index work of every stored transcript.
    """
    DROP TRIGGER transcription_segments_ai;
    DROP TRIGGER transcription_segments_ad;
    DROP TRIGGER transcription_segments_au;
    DROP TABLE transcription_fts;
    """,
    # 6: the force's place and street names (``[transcription] hotwords``): a transcript
    # word that sounds like one of them also indexes the name (set_gazetteer).
    """
    CREATE TABLE transcription_gazetteer (name TEXT PRIMARY KEY) WITHOUT ROWID;
    """,
    # 7: the call index in partitions of at most PARTITION_ROWS rows, each its own FTS5
    # table, searched newest first within a budget (issue 15 item 4): the cost of a
    # search no longer grows with the backlog. ``at`` is the call's time (arrival, else
    # the transcript's); a partition covers the index rows from ``first_row`` up to the
    # next partition's, and knows the span of their times (for time filters and for
    # saying how far back a search looked). The single index of migration 4 becomes
    # partition 0 as it is (still searchable); ensure_partitions() then splits it.
    # Rows are written by index_call() / add_index_rows(), no longer by triggers.
    """
    ALTER TABLE transcription_call_index ADD COLUMN at REAL;
    CREATE INDEX transcription_call_index_at ON transcription_call_index(at);
    CREATE TABLE transcription_partitions (
        id INTEGER PRIMARY KEY,
        fts TEXT NOT NULL UNIQUE,
        first_row INTEGER NOT NULL UNIQUE,
        rows INTEGER NOT NULL DEFAULT 0,
        min_at REAL,
        max_at REAL
    );
    DROP TRIGGER transcription_call_index_ai;
    DROP TRIGGER transcription_call_index_ad;
    DROP TRIGGER transcription_call_index_au;
    INSERT INTO transcription_partitions(id, fts, first_row, rows)
        SELECT 0, 'transcription_call_fts', 0, count(*) FROM transcription_call_index;
    """,
]

PARTITION_ROWS = 50_000
"""Most index rows (calls) per partition: a search reads one partition's FTS5 index at a
time, newest first, so its cost is bounded by this, not by the backlog
(bench/transcription_search.py)."""
LEGACY_FTS = "transcription_call_fts"
"""The single index of migration 4: partition 0 until :func:`ensure_partitions` splits it."""

INDEX_VERSION = 2
"""Version of the call index's normalisation; a higher one reindexes every transcript
(at migration, or ``controlroom reindex``)."""
LOW_CONFIDENCE = 0.5
"""Words recognised with less confidence than this are shown as such in search hits
(and still indexed: an uncertain word may be the one an auditor needs)."""

MAX_ATTEMPTS = 3
"""A job that fails this many times stays ``failed`` (visible to operators)."""


def migrate(db: Database, *, gazetteer: Sequence[str] | None = None) -> None:
    """Migrate, store the gazetteer (when given: the configured ``hotwords``) and
    (re)index the transcripts once if the normalisation or the gazetteer changed."""
    from .pgschema import MIGRATIONS as PG_MIGRATIONS

    db.migrate(COMPONENT, MIGRATIONS, postgresql=PG_MIGRATIONS)
    if gazetteer is not None:
        set_gazetteer(db, gazetteer, reindex_now=False)
    ensure_partitions(db)
    ensure_index(db)


def set_gazetteer(db: Database, names: Sequence[str], *, reindex_now: bool = True) -> int:
    """Replace the stored gazetteer. When it changed, every transcript is reindexed
    (now, or by the next :func:`ensure_index` when ``reindex_now`` is false): returns
    the calls reindexed now."""
    wanted = sorted({n.strip() for n in names if n.strip()})
    with db.transaction() as conn:
        have = [r[0] for r in conn.execute("SELECT name FROM transcription_gazetteer ORDER BY name")]
        if have == wanted:
            return 0
        conn.execute("DELETE FROM transcription_gazetteer")
        conn.executemany("INSERT INTO transcription_gazetteer(name) VALUES (?)", [(n,) for n in wanted])
        conn.execute("UPDATE transcription_index_state SET version = 0 WHERE name = 'call_index'")
    return ensure_index(db) if reindex_now else 0


@functools.lru_cache(maxsize=4)
def _gazetteer(names: tuple[str, ...]) -> Gazetteer:
    return Gazetteer(names)


def load_gazetteer(conn: sqlite3.Connection) -> Gazetteer:
    """The stored gazetteer (built once per distinct list of names)."""
    return _gazetteer(tuple(r[0] for r in conn.execute(
        "SELECT name FROM transcription_gazetteer ORDER BY name")))


@dataclass(frozen=True)
class Segment:
    """A final segment as stored."""

    channel: str
    start: float
    end: float
    text: str
    confidence: float | None
    words: Sequence[Any] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "start": round(self.start, 3),
                "end": round(self.end, 3), "text": self.text,
                "confidence": None if self.confidence is None else round(self.confidence, 4)}


def segments_from(hyps: dict[str, list[Hypothesis]]) -> list[Segment]:
    """Merge per-channel final hypotheses into one time-ordered list."""
    segs = [Segment(ch, h.start, h.end, h.text, h.confidence,
                    [[w.word, round(w.start, 3), round(w.end, 3), round(w.confidence, 3)]
                     for w in h.words])
            for ch, hs in hyps.items() for h in hs if h.final and h.text]
    return sorted(segs, key=lambda s: (s.start, s.channel))


def full_text(segs: Sequence[Segment]) -> str:
    return "\n".join(f"{s.channel}: {s.text}" for s in segs)


def overall_confidence(segs: Sequence[Segment]) -> float | None:
    """Duration-weighted mean of the segments' confidences."""
    num = den = 0.0
    for s in segs:
        if s.confidence is not None:
            w = max(s.end - s.start, 0.01)
            num += s.confidence * w
            den += w
    return num / den if den else None


def save_transcript(db: Database, call_id: str, *, engine: str, model: str, language: str,
                    segments: Sequence[Segment], duration: float | None,
                    recording_path: str | None) -> dict[str, Any]:
    """Store the call's transcript and index it (the whole call, :func:`index_call`);
    a transcript it replaces (a retranscription) is kept in
    ``transcription_transcript_versions`` (:func:`transcript_versions`). Returns it as a dict."""
    text = full_text(segments)
    conf = overall_confidence(segments)
    with db.transaction() as conn:
        _archive(conn, call_id)
        conn.execute("DELETE FROM transcription_segments WHERE call_id=?", (call_id,))
        conn.execute(
            "INSERT INTO transcription_transcripts(call_id, engine, model, language,"
            " text, confidence, duration, recording_path, created_at) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(call_id) DO UPDATE SET engine=excluded.engine, model=excluded.model,"
            " language=excluded.language, text=excluded.text, confidence=excluded.confidence,"
            " duration=excluded.duration, recording_path=excluded.recording_path,"
            " created_at=excluded.created_at",
            (call_id, engine, model, language, text, conf, duration, recording_path, time.time()))
        conn.executemany(
            'INSERT INTO transcription_segments(call_id, channel, start, "end", text, confidence,'
            " words) VALUES (?,?,?,?,?,?,?)",
            [(call_id, s.channel, s.start, s.end, s.text, s.confidence, json.dumps(list(s.words)))
             for s in segments])
        index_call(conn, call_id, [(s.channel, s.start, s.end, s.text, s.confidence, list(s.words))
                                   for s in segments])
    return {"call_id": call_id, "engine": engine, "model": model, "language": language,
            "text": text, "confidence": conf, "duration": duration,
            "segments": [s.as_dict() for s in segments]}


def get_transcript(db: Database, call_id: str) -> dict[str, Any] | None:
    """The call's final transcript: engine, model, language, text, confidence, duration and
    ``segments`` (channel, start, end, text, confidence, words ``[word, start, end, conf]``)."""
    row = db.query_one("SELECT * FROM transcription_transcripts WHERE call_id=?", (call_id,))
    if row is None:
        return None
    segs = db.query('SELECT channel, start, "end", text, confidence, words FROM'
                    " transcription_segments WHERE call_id=? ORDER BY start, id", (call_id,))
    out = dict(row)
    out["segments"] = [{"channel": s["channel"], "start": s["start"], "end": s["end"],
                        "text": s["text"], "confidence": s["confidence"],
                        "words": json.loads(s["words"]) if s["words"] else []} for s in segs]
    return out


def _archive(conn: sqlite3.Connection, call_id: str) -> None:
    """Copy the call's current transcript (and its segments) into the versions table."""
    row = conn.execute("SELECT * FROM transcription_transcripts WHERE call_id=?", (call_id,)).fetchone()
    if row is None:
        return
    segs = conn.execute('SELECT channel, start, "end", text, confidence, words FROM'
                        " transcription_segments WHERE call_id=? ORDER BY start, id", (call_id,)).fetchall()
    conn.execute(
        "INSERT INTO transcription_transcript_versions(call_id, engine, model, language, text,"
        " confidence, duration, recording_path, created_at, replaced_at, segments)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (call_id, row["engine"], row["model"], row["language"], row["text"], row["confidence"],
         row["duration"], row["recording_path"], row["created_at"], time.time(),
         json.dumps([{"channel": r[0], "start": r[1], "end": r[2], "text": r[3],
                      "confidence": r[4], "words": json.loads(r[5]) if r[5] else []}
                     for r in segs])))


def transcript_versions(db: Database, call_id: str) -> list[dict[str, Any]]:
    """Earlier transcripts of the call (replaced by retranscription), oldest first:
    engine, model, language, text, confidence, created_at, replaced_at, segments."""
    out = []
    for r in db.query("SELECT * FROM transcription_transcript_versions WHERE call_id=?"
                      " ORDER BY id", (call_id,)):
        d = dict(r)
        d["segments"] = json.loads(d["segments"])
        out.append(d)
    return out


# -- the call index -----------------------------------------------------------------------

CHANNELS = ("caller", "handler")


@dataclass(frozen=True)
class IndexedTerm:
    """One term of a call's index: where it was said, how surely, from which words."""

    term: str
    start: float
    end: float
    channel: str
    confidence: float | None
    display: str
    """The words as transcribed ("two thousand", "AB12 CDE"), with any punctuation-only
    words after them; "" for a further term of the same words ("<b>shouting</b>" makes
    three terms: the first shows the word); :data:`ALTERNATIVE` for a gazetteer name
    the words before it sound like (shown by those words)."""

    @property
    def low_confidence(self) -> bool:
        return self.confidence is not None and self.confidence < LOW_CONFIDENCE

    @property
    def alternative(self) -> bool:
        """A gazetteer name added for the words before it, not a word heard."""
        return self.display == ALTERNATIVE


ALTERNATIVE = "\x1e"
"""Display of a gazetteer name indexed as an alternative of the words before it."""


SegmentRow = tuple[str, float, float, str, "float | None", Sequence[Any]]
"""(channel, start, end, text, confidence, words ``[[word, start, end, conf], ...]``)."""


def _words_of(seg: SegmentRow) -> list[tuple[str, float, float, float | None]]:
    channel, start, end, text, conf, words = seg
    out = []
    for w in words or ():
        word = str(w[0]).strip()
        if word:
            out.append((word, float(w[1]), float(w[2]), None if w[3] is None else float(w[3])))
    if out:
        return out
    # No word times (an engine without them, older rows): spread the words evenly.
    raw = text.split()
    step = (end - start) / max(1, len(raw))
    return [(w, start + i * step, start + (i + 1) * step, conf) for i, w in enumerate(raw)]


def index_terms(segments: Iterable[SegmentRow], gazetteer: Gazetteer | None = None
                ) -> list[IndexedTerm]:
    """The call as one sequence of terms: the caller's words in time order, then the
    handler's (so a phrase or a registration spoken across two segments stays whole);
    after words that sound like a ``gazetteer`` name, the name's terms
    (:data:`ALTERNATIVE`, with the words' times and least confidence)."""
    by_channel: dict[str, list[tuple[str, float, float, float | None]]] = {c: [] for c in CHANNELS}
    for seg in sorted(segments, key=lambda s: (s[1], s[2])):
        by_channel.setdefault(seg[0], []).extend(_words_of(seg))
    out: list[IndexedTerm] = []
    for channel, words in by_channel.items():
        ts = terms([w[0] for w in words])
        nxt = [len(words)] * len(ts)  # first word of the next term made from other words
        for k in range(len(ts) - 2, -1, -1):
            nxt[k] = ts[k + 1].first if ts[k + 1].first > ts[k].last else nxt[k + 1]
        covered = -1
        chan: list[IndexedTerm] = []
        for k, t in enumerate(ts):
            if t.first == t.last:
                w = words[t.first]
                start, end, conf = w[1], w[2], w[3]
            else:
                span = words[t.first:t.last + 1]
                confs = [w[3] for w in span if w[3] is not None]
                start, end, conf = span[0][1], span[-1][2], min(confs) if confs else None
            if t.first <= covered:
                display = ""  # a second term of the same words ("<b>shouting</b>")
            elif nxt[k] == t.first + 1 and k:
                display = words[t.first][0]
            else:  # the term's words and the punctuation-only words up to the next term
                display = " ".join(w[0] for w in words[t.first if k else 0:nxt[k]])
            covered = max(covered, t.last)
            chan.append(IndexedTerm(t.text, start, end, channel, conf, display))
        out += _with_alternatives(chan, gazetteer) if gazetteer else chan
    return out


def _with_alternatives(items: list[IndexedTerm], gazetteer: Gazetteer) -> list[IndexedTerm]:
    after: dict[int, list[IndexedTerm]] = {}
    for m in gazetteer.alternatives([it.term for it in items]):
        span = items[m.first:m.last + 1]
        confs = [it.confidence for it in span if it.confidence is not None]
        after.setdefault(m.last, []).extend(
            IndexedTerm(t, span[0].start, span[-1].end, span[0].channel,
                        min(confs) if confs else None, ALTERNATIVE) for t in m.terms)
    if not after:
        return items
    out: list[IndexedTerm] = []
    for k, it in enumerate(items):
        out.append(it)
        out += after.get(k, ())
    return out


def encode_index(items: Sequence[IndexedTerm]) -> tuple[str, bytes, str]:
    """(terms text for FTS5, packed times/channel/confidence, displays) of a call."""
    n = len(items)
    times = struct.pack(f"<{2 * n}f", *(v for it in items for v in (it.start, it.end)))
    info = bytes((CHANNELS.index(it.channel) if it.channel in CHANNELS else 0) << 7
                 | (127 if it.confidence is None else max(0, min(100, round(it.confidence * 100))))
                 for it in items)
    return " ".join(it.term for it in items), times + info, "\x1f".join(it.display for it in items)


class IndexedCall:
    """A call's index row, decoded lazily: a search hit reads a few terms of it."""

    def __init__(self, terms_text: str, blob: bytes, display: str) -> None:
        self.terms = terms_text.split(" ") if terms_text else []
        n = len(self.terms)
        self._times = struct.unpack(f"<{2 * n}f", blob[: 8 * n])
        self._info = blob[8 * n:]
        self.shown = display.split("\x1f") if display else []
        if len(self.shown) < n:
            self.shown += self.terms[len(self.shown):]
        self.alternatives = frozenset(i for i, d in enumerate(self.shown) if d == ALTERNATIVE)
        """Positions of gazetteer names added as alternatives (not shown: the words
        before them show them)."""
        for i in self.alternatives:
            self.shown[i] = ""

    def __len__(self) -> int:
        return len(self.terms)

    def start(self, i: int) -> float:
        return round(self._times[2 * i], 3)

    def channel(self, i: int) -> str:
        return CHANNELS[self._info[i] >> 7]

    def __getitem__(self, i: int) -> IndexedTerm:
        c = self._info[i] & 127
        return IndexedTerm(self.terms[i], round(self._times[2 * i], 3),
                           round(self._times[2 * i + 1], 3), CHANNELS[self._info[i] >> 7],
                           None if c == 127 else c / 100,
                           ALTERNATIVE if i in self.alternatives else self.shown[i])


def decode_index(terms_text: str, blob: bytes, display: str) -> list[IndexedTerm]:
    """The inverse of :func:`encode_index`."""
    doc = IndexedCall(terms_text, blob, display)
    return [doc[i] for i in range(len(doc))]


def vocabulary_terms(terms_text: str) -> Counter[str]:
    """Distinct words of an index row that go into the fuzzy vocabulary (letters only,
    at least 3: numbers and codes are matched exactly or by prefix, never fuzzily)."""
    return Counter(t for t in set(terms_text.split(" ")) if len(t) >= 3 and t.isalpha())


def vocab_add(conn: sqlite3.Connection, counts: Counter[str], sign: int = 1) -> None:
    """Count each word in (``sign`` 1) or out (-1) of the vocabulary."""
    if sign > 0:
        conn.executemany(
            "INSERT INTO transcription_vocab(term, phonetic, head, len, calls) VALUES (?,?,?,?,?)"
            " ON CONFLICT(term) DO UPDATE SET calls = transcription_vocab.calls + excluded.calls,"
            " phonetic = excluded.phonetic",  # a new phonetic_key (INDEX_VERSION) replaces the old
            [(t, phonetic_key(t), t[0], len(t), n) for t, n in counts.items()])
    else:
        conn.executemany("UPDATE transcription_vocab SET calls = calls - ? WHERE term = ?",
                         [(n, t) for t, n in counts.items()])
        conn.executemany("DELETE FROM transcription_vocab WHERE term = ? AND calls <= 0",
                         [(t,) for t in counts])


def index_call(conn: sqlite3.Connection, call_id: str, segments: Iterable[SegmentRow],
               gazetteer: Gazetteer | None = None) -> None:
    """(Re)write the call's row in the call index and the vocabulary (in ``conn``'s
    transaction), with the stored gazetteer's names as alternatives (``gazetteer``:
    another one). A call without words has no row."""
    partitioned = isinstance(conn, sqlite3.Connection)  # PostgreSQL: one GIN index
    old = conn.execute("SELECT id, terms FROM transcription_call_index WHERE call_id=?",
                       (call_id,)).fetchone()
    if old is not None:
        vocab_add(conn, vocabulary_terms(old[1]), -1)
        if partitioned:
            _fts_delete(conn, old[0], old[1])
        conn.execute("DELETE FROM transcription_call_index WHERE call_id=?", (call_id,))
    segments = list(segments)
    if not segments:
        return
    items = index_terms(segments, load_gazetteer(conn) if gazetteer is None else gazetteer)
    if not items:
        return
    text, blob, display = encode_index(items)
    if partitioned:
        add_index_rows(conn, [(call_id, _call_time(conn, call_id), text, blob, display)])
    else:
        conn.execute("INSERT INTO transcription_call_index(call_id, terms, times, display)"
                     " VALUES (?,?,?,?)", (call_id, text, blob, display))
    vocab_add(conn, vocabulary_terms(text))


# -- partitions (SQLite) ------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    """One FTS5 table of the call index: rows ``first_row`` .. ``last_row`` (None: the
    newest, open partition), calls' times ``min_at`` .. ``max_at`` (None: unknown)."""

    id: int
    fts: str
    first_row: int
    last_row: int | None
    rows: int
    min_at: float | None
    max_at: float | None

    def overlaps(self, since: float | None, until: float | None) -> bool:
        """Might hold calls with ``since <= at < until``?"""
        if since is not None and self.max_at is not None and self.max_at < since:
            return False
        return not (until is not None and self.min_at is not None and self.min_at >= until)


def partitions(conn: sqlite3.Connection) -> list[Partition]:
    """The call index's partitions, newest first."""
    rows = conn.execute("SELECT id, fts, first_row, rows, min_at, max_at FROM"
                        " transcription_partitions ORDER BY first_row DESC").fetchall()
    out: list[Partition] = []
    nxt: int | None = None
    for r in rows:
        out.append(Partition(r[0], r[1], r[2], None if nxt is None else nxt - 1, r[3], r[4], r[5]))
        nxt = r[2]
    return out


def _fts_name(pid: int) -> str:
    return f"transcription_call_fts_p{pid}"


def _create_partition(conn: sqlite3.Connection, first_row: int) -> tuple[int, str]:
    pid = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM transcription_partitions").fetchone()[0]
    fts = _fts_name(pid)
    conn.execute(f"CREATE VIRTUAL TABLE {fts} USING fts5(terms, content='transcription_call_index',"
                 " content_rowid='id', tokenize='porter unicode61 remove_diacritics 2',"
                 " prefix='2 3 4')")
    conn.execute("INSERT INTO transcription_partitions(id, fts, first_row, rows) VALUES (?,?,?,0)",
                 (pid, fts, first_row))
    return pid, fts


def _partition_of(conn: sqlite3.Connection, row_id: int) -> tuple[int, str] | None:
    r = conn.execute("SELECT id, fts FROM transcription_partitions WHERE first_row <= ?"
                     " ORDER BY first_row DESC LIMIT 1", (row_id,)).fetchone()
    return (r[0], r[1]) if r else None


def _fts_delete(conn: sqlite3.Connection, row_id: int, terms_text: str) -> None:
    part = _partition_of(conn, row_id)
    if part is None:
        return
    conn.execute(f"INSERT INTO {part[1]}({part[1]}, rowid, terms) VALUES ('delete', ?, ?)",
                 (row_id, terms_text))
    conn.execute("UPDATE transcription_partitions SET rows = max(rows - 1, 0) WHERE id = ?", (part[0],))


def _call_time(conn: sqlite3.Connection, call_id: str) -> float:
    """The call's arrival (its ``calls`` row, when this database has it), else when its
    transcript was stored, else now."""
    for sql in ("SELECT arrived_at FROM calls WHERE call_id = ?",
                "SELECT created_at FROM transcription_transcripts WHERE call_id = ?"):
        try:
            r = conn.execute(sql, (call_id,)).fetchone()
        except sqlite3.OperationalError:  # no calls table in a transcripts-only database
            continue
        if r is not None and r[0] is not None:
            return float(r[0])
    return time.time()


def add_index_rows(conn: sqlite3.Connection, rows: Sequence[tuple[str, float, str, bytes, str]],
                   *, partition_rows: int | None = None) -> None:
    """Insert call index rows ``(call_id, at, terms, times, display)`` (no row of these
    calls may exist) into the content table and their partitions' FTS5 tables, starting
    a new partition whenever the newest holds ``partition_rows`` (PARTITION_ROWS)."""
    cap = PARTITION_ROWS if partition_rows is None else partition_rows
    i = 0
    while i < len(rows):
        next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM transcription_call_index").fetchone()[0]
        # A row belongs to the partition whose range holds its id: the newest, or, when
        # the newest rows were deleted, the one below the gap they left.
        part = conn.execute("SELECT id, fts, first_row, rows FROM transcription_partitions"
                            " WHERE first_row <= ? ORDER BY first_row DESC LIMIT 1", (next_id,)).fetchone()
        above = conn.execute("SELECT min(first_row) FROM transcription_partitions WHERE first_row > ?",
                             (next_id,)).fetchone()[0]
        if part is None or (above is None and (part[3] >= cap or part[1] == LEGACY_FTS)):
            pid, fts = _create_partition(conn, next_id)
            part = (pid, fts, next_id, 0)
        room = above - next_id if above is not None else cap - part[3]
        take = rows[i:i + max(1, room)]
        conn.executemany("INSERT INTO transcription_call_index(id, call_id, at, terms, times, display)"
                         " VALUES (?,?,?,?,?,?)",
                         [(next_id + k, r[0], r[1], r[2], r[3], r[4]) for k, r in enumerate(take)])
        conn.executemany(f"INSERT INTO {part[1]}(rowid, terms) VALUES (?, ?)",
                         [(next_id + k, r[2]) for k, r in enumerate(take)])
        ats = [r[1] for r in take]
        conn.execute("UPDATE transcription_partitions SET rows = rows + ?, min_at = min(coalesce(min_at, ?), ?),"
                     " max_at = max(coalesce(max_at, ?), ?) WHERE id = ?",
                     (len(take), min(ats), min(ats), max(ats), max(ats), part[0]))
        i += len(take)


def optimize_partitions(conn: sqlite3.Connection) -> None:
    """Merge each partition's FTS5 segments (after a bulk load)."""
    for p in partitions(conn):
        conn.execute(f"INSERT INTO {p.fts}({p.fts}) VALUES ('optimize')")


def ensure_partitions(db: Database, *, partition_rows: int | None = None) -> int:
    """Split the single index of a database made before partitions (partition 0,
    :data:`LEGACY_FTS`) into partitions of ``partition_rows``, in one transaction (a
    crash leaves it whole, to be split at the next start), giving each row its call's
    time. Until then it is searched as one partition. Returns the rows moved."""
    if db.dialect != "sqlite":
        return 0
    if db.query_one("SELECT 1 FROM transcription_partitions WHERE fts = ?", (LEGACY_FTS,)) is None:
        return 0
    cap = PARTITION_ROWS if partition_rows is None else partition_rows
    with db.transaction() as conn:
        try:
            conn.execute("UPDATE transcription_call_index SET at = (SELECT c.arrived_at FROM calls c"
                         " WHERE c.call_id = transcription_call_index.call_id) WHERE at IS NULL")
        except sqlite3.OperationalError:
            pass  # no calls table here
        conn.execute("UPDATE transcription_call_index SET at = coalesce((SELECT t.created_at FROM"
                     " transcription_transcripts t WHERE t.call_id = transcription_call_index.call_id),"
                     " ?) WHERE at IS NULL", (time.time(),))
        above = conn.execute("SELECT min(first_row) FROM transcription_partitions WHERE fts != ?",
                             (LEGACY_FTS,)).fetchone()[0]  # rows of newer partitions stay
        ids = [r[0] for r in conn.execute("SELECT id FROM transcription_call_index WHERE id < ?"
                                          " ORDER BY id", (above if above is not None else 2**62,))]
        conn.execute("DELETE FROM transcription_partitions WHERE fts = ?", (LEGACY_FTS,))
        conn.execute(f"DROP TABLE {LEGACY_FTS}")
        for k in range(0, len(ids), cap):
            lo, hi = ids[k], ids[min(k + cap, len(ids)) - 1]
            pid, fts = _create_partition(conn, 0 if k == 0 else lo)
            conn.execute(f"INSERT INTO {fts}(rowid, terms) SELECT id, terms FROM transcription_call_index"
                         " WHERE id BETWEEN ? AND ?", (lo, hi))
            conn.execute("UPDATE transcription_partitions SET (rows, min_at, max_at) = (SELECT count(*),"
                         " min(at), max(at) FROM transcription_call_index WHERE id BETWEEN ? AND ?)"
                         " WHERE id = ?", (lo, hi, pid))
    if ids:
        log.info("call index split into partitions", rows=len(ids), partition_rows=cap)
    return len(ids)


def reindex(db: Database, call_ids: Sequence[str] | None = None, *, batch: int = 2000) -> int:
    """Rebuild the call index of these calls (all transcripts when None), oldest first
    so the index's row order stays the calls' order. Returns the calls indexed."""
    if call_ids is None:
        ids = [r[0] for r in db.query("SELECT call_id FROM transcription_transcripts"
                                      " ORDER BY created_at, "
                                      + ("rowid" if db.dialect == "sqlite" else "call_id"))]
    else:
        ids = list(call_ids)
    done = 0
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        with db.transaction() as conn:
            rows = conn.execute(
                'SELECT call_id, channel, start, "end", text, confidence, words FROM'
                f" transcription_segments WHERE call_id IN ({','.join('?' * len(chunk))})"
                " ORDER BY call_id, start, id", chunk).fetchall()
            segs: dict[str, list[SegmentRow]] = {c: [] for c in chunk}
            for r in rows:
                segs[r[0]].append((r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else []))
            gazetteer = load_gazetteer(conn)
            for cid in chunk:
                index_call(conn, cid, segs[cid], gazetteer)
        done += len(chunk)
        if len(ids) > batch:
            log.info("reindexing transcripts", done=done, total=len(ids))
    return done


def ensure_index(db: Database) -> int:
    """Index every transcript once per :data:`INDEX_VERSION` (a migration or a new
    normalisation); returns the calls indexed now (0 when up to date)."""
    row = db.query_one("SELECT version FROM transcription_index_state WHERE name='call_index'")
    if row is not None and row[0] >= INDEX_VERSION:
        return 0
    n = reindex(db)
    with db.transaction() as conn:
        conn.execute("INSERT INTO transcription_index_state(name, version) VALUES ('call_index', ?)"
                     " ON CONFLICT(name) DO UPDATE SET version = excluded.version", (INDEX_VERSION,))
    return n


# -- jobs ------------------------------------------------------------------------------

def enqueue_job(conn: sqlite3.Connection, call_id: str, recording_path: str,
                priority: int = 0) -> None:
    """Queue (or re-queue) the call's final transcription; idempotent per call. Jobs run
    by ``priority`` (lower first, as line priorities), then in arrival order."""
    conn.execute(
        "INSERT INTO transcription_jobs(call_id, recording_path, state, attempts, enqueued_at,"
        " priority) VALUES (?, ?, 'queued', 0, ?, ?) ON CONFLICT(call_id) DO UPDATE SET"
        " recording_path=excluded.recording_path, state='queued', attempts=0, error=NULL,"
        " enqueued_at=excluded.enqueued_at, started_at=NULL, finished_at=NULL,"
        " priority=excluded.priority",
        (call_id, recording_path, time.time(), priority))


def recover_jobs(db: Database) -> int:
    """At start-up: jobs left ``running`` by a crash or stop go back to ``queued``."""
    with db.transaction() as conn:
        return conn.execute("UPDATE transcription_jobs SET state='queued' WHERE state='running'"
                            ).rowcount


def claim_job(db: Database) -> tuple[str, str] | None:
    """Take the next queued job, most urgent then oldest (marks it running); returns
    (call_id, recording_path)."""
    with db.transaction() as conn:
        row = conn.execute("SELECT call_id, recording_path FROM transcription_jobs"
                           " WHERE state='queued' ORDER BY priority, enqueued_at LIMIT 1").fetchone()
        if row is None:
            return None
        conn.execute("UPDATE transcription_jobs SET state='running', attempts=attempts+1,"
                     " started_at=? WHERE call_id=?", (time.time(), row[0]))
        return row[0], row[1]


def finish_job(db: Database, call_id: str, *, error: str | None = None,
               permanent: bool = False, requeue: bool = False) -> None:
    """Mark done, failed (permanent or after MAX_ATTEMPTS) or back to queued."""
    with db.transaction() as conn:
        if requeue:
            conn.execute("UPDATE transcription_jobs SET state='queued', attempts=max(attempts-1, 0)"
                         " WHERE call_id=?", (call_id,))
        elif error is None:
            conn.execute("UPDATE transcription_jobs SET state='done', error=NULL, finished_at=?"
                         " WHERE call_id=?", (time.time(), call_id))
        else:
            conn.execute(
                "UPDATE transcription_jobs SET error=?, finished_at=?, state=CASE WHEN ? OR"
                " attempts >= ? THEN 'failed' ELSE 'queued' END WHERE call_id=?",
                (error, time.time(), permanent, MAX_ATTEMPTS, call_id))


def job_state(db: Database, call_id: str) -> dict[str, Any] | None:
    row = db.query_one("SELECT * FROM transcription_jobs WHERE call_id=?", (call_id,))
    return dict(row) if row else None
