"""Transcript search: ranked (bm25), highlighted, with the time offset of the hit.

The query language is small and can never produce an FTS5 syntax error, because we
build the FTS5 expression ourselves from tokens (every term is quoted):

* ``burglary station`` both words (AND), any order; words are stemmed (porter), so
  ``burglaries`` finds ``burglary``;
* ``"station road"`` a phrase (an unbalanced ``"`` runs to the end of the query);
* ``knife OR gun`` either; ``-test`` excludes; ``burg*`` prefix.

A query with nothing searchable (empty, punctuation only, exclusions only) raises
:class:`SearchQueryError` with a message fit for the auditor's screen.

Each hit is a call: its best-ranked segment gives the score and the snippet; ``offset``
is where the first matching segment starts (seconds from answer), for playback.
:class:`TranscriptSearch` is the SQLite FTS5 implementation of :class:`SearchBackend`;
a PostgreSQL full-text backend can implement the same protocol later.

``search`` reads on a separate connection and can take tens of milliseconds on a big
index: call it from a thread (``await asyncio.to_thread(search.search, ...)`` or
:meth:`TranscriptSearch.asearch`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import html
import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from store.db import Database

from .errors import SearchQueryError

_TOKEN = re.compile(r'"([^"]*)"?|(\S+)')
_WORDCHAR = re.compile(r"\w", re.UNICODE)
MAX_QUERY_CHARS = 500
MAX_LIMIT = 200


@dataclass(frozen=True)
class Hit:
    """One call whose transcript matches."""

    call_id: str
    score: float
    """bm25 relevance of the best segment (higher is better)."""
    snippet: str
    """HTML-safe text of the best segment with matches wrapped in ``<mark>``."""
    offset: float
    """Seconds from answer where the first matching segment starts."""
    channel: str
    """Channel of the first matching segment: ``caller`` or ``handler``."""
    line: str | None
    caller: str | None
    handler_id: str | None
    arrived_at: float | None
    incident_number: str | None


class SearchBackend(Protocol):
    def search(self, query: str, *, line: str | None = None, caller: str | None = None,
               handler_id: str | None = None, since: float | datetime | None = None,
               until: float | datetime | None = None, incident: str | None = None,
               limit: int = 20) -> list[Hit]: ...


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def to_fts_query(query: str) -> str:
    """Translate the user's query into a safe FTS5 MATCH expression.

    >>> to_fts_query('knife OR gun "station road" -test burg*')
    '("knife" OR "gun") AND "station road" AND "burg"* NOT ("test")'
    """
    if len(query) > MAX_QUERY_CHARS:
        raise SearchQueryError(f"query is too long ({len(query)} characters; at most {MAX_QUERY_CHARS})")
    groups: list[list[str]] = []  # AND of ORs
    negatives: list[str] = []
    pending_or = False
    for m in _TOKEN.finditer(query):
        phrase, word = m.group(1), m.group(2)
        if word == "OR" and groups:
            pending_or = True
            continue
        negate = False
        prefix = False
        if phrase is not None:
            text = phrase
        else:
            text = word
            if text.startswith("-") and len(text) > 1:
                negate, text = True, text[1:]
            if text.endswith("*"):
                prefix, text = True, text.rstrip("*")
        if not _WORDCHAR.search(text):
            continue  # punctuation only: nothing the tokenizer would index
        expr = _quote(text.strip()) + ("*" if prefix else "")
        if negate:
            negatives.append(expr)
        elif pending_or:
            groups[-1].append(expr)
        else:
            groups.append([expr])
        pending_or = False
    if not groups:
        if negatives:
            raise SearchQueryError("query needs at least one word to find (exclusions alone match nothing)")
        raise SearchQueryError(f"query has no words to search for: {query!r}")
    out = " AND ".join(g[0] if len(g) == 1 else "(" + " OR ".join(g) + ")" for g in groups)
    if negatives:
        out += " NOT (" + " OR ".join(negatives) + ")"
    return out


def _epoch(v: float | datetime | None) -> float | None:
    if v is None:
        return None
    return v.timestamp() if isinstance(v, datetime) else float(v)


def _highlight(raw: str) -> str:
    return html.escape(raw, quote=False).replace("\x02", "<mark>").replace("\x03", "</mark>")


class TranscriptSearch:
    """SQLite FTS5 search over final transcripts, filtered by the ``calls`` row."""

    RANGE_SPAN = 50_000
    SPARSE_RANKED = 8

    def __init__(self, db: Database, *, max_candidates: int = 1000,
                 calls_first_max: int = 1000) -> None:
        self._db = db
        self._local = threading.local()
        self.max_candidates = max_candidates
        """Most matching segments ranked per query (the newest ones)."""
        self.calls_first_max = calls_first_max
        """Filters leaving at most this many calls are applied before the text match."""

    def _conn(self) -> sqlite3.Connection | None:
        if self._db.path == ":memory:":
            return None  # a reader would open a different (empty) in-memory database
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = self._db.connect_reader()
        return c

    def _q(self, sql: str, params: list[Any] | tuple[Any, ...]) -> list[sqlite3.Row]:
        conn = self._conn()
        if conn is None:
            return self._db.query(sql, params)
        return conn.execute(sql, params).fetchall()

    def search(self, query: str, *, line: str | None = None, caller: str | None = None,
               handler_id: str | None = None, since: float | datetime | None = None,
               until: float | datetime | None = None, incident: str | None = None,
               limit: int = 20) -> list[Hit]:
        """Best calls first. Filters apply to the ``calls`` row (``since`` inclusive,
        ``until`` exclusive, on ``arrived_at``); a filtered search skips transcripts with
        no call row. Raises :class:`SearchQueryError` for unusable queries.

        Bounded work, whatever the index size: relevance (bm25) is computed for at most
        ``max_candidates`` matching segments, the newest ones (segment ids grow with
        time). A rare word is therefore ranked over all its matches; a word found in
        hundreds of thousands of calls is ranked among its newest matches: add words or
        filters to reach further back. Selective filters (a caller, an incident, a
        handler's day) are applied first, through the ``calls`` indexes.
        """
        match = to_fts_query(query)
        limit = max(1, min(int(limit), MAX_LIMIT))
        where: list[str] = []
        params: list[Any] = []
        for col, val in (("c.line", line), ("c.caller", caller), ("c.handler_id", handler_id),
                         ("c.incident_number", incident)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if since is not None:
            where.append("c.arrived_at >= ?")
            params.append(_epoch(since))
        if until is not None:
            where.append("c.arrived_at < ?")
            params.append(_epoch(until))
        try:
            cands = self._candidates(match, where, params)
        except sqlite3.OperationalError as exc:  # defensive: we built the expression
            raise SearchQueryError(f"query cannot be searched: {exc}") from None
        best: dict[str, tuple[float, int, float]] = {}  # call_id -> (rank, seg id, start)
        for seg_id, rank, call_id, start in cands:
            if call_id not in best or rank < best[call_id][0]:
                best[call_id] = (rank, seg_id, start)
        top = sorted(best.items(), key=lambda kv: (kv[1][0], -kv[1][1]))[:limit]
        hits = []
        for call_id, (rank, seg_id, start) in top:
            c = self._q("SELECT line, caller, handler_id, arrived_at, incident_number FROM calls"
                        " WHERE call_id = ?", (call_id,))
            row = c[0] if c else None
            snip = self._q("SELECT snippet(transcription_fts, 0, char(2), char(3), '…', 16)"
                           " FROM transcription_fts WHERE transcription_fts MATCH ? AND rowid = ?",
                           (match, seg_id))
            first_at, first_ch = self._first_hit(match, call_id, start)
            hits.append(Hit(call_id=call_id, score=round(-rank, 4),
                            snippet=_highlight(snip[0][0]) if snip else "",
                            offset=first_at, channel=first_ch,
                            line=row["line"] if row else None,
                            caller=row["caller"] if row else None,
                            handler_id=row["handler_id"] if row else None,
                            arrived_at=row["arrived_at"] if row else None,
                            incident_number=row["incident_number"] if row else None))
        return hits

    def _candidates(self, match: str, where: list[str], params: list[Any]
                    ) -> list[tuple[int, float, str, float]]:
        """(segment id, bm25 rank, call_id, start) of at most max_candidates matches."""
        n = self.max_candidates
        if where:
            # Selective filter? Count the calls it leaves, up to a cap, via calls' indexes.
            cond = " AND ".join(where)
            few = self._q(f"SELECT c.call_id FROM calls c WHERE {cond}"
                          f" ORDER BY c.arrived_at DESC LIMIT {self.calls_first_max + 1}", params)
            if len(few) <= self.calls_first_max:
                if not few:
                    return []
                segs = {r[0]: (r[1], r[2]) for r in self._q(
                    "SELECT s.id, s.call_id, s.start FROM transcription_segments s WHERE s.call_id IN"
                    f" ({','.join('?' * len(few))})", [r[0] for r in few])}
                return self._rank_ids(match, segs)
            return [tuple(r) for r in self._q(
                "SELECT f.rowid, f.rank, s.call_id, s.start FROM transcription_fts f"
                " JOIN transcription_segments s ON s.id = f.rowid"
                " JOIN calls c ON c.call_id = s.call_id"
                f" WHERE transcription_fts MATCH ? AND {cond} ORDER BY f.rowid DESC LIMIT {n}",
                [match, *params])]
        # rank is computed lazily, only for the rows the LIMIT lets through.
        return [tuple(r) for r in self._q(
            "SELECT f.rowid, f.rank, s.call_id, s.start FROM transcription_fts f"
            " JOIN transcription_segments s ON s.id = f.rowid"
            f" WHERE transcription_fts MATCH ? ORDER BY f.rowid DESC LIMIT {n}", (match,))]

    def _rank_ids(self, match: str, segs: dict[int, tuple[str, float]]
                  ) -> list[tuple[int, float, str, float]]:
        """Match and rank a known set of segments (the calls-first path).

        bm25 recomputes its IDF (a scan of each term's whole doclist) in every statement,
        so ranking segment by segment costs 1-15 ms each for a common word. We test the
        match per rowid without rank (an index seek), then rank the matches in ONE
        statement over their rowid range when it spans at most RANGE_SPAN rows (e.g. a
        handler's day), one by one when there are few, else not at all (newest first).
        """
        matched = [i for i in sorted(segs) if self._q(
            "SELECT 1 FROM transcription_fts WHERE transcription_fts MATCH ? AND rowid = ?",
            (match, i))]
        if not matched:
            return []
        lo, hi = matched[0], matched[-1]
        if hi - lo <= self.RANGE_SPAN:
            ranks = {r[0]: r[1] for r in self._q(
                "SELECT rowid, rank FROM transcription_fts WHERE transcription_fts MATCH ?"
                " AND rowid BETWEEN ? AND ?", (match, lo, hi))}
        elif len(matched) <= self.SPARSE_RANKED:
            ranks = {i: self._q("SELECT rank FROM transcription_fts WHERE transcription_fts"
                                " MATCH ? AND rowid = ?", (match, i))[0][0] for i in matched}
        else:  # many matches spread over the whole index: newest first, score 0
            ranks = dict.fromkeys(matched, 0.0)
        return [(i, ranks[i], segs[i][0], segs[i][1]) for i in matched]

    def _first_hit(self, match: str, call_id: str, best_start: float) -> tuple[float, str]:
        # Only segments that start no later than the best one can be the first hit; check
        # each by rowid (an indexed FTS5 lookup), never by scanning the whole match set.
        segs = self._q("SELECT id, start, channel FROM transcription_segments"
                       " WHERE call_id = ? AND start <= ? ORDER BY start, id", (call_id, best_start))
        for s in segs:
            if self._q("SELECT 1 FROM transcription_fts WHERE transcription_fts MATCH ?"
                       " AND rowid = ?", (match, s["id"])):
                return float(s["start"]), s["channel"]
        return float(best_start), ""

    async def asearch(self, query: str, **filters: Any) -> list[Hit]:
        """:meth:`search` in a worker thread (for the web handlers)."""
        return await asyncio.to_thread(self.search, query, **filters)
