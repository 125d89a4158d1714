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

Bounded work on a big index, and said so in each hit: at most ``max_candidates`` (1000)
matching segments are ranked, the newest (``Hit.ranked_within_recent``, with
``Hit.matches_estimate``). FTS5's bm25 counts each query word's documents by reading all
its occurrences, ~55 ms for "the" over a million calls and growing with the index; for
such words we compute the same bm25 ourselves with document frequencies estimated from
their 64 newest matches (``Hit.scoring == "bm25-estimated-idf"``), which costs the same
whatever the index size.
:class:`TranscriptSearch` is the SQLite FTS5 implementation of :class:`SearchBackend`;
a PostgreSQL full-text backend can implement the same protocol later.

``search`` reads on a separate connection and can take tens of milliseconds on a big
index: call it from a thread (``await asyncio.to_thread(search.search, ...)`` or
:meth:`TranscriptSearch.asearch`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import math
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
_WORDS = re.compile(r"[^\W_]+", re.UNICODE)
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
    ranked_within_recent: int | None = None
    """None: every matching segment was considered. N: the query matched more segments
    than the search ranks (``max_candidates``), so only the newest N matching segments
    were ranked and older calls may match too: add words, a filter or a date range."""
    matches_estimate: int | None = None
    """Matching segments in the index (over the filtered calls, if few): exact below
    ``max_candidates``, else estimated from how densely the newest matches occur."""
    scoring: str = "bm25"
    """``bm25``: FTS5's bm25 with statistics of the whole index. ``bm25-estimated-idf``:
    the same formula, but with document frequencies estimated from the density of each
    term's newest matches, because the query's words are so frequent (more than
    ``max_idf_scan`` occurrences) that counting them exactly would read every occurrence
    (~55 ms for "the" in a million calls). Scores are close to, not identical with,
    exact bm25. ``newest-first``: not ranked (score 0)."""


class SearchBackend(Protocol):
    def search(self, query: str, *, line: str | None = None, caller: str | None = None,
               handler_id: str | None = None, since: float | datetime | None = None,
               until: float | datetime | None = None, incident: str | None = None,
               limit: int = 20) -> list[Hit]: ...


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


Phrase = tuple[str, bool]
"""(text, prefix) of one quoted FTS5 phrase."""


def parse_query(query: str) -> tuple[list[list[Phrase]], list[Phrase]]:
    """The query as an AND of OR-groups of phrases, and the excluded phrases."""
    if len(query) > MAX_QUERY_CHARS:
        raise SearchQueryError(f"query is too long ({len(query)} characters; at most {MAX_QUERY_CHARS})")
    groups: list[list[Phrase]] = []  # AND of ORs
    negatives: list[Phrase] = []
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
        item = (text.strip(), prefix)
        if negate:
            negatives.append(item)
        elif pending_or:
            groups[-1].append(item)
        else:
            groups.append([item])
        pending_or = False
    if not groups:
        if negatives:
            raise SearchQueryError("query needs at least one word to find (exclusions alone match nothing)")
        raise SearchQueryError(f"query has no words to search for: {query!r}")
    return groups, negatives


def _expr(p: Phrase) -> str:
    return _quote(p[0]) + ("*" if p[1] else "")


def to_fts_query(query: str) -> str:
    """Translate the user's query into a safe FTS5 MATCH expression.

    >>> to_fts_query('knife OR gun "station road" -test burg*')
    '("knife" OR "gun") AND "station road" AND "burg"* NOT ("test")'
    """
    groups, negatives = parse_query(query)
    out = " AND ".join(_expr(g[0]) if len(g) == 1 else "(" + " OR ".join(map(_expr, g)) + ")"
                       for g in groups)
    if negatives:
        out += " NOT (" + " OR ".join(map(_expr, negatives)) + ")"
    return out


def _epoch(v: float | datetime | None) -> float | None:
    if v is None:
        return None
    return v.timestamp() if isinstance(v, datetime) else float(v)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """SQLite's varint (as FTS5 stores its averages record): value, next position."""
    v = 0
    for i in range(9):
        byte = data[pos + i]
        if i == 8:
            return (v << 8) | byte, pos + 9
        v = (v << 7) | (byte & 0x7F)
        if byte < 0x80:
            return v, pos + i + 1
    raise AssertionError("unreachable")


def _count_phrase(toks: list[str], want: list[str], prefix: bool) -> int:
    """Occurrences (overlapping, as FTS5 counts them) of the token sequence ``want``;
    with ``prefix`` its last token matches any term starting with it."""
    m, last = len(want), len(want) - 1
    if m == 1 and not prefix:
        return toks.count(want[0])
    n = 0
    for i in range(len(toks) - m + 1):
        if all(toks[i + j] == want[j] for j in range(last)) and (
                toks[i + last].startswith(want[last]) if prefix else toks[i + last] == want[last]):
            n += 1
    return n


def _highlight(raw: str) -> str:
    return html.escape(raw, quote=False).replace("\x02", "<mark>").replace("\x03", "</mark>")


class TranscriptSearch:
    """SQLite FTS5 search over final transcripts, filtered by the ``calls`` row."""

    RANGE_SPAN = 50_000
    SPARSE_RANKED = 8
    PROBE = 64
    """Newest matches read to estimate a term's document frequency."""
    STEM_CACHE = 200_000
    """Most words whose stems are remembered (then the cache starts afresh)."""

    def __init__(self, db: Database, *, max_candidates: int = 1000,
                 calls_first_max: int = 1000, max_idf_scan: int = 400_000) -> None:
        self._db = db
        self._local = threading.local()
        self._stems: dict[str, tuple[str, ...]] = {}  # word -> FTS5 terms; shared, see _tokenize
        self.max_candidates = max_candidates
        """Most matching segments ranked per query (the newest ones)."""
        self.calls_first_max = calls_first_max
        """Filters leaving at most this many calls are applied before the text match."""
        self.max_idf_scan = max_idf_scan
        """FTS5's bm25 counts each phrase's document frequency by reading every
        occurrence of its words (~30 ns each here: ~55 ms for "the" in a million calls,
        growing with the index). A query whose words occur more often than this in
        total (phrases count twice: positions are compared) is scored by :meth:`_bm25`
        with estimated document frequencies instead (``Hit.scoring``)."""

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
        hundreds of thousands of calls is ranked among its newest matches (the hits say
        so: ``ranked_within_recent``): add words or filters to reach further back.
        Selective filters (a caller, an incident, a handler's day) are applied first,
        through the ``calls`` indexes. bm25 needs each term's document frequency; for
        very frequent words it is estimated (``max_idf_scan``, ``Hit.scoring``).
        """
        groups, negatives = parse_query(query)
        match = to_fts_query(query)
        phrases = [p for g in groups for p in g] + negatives  # FTS5's phrase order
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
            dfs = self._document_frequencies(phrases)
            frequent = self._idf_scan(phrases, dfs) > self.max_idf_scan
            cands, info = self._candidates(match, where, params, phrases if frequent else None, dfs)
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
                            incident_number=row["incident_number"] if row else None,
                            **info))
        return hits

    # -- candidates --------------------------------------------------------------------
    def _candidates(self, match: str, where: list[str], params: list[Any],
                    own: list[Phrase] | None, dfs: dict[Phrase, tuple[int, bool]]
                    ) -> tuple[list[tuple[int, float, str, float]], dict[str, Any]]:
        """(segment id, bm25 rank, call_id, start) of at most max_candidates matches, and
        the Hit fields saying how they were found. ``own``: the query's phrases when a
        term is too frequent for FTS5's rank; we score with :meth:`_bm25` instead."""
        n = self.max_candidates
        scoring = "bm25" if own is None else "bm25-estimated-idf"
        if where:
            # Selective filter? Count the calls it leaves, up to a cap, via calls' indexes.
            cond = " AND ".join(where)
            few = self._q(f"SELECT c.call_id FROM calls c WHERE {cond}"
                          f" ORDER BY c.arrived_at DESC LIMIT {self.calls_first_max + 1}", params)
            if len(few) <= self.calls_first_max:
                if not few:
                    return [], {}
                segs = {r[0]: (r[1], r[2]) for r in self._q(
                    "SELECT s.id, s.call_id, s.start FROM transcription_segments s WHERE s.call_id IN"
                    f" ({','.join('?' * len(few))})", [r[0] for r in few])}
                out, scoring = self._rank_ids(match, segs, own, dfs)
                return out, {"matches_estimate": len(out), "scoring": scoring}
            join, cond = " JOIN calls c ON c.call_id = s.call_id", f" AND {cond}"
        else:
            join, cond = "", ""
        if own is None:
            # rank is computed lazily, only for the rows the LIMIT lets through.
            rows = [tuple(r) for r in self._q(
                "SELECT f.rowid, f.rank, s.call_id, s.start FROM transcription_fts f"
                f" JOIN transcription_segments s ON s.id = f.rowid{join}"
                f" WHERE transcription_fts MATCH ?{cond} ORDER BY f.rowid DESC LIMIT {n}",
                [match, *params])]
        else:
            found = self._q(
                "SELECT f.rowid, s.call_id, s.start, s.text FROM transcription_fts f"
                f" JOIN transcription_segments s ON s.id = f.rowid{join}"
                f" WHERE transcription_fts MATCH ?{cond} ORDER BY f.rowid DESC LIMIT {n}",
                [match, *params])
            scores = self._bm25(own, dfs, {r[0]: r[3] for r in found})
            rows = [(r[0], scores[r[0]], r[1], r[2]) for r in found]
        info: dict[str, Any] = {"scoring": scoring, "matches_estimate": len(rows)}
        if len(rows) >= n:
            info["ranked_within_recent"] = n
            info["matches_estimate"] = self._estimate(n, rows[-1][0])
        return rows, info

    def _rank_ids(self, match: str, segs: dict[int, tuple[str, float]],
                  own: list[Phrase] | None, dfs: dict[Phrase, tuple[int, bool]]
                  ) -> tuple[list[tuple[int, float, str, float]], str]:
        """Match and rank a known set of segments (the calls-first path).

        bm25 recomputes its IDF (a scan of each term's whole doclist) in every statement,
        so ranking segment by segment costs 1-15 ms each for a common word. We test the
        match per rowid without rank (an index seek), then rank the matches in ONE
        statement over their rowid range when it spans at most RANGE_SPAN rows (e.g. a
        handler's day), one by one when there are few, else not at all (newest first).
        With a very frequent term (``own``), any FTS5 rank would scan it: we score the
        matches with :meth:`_bm25`.
        """
        matched = [i for i in sorted(segs) if self._q(
            "SELECT 1 FROM transcription_fts WHERE transcription_fts MATCH ? AND rowid = ?",
            (match, i))]
        if not matched:
            return [], "bm25"
        lo, hi = matched[0], matched[-1]
        scoring = "bm25"
        if own is not None:
            texts = {r[0]: r[1] for r in self._q(
                f"SELECT id, text FROM transcription_segments WHERE id IN ({','.join('?' * len(matched))})",
                matched)}
            ranks = self._bm25(own, dfs, texts)
            scoring = "bm25-estimated-idf"
        elif hi - lo <= self.RANGE_SPAN:
            ranks = {r[0]: r[1] for r in self._q(
                "SELECT rowid, rank FROM transcription_fts WHERE transcription_fts MATCH ?"
                " AND rowid BETWEEN ? AND ?", (match, lo, hi))}
        elif len(matched) <= self.SPARSE_RANKED:
            ranks = {i: self._q("SELECT rank FROM transcription_fts WHERE transcription_fts"
                                " MATCH ? AND rowid = ?", (match, i))[0][0] for i in matched}
        else:  # many matches spread over the whole index: newest first, score 0
            ranks = dict.fromkeys(matched, 0.0)
            scoring = "newest-first"
        return [(i, ranks[i], segs[i][0], segs[i][1]) for i in matched], scoring

    # -- bm25 with estimated document frequencies -------------------------------------
    def _document_frequencies(self, phrases: list[Phrase]) -> dict[Phrase, tuple[int, bool]]:
        """(segments containing it, exact?) for each phrase and each word of a phrase
        (FTS5 reads the doclist of every word of a phrase to count the phrase). At most
        PROBE newest matches are read per item: fewer means the count is exact; else it
        is estimated from the span of segment ids they cover."""
        items: list[Phrase] = []
        for text, prefix in phrases:
            items.append((text, prefix))
            words = _WORDS.findall(text)
            if len(words) > 1:
                items += [(w, False) for w in words[:-1]] + [(words[-1], prefix)]
        out: dict[Phrase, tuple[int, bool]] = {}
        for item in dict.fromkeys(items):
            rows = self._q("SELECT rowid FROM transcription_fts WHERE transcription_fts MATCH ?"
                           f" ORDER BY rowid DESC LIMIT {self.PROBE}", (_expr(item),))
            if len(rows) < self.PROBE:
                out[item] = (len(rows), True)
            else:
                out[item] = (self._estimate(self.PROBE, rows[-1][0]), False)
        return out

    @staticmethod
    def _idf_scan(phrases: list[Phrase], dfs: dict[Phrase, tuple[int, bool]]) -> int:
        """Doclist entries FTS5's bm25 would read for this query (estimated)."""
        total = 0
        for text, prefix in phrases:
            words = _WORDS.findall(text)
            if len(words) <= 1:
                total += dfs.get((text, prefix), (0, True))[0]
            else:
                items = [(w, False) for w in words[:-1]] + [(words[-1], prefix)]
                total += 2 * sum(dfs.get(i, (0, True))[0] for i in items)
        return total

    def _estimate(self, k: int, kth_newest: int) -> int:
        """Matching segments in the index when the k-th newest match has id ``kth_newest``:
        k per id span, scaled to the whole id range (deleted ids thin both alike)."""
        r = self._q("SELECT (SELECT min(id) FROM transcription_segments),"
                    " (SELECT max(id) FROM transcription_segments)", ())  # two index seeks
        lo, hi = r[0][0], r[0][1]
        if lo is None:
            return k
        total, _ = self._totals()
        return min(total, max(k, round(k * (hi - lo + 1) / max(1, hi - kth_newest + 1))))

    def _totals(self) -> tuple[int, int]:
        """(rows, tokens) of the whole index, from FTS5's own averages record."""
        blob = self._q("SELECT block FROM transcription_fts_data WHERE id = 1", ())
        if not blob:
            return 0, 0
        data, pos = bytes(blob[0][0]), 0
        vals: list[int] = []
        while pos < len(data) and len(vals) < 2:
            v, pos = _varint(data, pos)
            vals.append(v)
        return (vals + [0, 0])[0], (vals + [0, 0])[1]

    def _bm25(self, phrases: list[Phrase], dfs: dict[Phrase, tuple[int, bool]],
              texts: dict[int, str]) -> dict[int, float]:
        """FTS5's bm25 (k1 1.2, b 0.75; negative: lower ranks first) of each segment, with
        the index's row count and mean length from its averages record and each phrase's
        document frequency from :meth:`_document_frequencies`. Terms and positions come
        from the index's tokenizer (:meth:`_tokenize`), so a phrase is counted where its
        stemmed words are adjacent."""
        n_rows, n_tokens = self._totals()
        avgdl = n_tokens / n_rows if n_rows else 1.0
        rows = [(-(i + 1), text) for i, (text, _) in enumerate(phrases)] + list(texts.items())
        tokens = self._tokenize(rows)
        k1, b = 1.2, 0.75
        idf = []
        for p in phrases:
            df = dfs.get(p, (0, True))[0]
            v = math.log((n_rows - df + 0.5) / (df + 0.5)) if n_rows else 0.0
            idf.append(v if v > 0.0 else 1e-6)
        out: dict[int, float] = {}
        for seg_id in texts:
            toks = tokens.get(seg_id, [])
            dl = len(toks)
            score = 0.0
            for i, (_, prefix) in enumerate(phrases):
                want = tokens.get(-(i + 1), [])
                tf = _count_phrase(toks, want, prefix) if want else 0
                score += idf[i] * (tf * (k1 + 1.0)) / (tf + k1 * (1.0 - b + b * dl / avgdl))
            out[seg_id] = -score
        return out

    def _tokenize(self, rows: list[tuple[int, str]]) -> dict[int, list[str]]:
        """Stemmed tokens of each (rowid, text), in order, as the index's tokenizer makes
        them: words split on what is not a letter or digit (unicode61's token
        characters), each word stemmed by FTS5 itself (case folding, diacritics, porter)
        through a TEMP table and an fts5vocab instance table, cached per searcher."""
        words = {r: _WORDS.findall(text) for r, text in rows}
        cache = self._stems  # shared by searching threads: only get/set, never test-then-index
        local: dict[str, tuple[str, ...]] = {}
        new: list[str] = []
        for w in dict.fromkeys(w for ws in words.values() for w in ws):
            t = cache.get(w)
            if t is None:
                new.append(w)
            else:
                local[w] = t
        if new:
            if len(cache) + len(new) > self.STEM_CACHE:
                cache.clear()
            stems: dict[int, list[tuple[int, str]]] = {}
            for doc, offset, term in self._stem(new):
                stems.setdefault(doc, []).append((offset, term))
            for i, w in enumerate(new):
                local[w] = cache[w] = tuple(t for _, t in sorted(stems.get(i, ())))
        return {r: [t for w in ws for t in local[w]] for r, ws in words.items()}

    def _stem(self, words: list[str]) -> list[tuple[int, int, str]]:
        """(row, offset, term) of each word tokenized as a row of a TEMP FTS5 table."""
        conn = self._conn()
        with contextlib.ExitStack() as stack:
            if conn is None:  # in-memory database: its only connection
                conn = stack.enter_context(self._db.transaction())
            else:  # one transaction: FTS5 would flush and merge after every autocommit row
                conn.execute("BEGIN")
                stack.callback(conn.execute, "COMMIT")
            conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.transcription_stem USING fts5("
                         "text, content='', tokenize='porter unicode61 remove_diacritics 2')")
            conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.transcription_stem_i USING"
                         " fts5vocab('temp', 'transcription_stem', 'instance')")
            conn.execute("INSERT INTO temp.transcription_stem(transcription_stem) VALUES ('delete-all')")
            conn.executemany("INSERT INTO temp.transcription_stem(rowid, text) VALUES (?, ?)",
                             list(enumerate(words)))
            return [tuple(r) for r in conn.execute(
                "SELECT doc, offset, term FROM temp.transcription_stem_i").fetchall()]

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
