"""Transcript search on a PostgreSQL store: the same queries, hits and filters as the
SQLite search (:mod:`transcription.search`), with PostgreSQL full-text search.

``TranscriptSearch(db)`` returns a :class:`PgTranscriptSearch` when ``db`` is a
PostgreSQL store, so the console, ``controlroom search`` and the auditor page need no
change. What is the same: the query language and its errors (:func:`parse_query`), the
normalisation of query and transcript (:mod:`transcription.normalise`: the index holds
the same normalised terms on both stores), the filters on the ``calls`` row (joined:
calls and transcripts are in the same database), the ``Hit`` (offset = start of the
first matched word, the matched words with their times, snippet and fragments), fuzzy,
phonetic and gazetteer matches after exact ones.

What differs:

* the index is ``transcription_call_index.tsv`` (GIN; :mod:`transcription.pgschema`),
  the query a ``tsquery`` we build from the normalised phrases (``'station' <->
  'road'``, ``'burg':*``, ``|``, ``!``), stemmed by the same configuration;
* ranking is ``ts_rank`` (``Hit.scoring == "ts_rank"``; score higher is better), of at
  most ``max_candidates`` matching calls, the newest (``Hit.ranked_within_recent``);
* the matched words are found by comparing the call's lexemes (with their positions)
  with the query's, in Python, instead of FTS5's ``highlight()``.

Call :meth:`search` from a thread (it reads on its own connection per thread).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from store.db import Database

from .errors import SearchQueryError
from .pgschema import TS_CONFIG
from .search import (
    GAZETTEER_SIMILARITY,
    KIND_ORDER,
    MAX_LIMIT,
    MAX_MATCHES,
    Alternative,
    Hit,
    Phrase,
    SearchResult,
    TranscriptSearch,
    _epoch,
    _owner,
    _snippet,
    _with,
    parse_query,
)
from .store import IndexedCall

_TSQ = f"to_tsquery('{TS_CONFIG}', ?)"


def _lexeme(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def _phrase_tsq(p: Phrase) -> str:
    """``'station' <-> 'road'``; a prefix applies to the last word (``'ro':*``)."""
    words = p[0].split()
    parts = [_lexeme(w) for w in words]
    if p[1]:
        parts[-1] += ":*"
    return parts[0] if len(parts) == 1 else "(" + " <-> ".join(parts) + ")"


def to_tsquery_text(groups: list[list[Phrase]], negatives: list[Phrase]) -> str:
    """The parsed query as ``to_tsquery`` input (every word quoted: never a syntax error).

    >>> to_tsquery_text(*parse_query('knife OR gun "station road" -test burg*'))
    "('knife' | 'gun') & ('station' <-> 'road') & 'burg':* & !('test')"
    """
    out = " & ".join(_phrase_tsq(g[0]) if len(g) == 1
                     else "(" + " | ".join(map(_phrase_tsq, g)) + ")" for g in groups)
    if negatives:
        out += " & !(" + " | ".join(map(_phrase_tsq, negatives)) + ")"
    return out


class PgTranscriptSearch(TranscriptSearch, dialect="postgresql"):
    """PostgreSQL full-text search over whole-call transcripts (see the module doc)."""

    def __init__(self, db: Database, *, max_candidates: int = 1000, fuzzy_below: int = 3,
                 fuzzy_cutoff: float = 80.0, fuzzy_max: int = 5, **_sqlite_only: Any) -> None:
        self._db = db
        self._local = threading.local()
        self.max_candidates = max_candidates
        self.fuzzy_below = fuzzy_below
        self.fuzzy_cutoff = fuzzy_cutoff
        self.fuzzy_max = fuzzy_max
        self._lexemes: dict[str, tuple[str, ...]] = {}

    def _conn(self) -> Any:
        c = getattr(self._local, "conn", None)
        if c is None or c.closed or c.raw.broken:
            c = self._local.conn = self._db.connect_reader()
        return c

    def _q(self, sql: str, params: list[Any] | tuple[Any, ...]) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()  # type: ignore[no-any-return]
        except self._db.OperationalError:
            self._local.conn = None  # the server restarted: one fresh connection, once
            return self._conn().execute(sql, params).fetchall()  # type: ignore[no-any-return]

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    # -- search ------------------------------------------------------------------------
    def search(self, query: str, *, line: str | None = None, caller: str | None = None,
               handler_id: str | None = None, since: float | datetime | None = None,
               until: float | datetime | None = None, incident: str | None = None,
               limit: int = 20, before: int | None = None) -> SearchResult:
        """As :meth:`TranscriptSearch.search`, on PostgreSQL: one GIN index over every
        call, so the result is always ``complete`` (``before`` is accepted and ignored)."""
        groups, negatives = parse_query(query)
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
            dfs = self._document_frequencies([p for g in groups for p in g])
            found = self._run(groups, negatives, where, params, limit, set())
            hits = [self._pg_hit(row, "exact", {}) for row in found]
            hits.sort(key=lambda h: KIND_ORDER.get(h.match, 0))  # stable: rank order within
            alternatives = self._alternatives(groups, dfs)
            if alternatives and len(hits) < limit:
                by_term = {a.term: a for alts in alternatives.values() for a in alts}
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
                                     {h.call_id for h in hits})
                    extra = [self._pg_hit(row, "", by_term) for row in more]
                    hits += sorted(extra, key=lambda h: (KIND_ORDER[h.match], -h.score))
        except self._db.DatabaseError as exc:  # defensive: we built the expression
            if isinstance(exc, self._db.OperationalError):
                raise
            raise SearchQueryError(f"query cannot be searched: {exc}") from None
        return SearchResult([_with(h, rank=i + 1) for i, h in enumerate(hits[:limit])])

    def _document_frequencies(self, phrases: list[Phrase], part: object = None,
                              walk: object = None) -> dict[Phrase, tuple[int, bool]]:
        """Calls holding each phrase, counted up to ``fuzzy_below`` (all the fuzzy
        expansion asks: is the word rare?). One table here: no ``part`` or ``walk``."""
        out: dict[Phrase, tuple[int, bool]] = {}
        for p in dict.fromkeys(phrases):
            n = self._q(f"SELECT count(*) FROM (SELECT 1 FROM transcription_call_index"
                        f" WHERE tsv @@ {_TSQ} LIMIT {int(self.fuzzy_below)}) x",
                        (to_tsquery_text([[p]], []),))[0][0]
            out[p] = (int(n), int(n) < self.fuzzy_below)
        return out

    def _run(self, groups: list[list[Phrase]], negatives: list[Phrase],  # type: ignore[override]
             where: list[str], params: list[Any], limit: int, exclude: set[str]
             ) -> list[tuple[int, float, str, list[Phrase], dict[str, Any]]]:
        """The best ``limit`` calls: (index row id, ts_rank, call_id, positive phrases,
        Hit fields saying how they were found)."""
        tsq = to_tsquery_text(groups, negatives)
        n = int(self.max_candidates)
        join = " JOIN calls c ON c.call_id = s.call_id" if where else ""
        cond = "".join(f" AND {w}" for w in where)
        rows = self._q(
            f"WITH q AS (SELECT {_TSQ} AS q), cand AS ("
            f" SELECT s.id, s.call_id, s.tsv FROM transcription_call_index s{join}, q"
            f" WHERE s.tsv @@ q.q{cond} ORDER BY s.id DESC LIMIT {n})"
            " SELECT cand.id, cand.call_id, ts_rank(cand.tsv, q.q) FROM cand, q",
            [tsq, *params])
        info: dict[str, Any] = {"scoring": "ts_rank", "matches_estimate": len(rows)}
        if len(rows) >= n:
            info["ranked_within_recent"] = n
            info["matches_estimate"] = self._pg_estimate(n, min(r[0] for r in rows))
        phrases = [p for g in groups for p in g]
        best = sorted(((float(r[2]), int(r[0]), r[1]) for r in rows if r[1] not in exclude),
                      key=lambda t: (-t[0], -t[1]))[:limit]
        return [(row_id, rank, call_id, phrases, info) for rank, row_id, call_id in best]

    def _pg_estimate(self, k: int, kth_newest: int) -> int:
        r = self._q("SELECT min(id), max(id) FROM transcription_call_index", ())
        lo, hi = r[0][0], r[0][1]
        if lo is None:
            return k
        return max(k, round(k * (hi - lo + 1) / max(1, hi - kth_newest + 1)))

    # -- hits --------------------------------------------------------------------------
    def _phrase_lexemes(self, text: str) -> tuple[str, ...]:
        """The phrase's words as the index's lexemes, in order (cached per searcher)."""
        got = self._lexemes.get(text)
        if got is None:
            rows = self._q(f"SELECT lexeme, positions FROM unnest(to_tsvector('{TS_CONFIG}', ?))",
                           (text,))
            by_pos = sorted((p, r[0]) for r in rows for p in (r[1] or ()))
            got = tuple(lex for _, lex in by_pos)
            if len(self._lexemes) > 100_000:
                self._lexemes.clear()
            self._lexemes[text] = got
        return got

    def _matched(self, row_id: int, phrases: list[Phrase], n_terms: int) -> list[int]:
        """Term positions (0-based) of every occurrence of the query's positive phrases."""
        rows = self._q("SELECT u.lexeme, u.positions FROM transcription_call_index s,"
                       " unnest(s.tsv) u WHERE s.id = ?", (row_id,))
        at: list[str | None] = [None] * n_terms
        for lexeme, positions in rows:
            for p in positions or ():
                if 0 < p <= n_terms:
                    at[p - 1] = lexeme
        out: set[int] = set()
        for text, prefix in phrases:
            want = self._phrase_lexemes(text)
            if not want:
                continue
            m, last = len(want), len(want) - 1
            for i in range(n_terms - m + 1):
                if all(at[i + j] == want[j] for j in range(last)):
                    tail = at[i + last]
                    if tail is not None and (tail.startswith(want[last]) if prefix
                                             else tail == want[last]):
                        out.update(range(i, i + m))
        return sorted(out)

    def _pg_hit(self, found: tuple[int, float, str, list[Phrase], dict[str, Any]], kind: str,
                alternatives: dict[str, Alternative]) -> Hit:
        row_id, rank, call_id, phrases, info = found
        c = self._q("SELECT line, caller, handler_id, arrived_at, incident_number FROM calls"
                    " WHERE call_id = ?", (call_id,))
        row = c[0] if c else None
        doc = self._q("SELECT terms, times, display FROM transcription_call_index WHERE id = ?",
                      (row_id,))
        items = (IndexedCall(doc[0][0], bytes(doc[0][1]), doc[0][2]) if doc
                 else IndexedCall("", b"", ""))
        marked = self._matched(row_id, phrases, len(items)) if doc else []
        score = rank
        if not kind:  # found through alternatives: the weakest one used says how
            used = [alternatives[items.terms[i]] for i in marked if items.terms[i] in alternatives]
            kind = max((a.kind for a in used), key=KIND_ORDER.__getitem__, default="exact")
            score *= min((a.similarity for a in used), default=1.0)
        gaz: frozenset[int] = getattr(items, "alternatives", frozenset())  # gazetteer names
        if gaz and "gazetteer" in KIND_ORDER:
            heard = {items.terms[i] for i in marked if i not in gaz}
            if any(items.terms[i] not in heard for i in marked if i in gaz):
                if KIND_ORDER[kind] < KIND_ORDER["gazetteer"]:
                    kind = "gazetteer"
                score *= GAZETTEER_SIMILARITY
        shows = {_owner(items, i) for i in marked}
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
