"""The transcript search tests that say nothing about SQLite's internals, run on both
stores (``store_url``: a SQLite file, and a fresh database in the throw-away
PostgreSQL), so the PostgreSQL search (transcription/pgsearch.py) answers as the FTS5
one does: same queries, filters, ranking order, offsets, matched words and snippets."""

from __future__ import annotations

import pytest

from store import calls
from store.db import Database
from transcription import store as tstore
from transcription.pgsearch import PgTranscriptSearch, to_tsquery_text
from transcription.search import TranscriptSearch, parse_query

from .test_normalise import (  # noqa: F401
    s,
    test_low_confidence_words_are_found_and_marked,
    test_misspelt_place_found_by_fuzzy_match_after_exact,
    test_normalised_queries_find_their_words,
    test_phrase_spans_two_segments_of_a_channel,
    test_retranscription_keeps_versions_and_updates_vocabulary,
    test_same_sounding_name_found_by_phonetic_match,
    test_words_in_different_segments_match_together,
)
from .test_search import (  # noqa: F401  (collected here again, on both stores)
    _call,
    _transcript,
    populated,
    test_bad_queries_raise_clear_error,
    test_filters,
    test_fts_syntax_never_reaches_sqlite,
    test_limit_and_no_call_row,
    test_malformed_queries_say_what_is_wrong,
    test_offset_is_first_hit_and_snippet_is_best,
    test_prefix_or_not,
    test_ranking_more_mentions_first,
    test_retranscription_replaces_index,
    test_snippet_is_html_safe,
    test_stemming_and_phrase,
)


@pytest.fixture
def db(store_url):
    d = Database(store_url)
    d.migrate(calls.COMPONENT, calls.MIGRATIONS, postgresql=calls.PG_MIGRATIONS)
    tstore.migrate(d)
    yield d
    d.close()


def test_backend_follows_the_store(db):
    """``TranscriptSearch(db)`` is the store's own search: the callers never choose."""
    search = TranscriptSearch(db)
    assert isinstance(search, PgTranscriptSearch) == (db.dialect == "postgresql")


def test_tsquery_quotes_every_word():
    assert to_tsquery_text(*parse_query('knife OR gun "station road" -test burg*')) == (
        "('knife' | 'gun') & ('station' <-> 'road') & 'burg':* & !('test')")
    assert to_tsquery_text(*parse_query("o'brien & ! | :")) == "'obrien'"


def test_words_of_two_segments_and_codes(db):
    """A phrase spoken across two segments, and a registration said in words, match on
    both stores with the first matched word's time."""
    _call(db, "r", at=10.0)
    _transcript(db, "r", [("caller", 0.0, 2.0, "the car was a"), ("caller", 2.0, 4.0, "blue ford"),
                          ("caller", 5.0, 9.0, "registration alpha bravo one two charlie delta echo")])
    search = TranscriptSearch(db)
    [h] = search.search('"a blue ford"')
    assert (h.call_id, h.offset) == ("r", 1.5)
    [h] = search.search("AB12 CDE")
    assert h.call_id == "r" and h.offset == 5.5
    assert h.matches[0]["word"] == "alpha bravo one two charlie delta echo"


def test_result_says_how_far_back_it_looked_on_both_stores(db):
    """Both stores answer with a SearchResult (a list of hits); a small index is searched
    to its beginning, so it is complete and needs no continuation."""
    from transcription.search import SearchResult
    _call(db, "f", at=10.0)
    _transcript(db, "f", [("caller", 0.0, 2.0, "smoke from the kitchen")])
    res = TranscriptSearch(db).search("smoke", before=None)
    assert isinstance(res, SearchResult) and [h.call_id for h in res] == ["f"]
    assert res.coverage()["complete"] is True and res.continue_before is None
