"""Transcript search over whole calls: ranked, highlighted, with each matched word's time.

Each call is indexed as one document (``transcription_call_index``, built by
``transcription/store.py``): the normalised terms of everything said on it, the caller's
words in time order then the handler's, each term with its start and end, channel,
confidence and the words as transcribed. So a two-word search matches words said in
different segments, and a hit's ``offset`` is the start of its first matched word.

Query and transcript go through the same normalisation (``transcription/normalise.py``):
numbers in words or digits, UK and US spellings, registrations and postcodes spelled out
or written, and the index's Porter stemmer for plurals and simple stems.

The query language is small and can never produce an FTS5 syntax error, because we
build the FTS5 expression ourselves from normalised terms (every term is quoted):

* ``burglary station`` both words (AND), anywhere in the call, in any order;
* ``"station road"`` a phrase (an unbalanced ``"`` runs to the end of the query);
* ``knife OR gun`` either; ``-test`` or ``NOT test`` excludes; ``burg*`` prefix (at
  least 2 characters); ``AND`` between words is allowed (it is the default);
  parentheses must balance and are otherwise ignored (OR binds its two neighbours);
* a code ("AB12", "alpha bravo one two") also finds longer codes that start with it.

A query that cannot be run (nothing searchable, a lone operator, unbalanced
parentheses, a one-letter prefix, too long) raises :class:`SearchQueryError` with a
message fit for the auditor's screen or terminal.

Exact matches rank first. A rare or unknown query word (found in fewer than
``fuzzy_below`` calls) is then also looked up in the vocabulary of indexed words: close
spellings (rapidfuzz ratio >= ``fuzzy_cutoff``, same first letter, similar length) and
words with the same phonetic key (:func:`~transcription.normalise.phonetic_key`); calls
found only through them follow the exact hits (``Hit.match`` "fuzzy", then
"phonetic"). Calls found only through a gazetteer name indexed for words that sound like
it (``transcription/store.py``) follow the exact hits of the same search
(``Hit.match`` "gazetteer", score x GAZETTEER_SIMILARITY). Words recognised with low
confidence are indexed like the others and marked in the hit (``Hit.matches``,
``Hit.fragments``).

Work that does not grow with the backlog (issue 15 item 4). The call index is split into
time partitions of at most ``PARTITION_ROWS`` calls, each its own FTS5 table
(``transcription/store.py``). A search reads them newest first, skipping those outside
its ``since``/``until``, and stops when it has ``max_candidates`` (500) matching calls to
rank (``Hit.ranked_within_recent``, ``Hit.matches_estimate``) or when its budget
(``budget_ms``, 50 ms; ``max_scan_rows``) is spent: it always reads the newest partition,
so one partition's cost bounds what each further one adds. The result
(:class:`SearchResult`, a list of hits) says whether it was complete and, if not, that
every call after ``searched_back_to`` was searched, and continues further back with
``before=continue_before``. A selective filter (a caller, an incident, a handler's day)
goes first through the ``calls`` indexes and checks its calls in every partition.
bm25's statistics are each partition's own. FTS5's bm25 counts each query word's
documents by reading all its occurrences in the partition; for frequent words
(``max_idf_scan``) we compute the same bm25 ourselves with document frequencies
estimated from their 64 newest matches (``Hit.scoring == "bm25-estimated-idf"``).
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
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from rapidfuzz import fuzz, process

from store.db import Database

from .errors import SearchQueryError
from .normalise import is_code, normalise, phonetic_key
from .store import IndexedCall, Partition, partitions

_TOKEN = re.compile(r'"([^"]*)"?|([()])|([^\s()"]+)')
_WORDCHAR = re.compile(r"\w", re.UNICODE)
_WORDS = re.compile(r"[^\W_]+", re.UNICODE)
MAX_QUERY_CHARS = 500
MAX_LIMIT = 200
SNIPPET_WORDS = 8
"""Words shown on each side of the first matched word."""
MAX_MATCHES = 20
"""Matched words listed per hit (with their times)."""


@dataclass(frozen=True)
class Hit:
    """One call whose transcript matches."""

    call_id: str
    score: float
    """bm25 relevance of the call (higher is better); fuzzy and phonetic matches are
    scaled down by their similarity."""
    snippet: str
    """HTML-safe text around the first matched word, matches wrapped in ``<mark>``."""
    offset: float
    """Seconds into the recording where the first matched word starts (play from here)."""
    channel: str
    """Channel of the first matched word: ``caller`` or ``handler``."""
    line: str | None
    caller: str | None
    handler_id: str | None
    arrived_at: float | None
    incident_number: str | None
    ranked_within_recent: int | None = None
    """None: every matching call was considered. N: the query matched more calls than
    the search ranks (``max_candidates``), so only the newest N matching calls were
    ranked and older calls may match too: add words, a filter or a date range."""
    matches_estimate: int | None = None
    """Matching calls in the index (over the filtered calls, if few): exact below
    ``max_candidates``, else estimated from how densely the newest matches occur."""
    scoring: str = "bm25"
    """``bm25``: FTS5's bm25 with statistics of the whole index. ``bm25-estimated-idf``:
    the same formula, but with document frequencies estimated from the density of each
    term's newest matches, because the query's words are so frequent (more than
    ``max_idf_scan`` occurrences) that counting them exactly would read every occurrence
    (~55 ms for "the" in a million calls). Scores are close to, not identical with,
    exact bm25. ``newest-first``: not ranked (score 0)."""
    rank: int = 0
    """1 for the best hit of the search, then 2, 3..."""
    match: str = "exact"
    """``exact`` (the query's words, normalised and stemmed), ``gazetteer`` (a place or
    street name of the gazetteer indexed for words that sound like it: "Harborne" for
    "Hobon"), ``fuzzy`` (a close spelling of a rare query word) or ``phonetic`` (a word
    that sounds the same)."""
    matches: tuple[dict[str, Any], ...] = field(default=())
    """The matched words in time order (at most MAX_MATCHES): ``word`` as transcribed,
    ``at`` and ``end`` (seconds), ``channel``, ``confidence``, ``low_confidence``."""
    fragments: tuple[dict[str, Any], ...] = field(default=())
    """The snippet as words: ``text``, ``match`` (bool), ``low_confidence`` (bool),
    ``at`` (seconds); a renderer needs no HTML parsing."""
    low_confidence: bool = False
    """Some matched word was recognised with low confidence (check the recording)."""


class SearchBackend(Protocol):
    def search(self, query: str, *, line: str | None = None, caller: str | None = None,
               handler_id: str | None = None, since: float | datetime | None = None,
               until: float | datetime | None = None, incident: str | None = None,
               limit: int = 20) -> list[Hit]: ...


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


Phrase = tuple[str, bool]
"""(normalised text, prefix) of one quoted FTS5 phrase."""
OPERATORS = ("AND", "OR", "NOT")


def _norm(text: str, prefix: bool = False) -> Phrase | None:
    """A phrase of normalised terms; a trailing code becomes a prefix (AB12 -> AB12*)."""
    ts = normalise(text)
    if not ts:
        return None
    return " ".join(ts), prefix or is_code(ts[-1])


def parse_query(query: str) -> tuple[list[list[Phrase]], list[Phrase]]:
    """The query as an AND of OR-groups of normalised phrases, and the excluded ones.
    Raises :class:`SearchQueryError` naming what is wrong."""
    if len(query) > MAX_QUERY_CHARS:
        raise SearchQueryError(f"query is too long ({len(query)} characters; at most {MAX_QUERY_CHARS})")
    items: list[tuple[str, str]] = []  # (kind, text): word, phrase, op
    depth = 0
    for m in _TOKEN.finditer(query):
        phrase, paren, word = m.group(1), m.group(2), m.group(3)
        if paren is not None:
            depth += 1 if paren == "(" else -1
            if depth < 0:
                raise SearchQueryError("unbalanced parentheses: ')' without '('")
        elif phrase is not None:
            items.append(("phrase", phrase))
        elif word in OPERATORS:
            items.append(("op", word))
        else:
            items.append(("word", word))
    if depth > 0:
        raise SearchQueryError("unbalanced parentheses: '(' without ')'")
    for i, (kind, text) in enumerate(items):
        if kind != "op":
            continue
        prev = items[i - 1] if i else None
        nxt = items[i + 1] if i + 1 < len(items) else None
        if nxt is None or nxt[0] == "op" or (text != "NOT" and (prev is None or prev[0] == "op")):
            raise SearchQueryError(f"{text!r} needs a word on each side" if text != "NOT"
                                   else "'NOT' needs a word after it")
    groups: list[list[Phrase]] = []
    negatives: list[Phrase] = []
    run: list[str] = []
    pending_or = False

    def add(p: Phrase | None) -> None:
        nonlocal pending_or
        if p is None:
            return
        if pending_or and groups:
            groups[-1].append(p)
        else:
            groups.append([p])
        pending_or = False

    def flush() -> None:
        if run:
            for t in normalise(" ".join(run)):
                add((t, is_code(t)))
            run.clear()

    negate_next = False
    for kind, text in items:
        if kind == "op":
            flush()
            if text == "OR":
                pending_or = True
            elif text == "NOT":
                negate_next = True
            continue
        negate, prefix = negate_next, False
        negate_next = False
        if kind == "word":
            if text.startswith("-") and len(text) > 1:
                negate, text = True, text[1:]
            if text.endswith("*"):
                prefix, text = True, text.rstrip("*")
                stem = _WORDS.findall(text)
                if not stem or len(stem[-1]) < 2:
                    raise SearchQueryError(f"a prefix needs at least 2 letters before '*': {text + '*'!r}")
        if not _WORDCHAR.search(text):
            continue  # punctuation only: nothing the tokenizer would index
        if kind == "word" and not negate and not prefix and not pending_or:
            run.append(text)  # plain words are normalised together: "two thousand", "AB12 CDE"
            continue
        flush()
        p = _norm(text, prefix)
        if negate:
            if p is not None:
                negatives.append(p)
        else:
            add(p)
    flush()
    if not groups:
        if negatives:
            raise SearchQueryError("query needs at least one word to find (exclusions alone match nothing)")
        raise SearchQueryError(f"query has no words to search for: {query!r}")
    return groups, negatives


def _expr(p: Phrase) -> str:
    return _quote(p[0]) + ("*" if p[1] else "")


def _match_expr(groups: list[list[Phrase]], negatives: list[Phrase]) -> str:
    out = " AND ".join(_expr(g[0]) if len(g) == 1 else "(" + " OR ".join(map(_expr, g)) + ")"
                       for g in groups)
    if negatives:
        out += " NOT (" + " OR ".join(map(_expr, negatives)) + ")"
    return out


def to_fts_query(query: str) -> str:
    """Translate the user's query into a safe FTS5 MATCH expression.

    >>> to_fts_query('knife OR gun "station road" -test burg*')
    '("knife" OR "gun") AND "station road" AND "burg"* NOT ("test")'
    """
    return _match_expr(*parse_query(query))


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
    if m == 1:
        return sum(1 for t in toks if t.startswith(want[0]))
    head, body, tail = want[0], want[1:last], want[last]
    n = 0
    i = -1
    end = len(toks) - m
    while True:  # each place the first token occurs (list.index runs in C)
        try:
            i = toks.index(head, i + 1, end + 1)
        except ValueError:
            return n
        if toks[i + 1:i + last] == body and (
                toks[i + last].startswith(tail) if prefix else toks[i + last] == tail):
            n += 1


def _marked(highlighted: str) -> set[int]:
    """Positions of the terms FTS5's highlight() wrapped in char(2)..char(3)."""
    out: set[int] = set()
    inside = False
    for i, tok in enumerate(highlighted.split(" ")):
        if tok.startswith("\x02"):
            inside = True
        if inside:
            out.add(i)
        if tok.endswith("\x03"):
            inside = False
    return out


@dataclass(frozen=True)
class Alternative:
    """A vocabulary word standing in for a rare query word."""

    term: str
    kind: str
    """``fuzzy`` or ``phonetic``."""
    similarity: float
    """0..1: rapidfuzz ratio / 100 (fuzzy), PHONETIC_SIMILARITY (phonetic)."""


PHONETIC_SIMILARITY = 0.5
GAZETTEER_SIMILARITY = 0.8
"""Score factor of a call found through a gazetteer name indexed for words that sound
like it (``transcription/store.py``), not through words heard as written."""
KIND_ORDER = {"exact": 0, "gazetteer": 1, "fuzzy": 2, "phonetic": 3}


class SearchResult(list):  # list[Hit], so every caller of search() keeps working
    """The hits of one search, and how far back in time it looked.

    The call index is split into partitions (``transcription/store.py``), searched newest
    first until the search has ``max_candidates`` matches or its budget (``budget_ms``,
    ``max_scan_rows``) is spent. ``complete`` says whether every partition that could
    hold matching calls (within ``since``/``until``) was searched; if not, every call that
    arrived after ``searched_back_to`` was searched and some older ones were not: narrow
    the time range, or search again with ``before=continue_before`` to go further back
    (older partitions only, so no hit repeats)."""

    complete: bool = True
    searched_back_to: float | None = None
    """Epoch seconds: every call that arrived after this was searched (the newest call
    not searched arrived then). None when ``complete``."""
    continue_before: int | None = None
    """Pass as ``before=`` to continue the same search further back (None: complete)."""
    partitions_searched: int = 0
    reason: str = ""
    """Why it stopped early: ``budget`` (time or rows) or ``candidates`` (enough newest
    matches to rank; ``Hit.ranked_within_recent`` says so too)."""

    def __init__(self, hits: Iterable[Any] = (), **info: Any) -> None:
        super().__init__(hits)  # Hit objects; or the hits as dicts (the web API's)
        for k, v in info.items():
            setattr(self, k, v)

    def coverage_fields(self) -> dict[str, Any]:
        """The fields to build a SearchResult of other items (the hits as dicts)."""
        return {"complete": self.complete, "searched_back_to": self.searched_back_to,
                "continue_before": self.continue_before,
                "partitions_searched": self.partitions_searched, "reason": self.reason}

    def coverage(self) -> dict[str, Any]:
        """How far back it looked, as JSON-ready fields (web API, CLI --json)."""
        return {"complete": self.complete, "searched_back_to": self.searched_back_to,
                "continue_before": self.continue_before,
                "partitions_searched": self.partitions_searched, "stopped_by": self.reason or None}


class _Walk:
    """The partitions one search may read, newest first, and its budget."""

    def __init__(self, parts: list[Partition], budget_ms: float | None, max_rows: int | None) -> None:
        self.parts = parts
        self.deadline = None if budget_ms is None else time.perf_counter() + budget_ms / 1000.0
        self.max_rows = max_rows
        self.rows = 0
        self.reached = -1
        """Index in ``parts`` of the oldest partition searched by every pass."""
        self.reason = ""
        self.span: tuple[float, float] | None = None
        """(since, until) of a time filter."""
        self.dfs: dict[tuple[str, Phrase], tuple[int, bool]] = {}

    def spent(self, i: int) -> bool:
        """Over budget before reading ``parts[i]``? (The newest is always read.)"""
        if i == 0:
            return False
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.reason = "budget"
            return True
        if self.max_rows is not None and self.rows + self.parts[i].rows > self.max_rows:
            self.reason = "budget"
            return True
        return False


class TranscriptSearch:
    """SQLite FTS5 search over whole-call transcripts, filtered by the ``calls`` row."""

    RANGE_SPAN = 50_000
    SPARSE_RANKED = 8
    PROBE = 64
    """Newest matches read to estimate a term's document frequency."""
    STEM_CACHE = 200_000
    """Most words whose stems are remembered (then the cache starts afresh)."""
    OWN_TERMS = 25_000
    """Most terms scored by :meth:`_bm25` per query (the newest calls that hold them):
    whole calls are long, and this path tokenizes each candidate in Python."""

    _by_dialect: ClassVar[dict[str, type[TranscriptSearch]]] = {}
    """Store dialect -> the subclass that searches it (``class PgTranscriptSearch(
    TranscriptSearch, dialect="postgresql")``, imported by ``transcription/__init__.py``)."""

    def __init_subclass__(cls, *, dialect: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if dialect:
            TranscriptSearch._by_dialect[dialect] = cls

    def __new__(cls, db: Database, **kwargs: Any) -> TranscriptSearch:
        # On a PostgreSQL store: its full-text search (transcription/pgsearch.py), same API.
        backend = TranscriptSearch._by_dialect.get(getattr(db, "dialect", "sqlite"))
        if cls is TranscriptSearch and backend is not None:
            return super().__new__(backend)
        return super().__new__(cls)

    def __init__(self, db: Database, *, max_candidates: int = 500,
                 calls_first_max: int = 1000, max_idf_scan: int = 40_000,
                 fuzzy_below: int = 3, fuzzy_cutoff: float = 80.0, fuzzy_max: int = 5,
                 budget_ms: float | None = 50.0, max_scan_rows: int | None = None,
                 filtered_candidates: int = 250) -> None:
        self._db = db
        self._local = threading.local()
        self._stems: dict[str, tuple[str, ...]] = {}  # word -> FTS5 terms; shared, see _tokenize
        self.max_candidates = max_candidates
        """Most matching calls ranked per query (the newest ones)."""
        self.calls_first_max = calls_first_max
        """Filters leaving at most this many calls are applied before the text match."""
        self.max_idf_scan = max_idf_scan
        """FTS5's bm25 counts each phrase's document frequency by reading every
        occurrence of its words in the partition (~30 ns each). A query whose words
        occur more often than this in a partition (phrases count twice: positions are
        compared) is scored there by :meth:`_bm25` with estimated document frequencies
        instead (``Hit.scoring``)."""
        self.fuzzy_below = fuzzy_below
        """A query word found in fewer calls than this is also looked for by close
        spelling and by sound (a misspelt name, a misrecognised place)."""
        self.fuzzy_cutoff = fuzzy_cutoff
        """Least rapidfuzz ratio (0-100) of a close spelling."""
        self.fuzzy_max = fuzzy_max
        """Most alternatives per query word, of each kind."""
        self.budget_ms = budget_ms
        """Time after which a search reads no further partition (it always reads the
        newest one it may; None: no time limit). Its result says how far back it got."""
        self.max_scan_rows = max_scan_rows
        """Most index rows (calls) of the partitions one search reads (None: no limit)."""
        self.filtered_candidates = filtered_candidates
        """Most matches ranked when a filter (not selective enough to go first) is checked
        against each match's ``calls`` row: each costs two row lookups."""

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

    def partitions(self) -> list[Partition]:
        """The call index's partitions, newest first."""
        conn = self._conn()
        if conn is None:
            with self._db.transaction() as c:
                return partitions(c)
        return partitions(conn)

    def search(self, query: str, *, line: str | None = None, caller: str | None = None,
               handler_id: str | None = None, since: float | datetime | None = None,
               until: float | datetime | None = None, incident: str | None = None,
               limit: int = 20, before: int | None = None) -> SearchResult:
        """Best calls first: exact matches, then fuzzy, then phonetic ones. Filters apply
        to the ``calls`` row (``since`` inclusive, ``until`` exclusive, on
        ``arrived_at``); a filtered search skips transcripts with no call row. Raises
        :class:`SearchQueryError` for unusable queries.

        Bounded work, whatever the index size: the index's partitions are read newest
        first (those outside ``since``/``until`` not at all), until ``max_candidates``
        matching calls are found (ranked by bm25; ``Hit.ranked_within_recent`` says so)
        or the budget (``budget_ms``, ``max_scan_rows``) is spent; the result
        (:class:`SearchResult`) says how far back it looked and how to continue
        (``before``: its ``continue_before``). Selective filters (a caller, an incident,
        a handler's day) are applied first, through the ``calls`` indexes, and always
        search every partition. bm25 needs each term's document frequency; for very
        frequent words it is estimated (``max_idf_scan``, ``Hit.scoring``).
        """
        groups, negatives = parse_query(query)
        limit = max(1, min(int(limit), MAX_LIMIT))
        where: list[str] = []
        params: list[Any] = []
        for col, val in (("c.line", line), ("c.caller", caller), ("c.handler_id", handler_id),
                         ("c.incident_number", incident)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        lo, hi = _epoch(since), _epoch(until)
        if lo is not None:
            where.append("c.arrived_at >= ?")
            params.append(lo)
        if hi is not None:
            where.append("c.arrived_at < ?")
            params.append(hi)
        if before is not None and not isinstance(before, int):
            raise SearchQueryError(f"'before' must be a continuation number, not {before!r}")
        parts = [p for p in self.partitions() if p.overlaps(lo, hi)
                 and (before is None or p.first_row < before)]
        walk = _Walk(parts, self.budget_ms, self.max_scan_rows)
        if lo is not None or hi is not None:
            walk.span = (-math.inf if lo is None else lo, math.inf if hi is None else hi)
        try:
            few = self._filtered_calls(where, params)
            found = self._run(groups, negatives, where, params, limit, set(), walk, few)
            hits = [self._hit(row, "exact", {}) for row in found]
            hits.sort(key=lambda h: KIND_ORDER[h.match])  # stable: bm25 order within a kind
            alternatives = self._alternatives(groups, walk) if len(hits) < limit else {}
            if alternatives and len(hits) < limit:
                by_term = {a.term: a for alts in alternatives.values() for a in alts}
                # One rare word: its alternatives tier by tier, closest first, so the calls
                # of the likeliest spelling come before those of a remoter one. Several:
                # all alternatives at once.
                if len(alternatives) == 1:
                    [(gi, alts)] = alternatives.items()
                    tiers = [[a for a in alts if (a.kind, a.similarity) == key]
                             for key in dict.fromkeys((a.kind, a.similarity) for a in sorted(
                                 alts, key=lambda a: (KIND_ORDER[a.kind], -a.similarity)))]
                    expansions = [{gi: tier} for tier in tiers]
                else:
                    expansions = [alternatives]
                for expansion in expansions:
                    if len(hits) >= limit:
                        break
                    wider = [g + [(a.term, False) for a in expansion.get(i, [])]
                             for i, g in enumerate(groups)]
                    more = self._run(wider, negatives, where, params, limit - len(hits),
                                     {h.call_id for h in hits}, walk, few)
                    extra = [self._hit(row, "", by_term) for row in more]
                    hits += sorted(extra, key=lambda h: (KIND_ORDER[h.match], -h.score))
        except sqlite3.OperationalError as exc:  # defensive: we built the expression
            raise SearchQueryError(f"query cannot be searched: {exc}") from None
        out = SearchResult([_with(h, rank=i + 1) for i, h in enumerate(hits[:limit])])
        if few is not None or walk.reached >= len(parts) - 1:
            out.partitions_searched = len(parts) if few is None else len({p for p, _ in few})
        else:
            done, rest = parts[:walk.reached + 1], parts[walk.reached + 1:]
            known = [p.max_at for p in rest if p.max_at is not None]
            out.complete = False
            out.searched_back_to = max(known) if len(known) == len(rest) else None
            out.continue_before = done[-1].first_row if done else before
            out.partitions_searched = len(done)
            out.reason = walk.reason or "candidates"
        return out

    def _filtered_calls(self, where: list[str], params: list[Any]
                        ) -> list[tuple[Partition, dict[int, tuple[str, float]]]] | None:
        """Selective filter? The index rows of the calls it leaves (at most
        ``calls_first_max``, through the calls' indexes) grouped by partition, newest
        first; None when the filter leaves more calls (or there is none)."""
        if not where:
            return None
        cond = " AND ".join(where)
        few = self._q(f"SELECT c.call_id FROM calls c WHERE {cond}"
                      f" ORDER BY c.arrived_at DESC LIMIT {self.calls_first_max + 1}", params)
        if len(few) > self.calls_first_max:
            return None
        segs = {r[0]: (r[1], 0.0) for r in self._q(
            "SELECT s.id, s.call_id FROM transcription_call_index s WHERE s.call_id IN"
            f" ({','.join('?' * len(few))})", [r[0] for r in few])} if few else {}
        out: list[tuple[Partition, dict[int, tuple[str, float]]]] = []
        for p in self.partitions():
            mine = {i: v for i, v in segs.items() if i >= p.first_row and (p.last_row is None or i <= p.last_row)}
            if mine:
                out.append((p, mine))
        return out

    def _run(self, groups: list[list[Phrase]], negatives: list[Phrase], where: list[str],
             params: list[Any], limit: int, exclude: set[str], walk: _Walk,
             few: list[tuple[Partition, dict[int, tuple[str, float]]]] | None
             ) -> list[tuple[int, float, str, str, dict[str, Any], str]]:
        """The best ``limit`` calls for this expression: (rowid, rank, call_id, match
        expression, Hit fields saying how they were found, partition's FTS5 table).
        Reads the walk's partitions newest first, no further than an earlier pass of
        the same search did, until ``max_candidates`` matches or the budget."""
        match = _match_expr(groups, negatives)
        phrases = [p for g in groups for p in g] + negatives  # FTS5's phrase order
        cands: list[tuple[int, float, str, str]] = []  # row id, rank, call_id, fts
        info: dict[str, Any] = {"scoring": "bm25"}
        if few is not None:  # a selective filter: its calls in every partition
            for part, segs in few:
                dfs = self._document_frequencies(phrases, part, walk)
                own = phrases if self._idf_scan(phrases, dfs) > self.max_idf_scan else None
                rows, scoring = self._rank_ids(match, segs, own, dfs, part)
                cands += [(r[0], r[1], r[2], part.fts) for r in rows]
                if rows and scoring != "bm25":
                    info["scoring"] = scoring
            info["matches_estimate"] = len(cands)
        else:
            first_pass = walk.reached < 0
            last = len(walk.parts) - 1 if first_pass else walk.reached
            estimate = 0.0
            rows_read = 0
            reached = -1
            for i, part in enumerate(walk.parts[:last + 1]):
                if walk.spent(i):
                    break
                need = self.max_candidates - len(cands)
                dfs = self._document_frequencies(phrases, part, walk)
                own = phrases if self._idf_scan(phrases, dfs) > self.max_idf_scan else None
                found, pinfo = self._candidates(match, where, params, own, dfs, part, need,
                                                walk.span)
                cands += [(r[0], r[1], r[2], part.fts) for r in found]
                if pinfo["scoring"] != "bm25":
                    info["scoring"] = pinfo["scoring"]
                estimate += pinfo["matches_estimate"]
                rows_read += part.rows
                walk.rows += part.rows
                reached = i
                if pinfo.get("cut") or len(cands) >= self.max_candidates:
                    info["ranked_within_recent"] = len(cands)
                    walk.reason = walk.reason or "candidates"
                    break
            walk.reached = reached if first_pass else min(walk.reached, reached)
            total_rows = sum(p.rows for p in walk.parts)
            if reached < len(walk.parts) - 1 and rows_read:  # older partitions not read
                estimate *= max(1.0, total_rows / rows_read)
            info["matches_estimate"] = max(len(cands), round(estimate))
        best: dict[str, tuple[float, int, str]] = {}  # call_id -> (rank, row id, fts)
        for row_id, rank, call_id, fts in cands:
            if call_id not in exclude and (call_id not in best or rank < best[call_id][0]):
                best[call_id] = (rank, row_id, fts)
        top = sorted(best.items(), key=lambda kv: (kv[1][0], -kv[1][1]))[:limit]
        return [(row_id, rank, call_id, match, info, fts) for call_id, (rank, row_id, fts) in top]

    def _alternatives(self, groups: list[list[Phrase]], walk: _Walk | dict[Phrase, tuple[int, bool]]
                      ) -> dict[int, list[Alternative]]:
        """Close spellings and same-sounding words for each rare single-word group
        (``walk``: this search's partitions; or the query's document frequencies)."""
        out: dict[int, list[Alternative]] = {}
        for i, group in enumerate(groups):
            alts: list[Alternative] = []
            for text, prefix in group:
                if prefix or " " in text or not text.isalpha() or len(text) < 4:
                    continue
                df = (walk.get((text, prefix), (0, True))[0] if isinstance(walk, dict)
                      else self._calls_with(text, walk, self.fuzzy_below))
                if df >= self.fuzzy_below:
                    continue
                alts += self._similar(text)
            have = {t for t, _ in group}
            alts = [a for a in dict((a.term, a) for a in reversed(alts)).values() if a.term not in have]
            if alts:
                out[i] = alts
        return out

    def _calls_with(self, term: str, walk: _Walk, enough: int) -> int:
        """Calls holding ``term`` in the partitions the search read (counting up to
        ``enough``)."""
        n = 0
        upto = walk.parts[:walk.reached + 1] if walk.reached >= 0 else walk.parts
        for part in upto:
            df = walk.dfs.get((part.fts, (term, False)))
            if df is None:
                df = (len(self._q(f"SELECT rowid FROM {part.fts} WHERE {part.fts} MATCH ?"
                                  f" LIMIT {enough}", (_expr((term, False)),))), True)
            n += df[0]
            if n >= enough:
                break
        return n

    def _similar(self, word: str) -> list[Alternative]:
        n = len(word)
        spread = 1 if n < 6 else 2
        rows = self._q("SELECT term FROM transcription_vocab WHERE head = ? AND len BETWEEN ? AND ?",
                       (word[0], n - spread, n + spread))
        found = process.extract(word, [r[0] for r in rows], scorer=fuzz.ratio,
                                score_cutoff=self.fuzzy_cutoff, limit=self.fuzzy_max + 1)
        alts = [Alternative(t, "fuzzy", round(score / 100.0, 3)) for t, score, _ in found if t != word]
        key = phonetic_key(word)
        if len(key) >= 2:
            seen = {a.term for a in alts} | {word}
            alts += [Alternative(r[0], "phonetic", PHONETIC_SIMILARITY) for r in self._q(
                "SELECT term FROM transcription_vocab WHERE phonetic = ? ORDER BY calls DESC"
                f" LIMIT {self.fuzzy_max + 1}", (key,)) if r[0] not in seen]
        return alts[: 2 * self.fuzzy_max]

    def _hit(self, found: tuple[int, float, str, str, dict[str, Any], str], kind: str,
             alternatives: dict[str, Alternative]) -> Hit:
        row_id, rank, call_id, match, info, fts = found
        c = self._q("SELECT line, caller, handler_id, arrived_at, incident_number FROM calls"
                    " WHERE call_id = ?", (call_id,))
        row = c[0] if c else None
        # which terms matched (FTS5's highlight) and the call's terms, in one lookup
        doc = self._q(f"SELECT highlight({fts}, 0, char(2), char(3)), s.terms,"
                      f" s.times, s.display FROM {fts} f JOIN"
                      " transcription_call_index s ON s.id = f.rowid"
                      f" WHERE {fts} MATCH ? AND f.rowid = ?", (match, row_id))
        items = IndexedCall(doc[0][1], bytes(doc[0][2]), doc[0][3]) if doc else IndexedCall("", b"", "")
        marked = sorted(i for i in (_marked(doc[0][0]) if doc else set()) if i < len(items))
        score = -rank
        if not kind:  # found through alternatives: the weakest one used says how
            used = [alternatives[items.terms[i]] for i in marked if items.terms[i] in alternatives]
            kind = max((a.kind for a in used), key=KIND_ORDER.__getitem__, default="exact")
            score *= min((a.similarity for a in used), default=1.0)
        heard = {items.terms[i] for i in marked if i not in items.alternatives}
        if any(items.terms[i] not in heard for i in marked if i in items.alternatives):
            # some query word matched only a gazetteer name added for words like it
            if KIND_ORDER[kind] < KIND_ORDER["gazetteer"]:
                kind = "gazetteer"
            score *= GAZETTEER_SIMILARITY
        shows = {_owner(items, i) for i in marked}  # the terms showing the matched words
        matched = sorted((items.start(i), i) for i in shows)
        first = matched[0][1] if matched else 0
        snippet, fragments = _snippet(items, first, shows)
        words = [items[i] for _, i in matched[:MAX_MATCHES]]
        return Hit(call_id=call_id, score=float(f"{score:.4g}"), snippet=snippet,
                   offset=items.start(first) if len(items) else 0.0,
                   channel=items.channel(first) if len(items) else "",
                   line=row["line"] if row else None,
                   caller=row["caller"] if row else None,
                   handler_id=row["handler_id"] if row else None,
                   arrived_at=row["arrived_at"] if row else None,
                   incident_number=row["incident_number"] if row else None,
                   match=kind,
                   matches=tuple({"word": w.display, "at": w.start, "end": w.end,
                                  "channel": w.channel, "confidence": w.confidence,
                                  "low_confidence": w.low_confidence} for w in words),
                   fragments=tuple(fragments),
                   low_confidence=any(w.low_confidence for w in words),
                   **info)

    # -- candidates --------------------------------------------------------------------
    def _candidates(self, match: str, where: list[str], params: list[Any],
                    own: list[Phrase] | None, dfs: dict[Phrase, tuple[int, bool]],
                    part: Partition, n: int, span: tuple[float, float] | None = None
                    ) -> tuple[list[tuple[int, float, str]], dict[str, Any]]:
        """(row id, bm25 rank, call_id) of the newest ``n`` matches in one partition, and
        how they were found. ``own``: the query's phrases when a term is too frequent for
        FTS5's rank; we score with :meth:`_bm25` instead."""
        fts = part.fts
        scoring = "bm25" if own is None else "bm25-estimated-idf"
        if own is not None:
            # our bm25 reads every term of every candidate: bound the terms, not the calls
            rows_, tokens_ = self._totals(fts)
            avgdl = tokens_ / rows_ if rows_ else 1.0
            n = min(n, max(self.SPARSE_RANKED, int(self.OWN_TERMS // max(avgdl, 1.0))))
        if where:
            join, cond = " JOIN calls c ON c.call_id = s.call_id", " AND " + " AND ".join(where)
            n = min(n, self.filtered_candidates)
        else:
            join, cond = "", ""
        if span is not None:  # a time range: only the rows of calls in it (index on at)
            lo, hi = self._q("SELECT min(id), max(id) FROM transcription_call_index WHERE at >= ?"
                             " AND at < ? AND id >= ?" + ("" if part.last_row is None else " AND id <= ?"),
                             (*span, part.first_row) + (() if part.last_row is None else (part.last_row,)))[0]
            if lo is None:
                return [], {"scoring": scoring, "matches_estimate": 0}
            cond += f" AND f.rowid BETWEEN {int(lo)} AND {int(hi)}"
        if own is None:
            # rank is computed lazily, only for the rows the LIMIT lets through.
            rows = [(r[0], r[1], r[2]) for r in self._q(
                f"SELECT f.rowid, f.rank, s.call_id FROM {fts} f"
                f" JOIN transcription_call_index s ON s.id = f.rowid{join}"
                f" WHERE {fts} MATCH ?{cond} ORDER BY f.rowid DESC LIMIT {n}",
                [match, *params])]
        else:
            found = self._q(
                f"SELECT f.rowid, s.call_id, s.terms FROM {fts} f"
                f" JOIN transcription_call_index s ON s.id = f.rowid{join}"
                f" WHERE {fts} MATCH ?{cond} ORDER BY f.rowid DESC LIMIT {n}",
                [match, *params])
            scores = self._bm25(own, dfs, {r[0]: r[2] for r in found}, fts)
            rows = [(r[0], scores[r[0]], r[1]) for r in found]
        info: dict[str, Any] = {"scoring": scoring, "matches_estimate": len(rows)}
        if len(rows) >= n and rows:  # cut short: older matches here were not read
            info["cut"] = True
            info["matches_estimate"] = self._estimate(n, rows[-1][0], part)
        return rows, info

    def _rank_ids(self, match: str, segs: dict[int, tuple[str, float]],
                  own: list[Phrase] | None, dfs: dict[Phrase, tuple[int, bool]], part: Partition
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
        fts = part.fts
        matched = [i for i in sorted(segs) if self._q(
            f"SELECT 1 FROM {fts} WHERE {fts} MATCH ? AND rowid = ?", (match, i))]
        if not matched:
            return [], "bm25"
        lo, hi = matched[0], matched[-1]
        scoring = "bm25"
        if own is not None:
            texts = {r[0]: r[1] for r in self._q(
                f"SELECT id, terms FROM transcription_call_index WHERE id IN ({','.join('?' * len(matched))})",
                matched)}
            ranks = self._bm25(own, dfs, texts, fts)
            scoring = "bm25-estimated-idf"
        elif hi - lo <= self.RANGE_SPAN:
            ranks = {r[0]: r[1] for r in self._q(
                f"SELECT rowid, rank FROM {fts} WHERE {fts} MATCH ?"
                " AND rowid BETWEEN ? AND ?", (match, lo, hi))}
        elif len(matched) <= self.SPARSE_RANKED:
            ranks = {i: self._q(f"SELECT rank FROM {fts} WHERE {fts}"
                                " MATCH ? AND rowid = ?", (match, i))[0][0] for i in matched}
        else:  # many matches spread over the whole index: newest first, score 0
            ranks = dict.fromkeys(matched, 0.0)
            scoring = "newest-first"
        return [(i, ranks[i], segs[i][0], segs[i][1]) for i in matched], scoring

    # -- bm25 with estimated document frequencies -------------------------------------
    def _document_frequencies(self, phrases: list[Phrase], part: Partition, walk: _Walk | None = None
                              ) -> dict[Phrase, tuple[int, bool]]:
        """(rows of the partition containing it, exact?) for each phrase and each word of
        a phrase (FTS5 reads the doclist of every word of a phrase to count the phrase).
        At most PROBE newest matches are read per item: fewer means the count is exact;
        else it is estimated from the span of row ids they cover. Remembered per search."""
        items: list[Phrase] = []
        for text, prefix in phrases:
            items.append((text, prefix))
            words = _WORDS.findall(text)
            if len(words) > 1:
                items += [(w, False) for w in words[:-1]] + [(words[-1], prefix)]
        memo = walk.dfs if walk is not None else {}
        out: dict[Phrase, tuple[int, bool]] = {}
        fts = part.fts
        for item in dict.fromkeys(items):
            got = memo.get((fts, item))
            if got is None:
                rows = self._q(f"SELECT rowid FROM {fts} WHERE {fts} MATCH ?"
                               f" ORDER BY rowid DESC LIMIT {self.PROBE}", (_expr(item),))
                if len(rows) < self.PROBE:
                    got = (len(rows), True)
                else:
                    got = (self._estimate(self.PROBE, rows[-1][0], part), False)
                memo[(fts, item)] = got
            out[item] = got
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

    def _estimate(self, k: int, kth_newest: int, part: Partition) -> int:
        """Matching rows in the partition when its k-th newest match has id ``kth_newest``:
        k per id span, scaled to the partition's id range (deleted ids thin both alike)."""
        lo = part.first_row
        hi = part.last_row
        if hi is None:
            hi = self._q("SELECT max(id) FROM transcription_call_index", ())[0][0]  # an index seek
        if hi is None:
            return k
        lo = max(lo, self._q("SELECT min(id) FROM transcription_call_index WHERE id >= ?", (lo,))[0][0] or lo)
        return min(max(part.rows, k), max(k, round(k * (hi - lo + 1) / max(1, hi - kth_newest + 1))))

    def _totals(self, fts: str) -> tuple[int, int]:
        """(rows, tokens) of one partition, from FTS5's own averages record."""
        blob = self._q(f"SELECT block FROM {fts}_data WHERE id = 1", ())
        if not blob:
            return 0, 0
        data, pos = bytes(blob[0][0]), 0
        vals: list[int] = []
        while pos < len(data) and len(vals) < 2:
            v, pos = _varint(data, pos)
            vals.append(v)
        return (vals + [0, 0])[0], (vals + [0, 0])[1]

    def _bm25(self, phrases: list[Phrase], dfs: dict[Phrase, tuple[int, bool]],
              texts: dict[int, str], fts: str) -> dict[int, float]:
        """FTS5's bm25 (k1 1.2, b 0.75; negative: lower ranks first) of each segment, with
        the index's row count and mean length from its averages record and each phrase's
        document frequency from :meth:`_document_frequencies`. Terms and positions come
        from the index's tokenizer (:meth:`_tokenize`), so a phrase is counted where its
        stemmed words are adjacent."""
        n_rows, n_tokens = self._totals(fts)
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

    async def asearch(self, query: str, **filters: Any) -> SearchResult:
        """:meth:`search` in a worker thread (for the web handlers)."""
        return await asyncio.to_thread(self.search, query, **filters)


def _with(hit: Hit, **changes: Any) -> Hit:
    return Hit(**{**vars(hit), **changes})


def _owner(items: IndexedCall, i: int) -> int:
    """The term that shows term ``i``'s words (itself, or the first term made from the
    same words: "<b>shouting</b>" makes three terms, the first shows the word)."""
    while i > 0 and not items.shown[i]:
        i -= 1
    return i


_EDGES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def _mark(text: str) -> str:
    """A matched word in ``<mark>``, its leading and trailing punctuation outside
    ("burglary," -> ``<mark>burglary</mark>,``); HTML-escaped."""
    m = _EDGES.match(text)
    if m is None or not m.group(2):
        return f"<mark>{html.escape(text, quote=False)}</mark>"
    lead, core, trail = (html.escape(g, quote=False) for g in m.groups())
    return f"{lead}<mark>{core}</mark>{trail}"


def _snippet(items: IndexedCall, first: int, matched: set[int]
             ) -> tuple[str, list[dict[str, Any]]]:
    """HTML (``<mark>`` around matches) and fragments of the words around ``first`` (a
    showing term), on its channel."""
    if not len(items):
        return "", []
    ch = items.channel(first)
    lo = first
    while lo > 0 and first - lo < SNIPPET_WORDS and items.channel(lo - 1) == ch:
        lo -= 1
    hi = first
    while hi + 1 < len(items) and hi - first < SNIPPET_WORDS and items.channel(hi + 1) == ch:
        hi += 1
    frags: list[dict[str, Any]] = []
    for i in range(lo, hi + 1):
        if items.shown[i]:
            it = items[i]
            frags.append({"text": it.display, "match": i in matched,
                          "low_confidence": it.low_confidence, "at": it.start})
    parts = [_mark(f["text"]) if f["match"] else html.escape(f["text"], quote=False)
             for f in frags]
    more_before = lo > 0 and items.channel(lo - 1) == ch
    more_after = hi + 1 < len(items) and items.channel(hi + 1) == ch
    return ("…" if more_before else "") + " ".join(parts) + ("…" if more_after else ""), frags
