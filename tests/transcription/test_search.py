"""Transcript search: query translation, ranking, filters, snippets, offsets.

Segments here carry no word times, so the index spreads each segment's words evenly over
it: "there is a burglary at twelve station road" (3.0-6.0 s) puts "burglary" at 4.125 s.
"""

from __future__ import annotations

import pytest

from store import calls
from transcription import store as tstore
from transcription.errors import SearchQueryError
from transcription.search import TranscriptSearch, to_fts_query


def _call(db, call_id, *, line="999", caller="07700900001", handler="h1", at=1000.0, incident=None):
    with db.transaction() as conn:
        calls.insert(conn, call_id=call_id, line=line, caller=caller, state="ended",
                     arrived_at=at, handler_id=handler, incident_number=incident)


def _transcript(db, call_id, segs):
    tstore.save_transcript(db, call_id, engine="fake", model="m", language="en",
                           segments=[tstore.Segment(ch, s, e, t, 0.9) for ch, s, e, t in segs],
                           duration=60.0, recording_path=None)


@pytest.fixture
def populated(db):
    _call(db, "a", line="999", caller="0111", handler="h1", at=1000.0, incident="INC-1")
    _transcript(db, "a", [("handler", 0.0, 2.0, "police what is your emergency"),
                          ("caller", 3.0, 6.0, "there is a burglary at twelve station road"),
                          ("caller", 9.5, 11.0, "the burglary is still going on burglary")])
    _call(db, "b", line="101", caller="0222", handler="h2", at=2000.0)
    _transcript(db, "b", [("caller", 1.0, 4.0, "I want to report a burglary from last week at my shed"),
                          ("handler", 5.0, 6.0, "which road is that")])
    _call(db, "c", line="999", caller="0333", handler="h1", at=3000.0)
    _transcript(db, "c", [("caller", 0.5, 3.0, "a man with a knife on station road"),
                          ("caller", 4.0, 5.0, "he is <b>shouting</b> & running")])
    return TranscriptSearch(db)


def test_query_translation():
    """Words AND, quoted phrases, OR, prefix and exclusions become a safe FTS5 expression."""
    assert to_fts_query('knife OR gun "station road" -test burg*') == (
        '("knife" OR "gun") AND "station road" AND "burg"* NOT ("test")')
    assert to_fts_query('say "hello') == '"say" AND "hello"'  # unbalanced quote runs to the end
    assert to_fts_query('a"b') == '"a" AND "b"'  # a quote starts a phrase


@pytest.mark.parametrize("q,msg", [
    ("", "query has no words to search for: ''"),
    ('" ( ) * ^ :', "query has no words to search for"),
    ("-burglary", "query needs at least one word to find (exclusions alone match nothing)"),
    ("x" * 501, "query is too long (501 characters; at most 500)"),
])
def test_bad_queries_raise_clear_error(populated, q, msg):
    """Unsearchable queries give SearchQueryError with a message, never a crash."""
    with pytest.raises(SearchQueryError) as e:
        populated.search(q)
    assert str(e.value).startswith(msg)


@pytest.mark.parametrize("q,expected", [
    ('"burglary', {"a", "b"}), ("NEAR knife", set()), ("(knife)", {"c"}), ("knife AND road", {"c"}),
    ("text:knife", set()), ("^knife", {"c"}), ("{knife}", {"c"}), ("knife:", {"c"}),
    ("NOT shed burglary", {"a"}),
])
def test_fts_syntax_never_reaches_sqlite(populated, q, expected):
    """FTS5 operators typed by a user are treated as words (quoted), never as syntax."""
    assert {h.call_id for h in populated.search(q)} == expected


@pytest.mark.parametrize("q,msg", [
    ('"', "query has no words to search for: '\"'"),
    ("AND", "'AND' needs a word on each side"),
    ("knife AND", "'AND' needs a word on each side"),
    ("OR", "'OR' needs a word on each side"),
    ("knife OR", "'OR' needs a word on each side"),
    ("knife OR AND gun", "'OR' needs a word on each side"),
    ("knife NOT", "'NOT' needs a word after it"),
    ("*", "a prefix needs at least 2 letters before '*': '*'"),
    ("k*", "a prefix needs at least 2 letters before '*': 'k*'"),
    ("(knife OR gun", "unbalanced parentheses: '(' without ')'"),
    ("knife)", "unbalanced parentheses: ')' without '('"),
    ("NEAR(knife", "unbalanced parentheses: '(' without ')'"),
])
def test_malformed_queries_say_what_is_wrong(populated, q, msg):
    """A lone quote, operator or star and unbalanced parentheses are refused with a
    message naming the problem (never an FTS5 syntax error)."""
    with pytest.raises(SearchQueryError) as e:
        populated.search(q)
    assert str(e.value) == msg


def test_ranking_more_mentions_first(populated):
    """The call saying 'burglary' most (densely) ranks first; all three calls found once."""
    hits = populated.search("burglary")
    assert [h.call_id for h in hits] == ["a", "b"]
    assert hits[0].score > hits[1].score > 0


def test_offset_is_first_hit_and_snippet_is_best(populated):
    """offset/channel are the first matched word's; the snippet marks the matches around it."""
    h = populated.search("burglary")[0]
    assert (h.offset, h.channel, h.rank, h.match) == (4.125, "caller", 1, "exact")
    assert h.snippet.count("<mark>burglary</mark>") == 2  # 8 words on each side of the first
    assert [(m["word"], m["at"]) for m in h.matches] == [
        ("burglary", 4.125), ("burglary", 9.714), ("burglary", 10.786)]
    assert (h.line, h.caller, h.handler_id, h.arrived_at, h.incident_number) == (
        "999", "0111", "h1", 1000.0, "INC-1")


def test_stemming_and_phrase(populated):
    """'burglaries' stems to burglary; a phrase matches only adjacent words."""
    assert {h.call_id for h in populated.search("burglaries")} == {"a", "b"}
    assert {h.call_id for h in populated.search('"station road"')} == {"a", "c"}
    assert populated.search('"road station"') == []


def test_filters(populated):
    """line, caller, handler, time range and incident filter on the calls row."""
    assert [h.call_id for h in populated.search("burglary", line="101")] == ["b"]
    assert [h.call_id for h in populated.search("burglary", caller="0111")] == ["a"]
    assert {h.call_id for h in populated.search("road", handler_id="h1")} == {"a", "c"}
    assert [h.call_id for h in populated.search("road", since=1500, until=3000)] == ["b"]
    assert [h.call_id for h in populated.search("burglary", incident="INC-1")] == ["a"]
    assert populated.search("burglary", line="nope") == []


def test_prefix_or_not(populated):
    """Prefix, OR and exclusion behave as documented."""
    assert {h.call_id for h in populated.search("burg*")} == {"a", "b"}
    assert {h.call_id for h in populated.search("knife OR shed")} == {"b", "c"}
    assert {h.call_id for h in populated.search("burglary -shed")} == {"a"}


def test_snippet_is_html_safe(populated):
    """Transcript text is escaped; only our <mark> tags are HTML."""
    h = populated.search("shouting")[0]
    assert h.snippet == ("…with a knife on station road he is"
                         " &lt;<mark>b&gt;shouting&lt;/b</mark>&gt; &amp; running")
    assert [f["text"] for f in h.fragments][-3:] == ["is", "<b>shouting</b> &", "running"]


def test_the_mark_leaves_punctuation_outside(db):
    """A recogniser writes punctuation onto words ("burglary,"): the highlight is the word,
    the comma stays outside it, so the page shows the match and not its punctuation."""
    _call(db, "p1")
    _transcript(db, "p1", [("caller", 0.5, 4.0, "In a burglary, at number 12, \"Station Road.\"")])
    h = TranscriptSearch(db).search("burglary road")[0]
    assert "<mark>burglary</mark>," in h.snippet and "<mark>Road</mark>.&quot;" not in h.snippet
    assert "<mark>Road</mark>.\"" in h.snippet
    assert [f["text"] for f in h.fragments if f["match"]] == ["burglary,", "Road.\""]


def test_limit_and_no_call_row(db):
    """limit caps the calls returned; transcripts without a calls row are still found unfiltered."""
    for i in range(5):
        _transcript(db, f"x{i}", [("caller", float(i), i + 1.0, f"fire alarm number {i}")])
    s = TranscriptSearch(db)
    hits = s.search("fire", limit=3)
    assert len(hits) == 3 and hits[0].line is None
    assert s.search("fire", line="999") == []


def test_retranscription_replaces_index(populated, db):
    """Saving a new transcript for a call replaces its segments in the index."""
    _transcript(db, "c", [("caller", 0.0, 1.0, "nothing relevant")])
    assert populated.search("knife") == []
    assert [h.call_id for h in populated.search("relevant")] == ["c"]


async def test_asearch_runs_in_thread(populated):
    """asearch gives the same hits as search."""
    assert [h.call_id for h in await populated.asearch("knife")] == ["c"]


@pytest.mark.parametrize("calls_first_max", [0, 1000])
def test_filter_strategies_agree(populated, db, calls_first_max):
    """Filters give the same hits whether applied before (calls-first) or after the match."""
    s = TranscriptSearch(db, calls_first_max=calls_first_max)
    assert [h.call_id for h in s.search("burglary", line="101")] == ["b"]
    assert {h.call_id for h in s.search("road", handler_id="h1", since=0, until=5000)} == {"a", "c"}
    assert s.search("knife", caller="0111") == []
    h = s.search("burglary", incident="INC-1")[0]
    assert (h.call_id, h.offset, h.channel) == ("a", 4.125, "caller")


def test_candidates_bounded_to_newest(db):
    """With more matches than max_candidates, only the newest matching segments are ranked."""
    for i in range(6):
        _transcript(db, f"n{i}", [("caller", 0.0, 1.0, "smoke " * (6 - i))])  # older = denser
    s = TranscriptSearch(db, max_candidates=3)
    assert {h.call_id for h in s.search("smoke")} == {"n3", "n4", "n5"}
    assert [h.call_id for h in TranscriptSearch(db).search("smoke")][0] == "n0"


def test_migration_indexes_existing_transcripts(tmp_path):
    """Upgrading a database from migration 1 indexes the transcripts already stored
    (whole calls, word times from the stored words), so they are found at once."""
    import json

    from store.db import Database
    d = Database(tmp_path / "up.sqlite3")
    d.migrate(calls.COMPONENT, calls.MIGRATIONS)
    d.migrate(tstore.COMPONENT, tstore.MIGRATIONS[:1])
    with d.transaction() as conn:  # as the version before the call index stored them
        conn.execute("INSERT INTO transcription_transcripts(call_id, engine, model, text,"
                     " created_at) VALUES ('old', 'vosk', 'm', 'x', 1.0)")
        conn.execute('INSERT INTO transcription_segments(call_id, channel, start, "end", text,'
                     " confidence, words) VALUES ('old', 'caller', 1.0, 2.0,"
                     " 'an old burglary report', 0.9, ?)",
                     (json.dumps([["an", 1.0, 1.1, 0.9], ["old", 1.1, 1.3, 0.9],
                                  ["burglary", 1.62, 1.9, 0.9], ["report", 1.9, 2.0, 0.9]]),))
    tstore.migrate(d)
    s = TranscriptSearch(d)
    [h] = s.search("burg*")
    assert (h.call_id, h.offset) == ("old", 1.62)
    assert tstore.ensure_index(d) == 0  # once per index version
    _transcript(d, "new", [("caller", 1.0, 2.0, "a new burglary")])
    assert {h.call_id for h in s.search("burglary")} == {"old", "new"}
    d.close()


def test_calls_first_ranking_paths(populated, db):
    """Dense range, per-segment and unranked (newest first) paths find the same calls;
    only the unranked path scores 0."""
    dense = TranscriptSearch(db)
    sparse = TranscriptSearch(db)
    sparse.RANGE_SPAN = 0
    unranked = TranscriptSearch(db)
    unranked.RANGE_SPAN, unranked.SPARSE_RANKED = 0, 0
    f = {"since": 0, "until": 10_000}
    d, s, u = (x.search("burglary OR road", **f) for x in (dense, sparse, unranked))
    assert [h.call_id for h in d] == [h.call_id for h in s]
    assert [h.score for h in d] == [h.score for h in s] and all(h.score > 0 for h in d)
    assert [h.call_id for h in u] == ["c", "b", "a"] and {h.score for h in u} == {0.0}


def _forced_estimates(db, **kw):
    """A search that treats every query as too frequent to count exactly (PROBE 1)."""
    s = TranscriptSearch(db, max_idf_scan=-1, **kw)
    s.PROBE = 1
    return s


@pytest.mark.parametrize("q", ["burglary", '"station road"', "burg*", "knife OR shed",
                               "burglary -shed", "road is", '"is a" burglary'])
def test_own_bm25_equals_fts5_bm25_with_exact_counts(populated, db, q):
    """The bm25 used for very frequent terms is FTS5's formula: with exact document
    frequencies it gives FTS5's rank for every matching segment (phrases, prefixes, OR, NOT)."""
    from transcription.search import parse_query
    s = TranscriptSearch(db)
    groups, negatives = parse_query(q)
    phrases = [p for g in groups for p in g] + negatives
    [part] = s.partitions()  # three calls: one partition
    t = part.fts
    dfs = {p: (db.query_one(f"SELECT count(*) FROM {t} WHERE {t} MATCH ?",
                            (f'"{p[0]}"' + ("*" if p[1] else ""),))[0], True) for p in phrases}
    fts = {r[0]: r[1] for r in db.query(
        f"SELECT f.rowid, f.rank FROM {t} f WHERE {t} MATCH ?", (to_fts_query(q),))}
    texts = {r[0]: r[1] for r in db.query(
        f"SELECT id, terms FROM transcription_call_index WHERE id IN ({','.join('?' * len(fts))})", list(fts))}
    own = s._bm25(phrases, dfs, texts, t)
    assert fts and own.keys() == fts.keys()
    for seg_id, rank in fts.items():
        assert own[seg_id] == pytest.approx(rank, rel=1e-9, abs=1e-12)


def test_frequent_terms_use_estimated_idf_and_say_so(populated, db):
    """A term too frequent to count exactly is scored with an estimated IDF: same hits and
    order as exact bm25 for a one-word query, and each hit says how it was scored."""
    exact = populated.search("burglary")
    est = _forced_estimates(db).search("burglary")
    assert [h.call_id for h in est] == [h.call_id for h in exact] == ["a", "b"]
    assert {h.scoring for h in exact} == {"bm25"}
    assert {h.scoring for h in est} == {"bm25-estimated-idf"}
    assert all(h.score > 0 for h in est)
    assert (est[0].offset, est[0].channel) == (4.125, "caller")
    assert "<mark>burglary</mark>" in est[0].snippet


@pytest.mark.parametrize("calls_first_max", [0, 1000])
def test_filters_hold_with_estimated_idf(populated, db, calls_first_max):
    """Filters give the same calls on the estimated-IDF path, calls-first or after the match."""
    s = _forced_estimates(db, calls_first_max=calls_first_max)
    assert [h.call_id for h in s.search("burglary", line="101")] == ["b"]
    assert [h.call_id for h in s.search("burglary", caller="0111")] == ["a"]
    assert {h.call_id for h in s.search("road", handler_id="h1")} == {"a", "c"}
    assert [h.call_id for h in s.search("road", since=1500, until=3000)] == ["b"]
    assert [h.call_id for h in s.search("burglary", incident="INC-1")] == ["a"]
    assert s.search("knife", caller="0111") == []
    assert {h.scoring for h in s.search("road", handler_id="h1")} == {"bm25-estimated-idf"}


def test_hits_say_when_ranked_within_recent(db):
    """When matches exceed max_candidates the hits say only the newest N were ranked and
    estimate how many segments match; below it, the count is exact and nothing is said."""
    for i in range(6):
        _transcript(db, f"n{i}", [("caller", 0.0, 1.0, "smoke " * (6 - i))])
    capped = TranscriptSearch(db, max_candidates=3).search("smoke")
    assert {(h.ranked_within_recent, h.matches_estimate) for h in capped} == {(3, 6)}
    full = TranscriptSearch(db).search("smoke")
    assert {(h.ranked_within_recent, h.matches_estimate) for h in full} == {(None, 6)}
    assert {h.call_id for h in _forced_estimates(db, max_candidates=3).search("smoke")} == {"n3", "n4", "n5"}


def test_estimated_path_stems_like_the_index(db):
    """Words are stemmed and split exactly as FTS5 does (case, diacritics, porter,
    punctuation), so the frequency of an inflected word counts in the score."""
    _transcript(db, "s1", [("caller", 0.0, 1.0, "Burglaries, BURGLARY; burglarized café-bar")])
    _transcript(db, "s2", [("caller", 0.0, 1.0, "one burglary and many other words here today")])
    s = _forced_estimates(db)
    hits = s.search("burglary")
    assert [h.call_id for h in hits] == ["s1", "s2"]
    assert s._tokenize([(1, "Burglaries, BURGLARY; café-bar")])[1] == ["burglari", "burglari", "cafe", "bar"]


def test_estimated_idf_path_bounds_terms_not_calls(db):
    """Our bm25 reads every term of every candidate: with long calls fewer of the newest
    are ranked (OWN_TERMS), and the hits say how many."""
    for i in range(12):
        _transcript(db, f"l{i}", [("caller", 0.0, 9.0, "smoke and more words here " * 10)])  # 50 terms
    s = _forced_estimates(db)
    s.OWN_TERMS = 400  # 8 calls' worth
    hits = s.search("smoke")
    assert {h.call_id for h in hits} == {f"l{i}" for i in range(4, 12)}
    assert {h.ranked_within_recent for h in hits} == {8}
